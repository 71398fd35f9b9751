/**
 * The `hsm.v1.CryptoService` calls of an {@link HsmClient}, data keys included. The single operations
 * ride the crypto stream by default (`HsmClientOptions.cryptoStream`); batches and key wrapping are unary.
 */
import {
  CryptoServiceService,
  BatchDecryptRequest,
  BatchEncryptRequest,
  BatchSignRequest,
  BatchVerifyRequest,
  DecryptRequest,
  DeriveKeyRequest,
  EncryptRequest,
  GenerateRandomRequest,
  SignRequest,
  UnwrapKeyRequest,
  VerifyRequest,
  WrapKeyRequest,
  GenerateDataKeyRequest,
  DecryptDataKeyRequest,
  ReEncryptRequest,
  BatchReEncryptRequest,
  type ReEncryptResponse,
  type BatchReEncryptResponse,
  type GenerateDataKeyResponse,
  type DecryptDataKeyResponse,
  type BatchDecryptResponse,
  type BatchEncryptResponse,
  type BatchSignResponse,
  type BatchVerifyResponse,
  type DecryptResponse,
  type EncryptResponse,
  type GenerateRandomResponse,
  type SignResponse,
  type VerifyResponse,
  type WrapKeyResponse,
} from "../gen/hsm/v1/crypto";
import { HsmKeyCalls } from "./client-keys";
import type { BatchRequestInit, CallOptions } from "./client-types";
import type { Key } from "../gen/hsm/v1/keys";

/** CryptoService: crypto operations in the HSM, batches, random bytes and data keys. */
export abstract class HsmCryptoCalls extends HsmKeyCalls {
  /** Encrypts in the HSM (`Encrypt`): AES-GCM/CBC-PAD/CTR or RSA-OAEP. */
  encrypt(request: Partial<EncryptRequest>, options?: CallOptions): Promise<EncryptResponse> {
    return this.streamed("encrypt", CryptoServiceService.encrypt, () => EncryptRequest.fromPartial(request), options);
  }

  /** Decrypts in the HSM (`Decrypt`). */
  decrypt(request: Partial<DecryptRequest>, options?: CallOptions): Promise<DecryptResponse> {
    return this.streamed("decrypt", CryptoServiceService.decrypt, () => DecryptRequest.fromPartial(request), options);
  }

  /** Signs a message or digest, or computes an HMAC (`Sign`). */
  sign(request: Partial<SignRequest>, options?: CallOptions): Promise<SignResponse> {
    return this.streamed("sign", CryptoServiceService.sign, () => SignRequest.fromPartial(request), options);
  }

  /** Verifies a signature or HMAC (`Verify`); a bad signature is `valid: false`, not an error. */
  verify(request: Partial<VerifyRequest>, options?: CallOptions): Promise<VerifyResponse> {
    return this.streamed("verify", CryptoServiceService.verify, () => VerifyRequest.fromPartial(request), options);
  }

  /** Wraps an exportable key under another key (`WrapKey`). */
  wrapKey(request: Partial<WrapKeyRequest>, options?: CallOptions): Promise<WrapKeyResponse> {
    return this.call(CryptoServiceService.wrapKey, () => WrapKeyRequest.fromPartial(request), options);
  }

  /** Unwraps a blob into a new key (`UnwrapKey`). Retried after a transient error only when it carries a `requestId`. */
  unwrapKey(request: Partial<UnwrapKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(CryptoServiceService.unwrapKey, () => UnwrapKeyRequest.fromPartial(request), options);
  }

  /** Derives an AES key with ECDH (`DeriveKey`). Retried after a transient error only when it carries a `requestId`. */
  deriveKey(request: Partial<DeriveKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(CryptoServiceService.deriveKey, () => DeriveKeyRequest.fromPartial(request), options);
  }

  /** Random bytes from the HSM's generator (`GenerateRandom`). */
  generateRandom(request: Partial<GenerateRandomRequest>, options?: CallOptions): Promise<GenerateRandomResponse> {
    return this.streamed("generateRandom", CryptoServiceService.generateRandom, () => GenerateRandomRequest.fromPartial(request), options);
  }

  /** Many signs in one call (`BatchSign`); each result is `{ $case: "ok" }` or a per-item `{ $case: "error" }`. */
  batchSign(request: BatchRequestInit<SignRequest>, options?: CallOptions): Promise<BatchSignResponse> {
    return this.call(CryptoServiceService.batchSign, () => BatchSignRequest.fromPartial(request), options);
  }

  /** Many verifies in one call (`BatchVerify`), with per-item results. */
  batchVerify(request: BatchRequestInit<VerifyRequest>, options?: CallOptions): Promise<BatchVerifyResponse> {
    return this.call(CryptoServiceService.batchVerify, () => BatchVerifyRequest.fromPartial(request), options);
  }

  /** Many encryptions in one call (`BatchEncrypt`), with per-item results. */
  batchEncrypt(request: BatchRequestInit<EncryptRequest>, options?: CallOptions): Promise<BatchEncryptResponse> {
    return this.call(CryptoServiceService.batchEncrypt, () => BatchEncryptRequest.fromPartial(request), options);
  }

  /** Many decryptions in one call (`BatchDecrypt`), with per-item results. */
  batchDecrypt(request: BatchRequestInit<DecryptRequest>, options?: CallOptions): Promise<BatchDecryptResponse> {
    return this.call(CryptoServiceService.batchDecrypt, () => BatchDecryptRequest.fromPartial(request), options);
  }

  // ---- data keys (envelope encryption) ----

  /**
   * A fresh data key and the same key wrapped under `keyId` (`GenerateDataKey`), the encryption
   * context bound to the wrapped key. Use the plaintext, then zero it.
   */
  generateDataKey(request: Partial<GenerateDataKeyRequest>, options?: CallOptions): Promise<GenerateDataKeyResponse> {
    return this.streamed("generateDataKey", CryptoServiceService.generateDataKey, () => GenerateDataKeyRequest.fromPartial(request), options);
  }

  /** Only the wrapped data key (`GenerateDataKeyWithoutPlaintext`). */
  generateDataKeyWithoutPlaintext(request: Partial<GenerateDataKeyRequest>, options?: CallOptions): Promise<GenerateDataKeyResponse> {
    return this.streamed("generateDataKeyWithoutPlaintext", CryptoServiceService.generateDataKeyWithoutPlaintext, () => GenerateDataKeyRequest.fromPartial(request), options);
  }

  /** Unwraps a data key (`DecryptDataKey`); the encryption context must be exactly the one it was made with. */
  decryptDataKey(request: Partial<DecryptDataKeyRequest>, options?: CallOptions): Promise<DecryptDataKeyResponse> {
    return this.streamed("decryptDataKey", CryptoServiceService.decryptDataKey, () => DecryptDataKeyRequest.fromPartial(request), options);
  }

  // ---- re-encryption (issue 13) ----

  /**
   * Re-encrypts a self-describing ciphertext (an `Encrypt` ciphertextBlob or a wrapped data key)
   * under `destinationKeyId` (empty: the primary version of its own key) inside the service
   * (`ReEncrypt`): the plaintext never reaches the client.
   */
  reEncrypt(request: Partial<ReEncryptRequest>, options?: CallOptions): Promise<ReEncryptResponse> {
    return this.call(CryptoServiceService.reEncrypt, () => ReEncryptRequest.fromPartial(request), options);
  }

  /** Many re-encryptions in one call (`BatchReEncrypt`), with per-item results. */
  batchReEncrypt(request: BatchRequestInit<ReEncryptRequest>, options?: CallOptions): Promise<BatchReEncryptResponse> {
    return this.call(CryptoServiceService.batchReEncrypt, () => BatchReEncryptRequest.fromPartial(request), options);
  }
}
