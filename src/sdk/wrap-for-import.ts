import { constants, createCipheriv, createPublicKey, publicEncrypt, randomFillSync, type KeyObject } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";

/** RFC 5649 §3 alternative initial value (AIV) prefix for AES Key Wrap with Padding. */
const KWP_AIV = Buffer.from("A65959A6", "hex");

/**
 * Wraps key material for BYOK import (`ImportKey`), client-side, in the service's
 * `RSA_OAEP_SHA256_AES_KWP` format (see docs/IMPORT.md):
 *
 * `RSA-OAEP(SHA-256, MGF1-SHA-256, empty label)(K) || AES-KWP(K, material)`
 *
 * where K is a fresh random AES-256 key (CKM_RSA_PKCS_OAEP then CKM_AES_KEY_WRAP_PAD, RFC 5649).
 * The first part is as long as the RSA modulus (384 bytes for the RSA-3072 import key). K is zeroed
 * before returning.
 *
 * @param importPublicKeySpki the import wrapping key from `getImportParameters()` (`publicKeySpki`, SPKI DER)
 * @param material raw key bytes for AES and HMAC keys; PKCS#8 DER for private keys
 * @param wrappingAlgorithm `getImportParameters().wrappingAlgorithm`: `RSA_OAEP_SHA256_AES_KWP` (default) or
 *   `RSA_OAEP_SHA1_AES_KWP` (devices without SHA-256 OAEP, such as SoftHSM2 2.6)
 * @returns the value for `ImportKeyRequest.wrappedKeyMaterial`
 * @throws {HsmClientError} INVALID_ARGUMENT when the public key is not RSA SPKI DER or the material is empty
 */
export function wrapForImport(importPublicKeySpki: Buffer, material: Buffer, wrappingAlgorithm = "RSA_OAEP_SHA256_AES_KWP"): Buffer {
  const oaepHash = { RSA_OAEP_SHA256_AES_KWP: "sha256", RSA_OAEP_SHA1_AES_KWP: "sha1" }[wrappingAlgorithm];
  if (!oaepHash) {
    throw new HsmClientError(status.INVALID_ARGUMENT, `wrapForImport: unknown wrapping algorithm ${wrappingAlgorithm}`);
  }
  if (!Buffer.isBuffer(material) || material.length === 0) {
    throw new HsmClientError(status.INVALID_ARGUMENT, "wrapForImport: material must be a non-empty Buffer");
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: importPublicKeySpki, format: "der", type: "spki" });
  } catch (err) {
    throw new HsmClientError(status.INVALID_ARGUMENT, "wrapForImport: the import key is not SPKI DER", { cause: err });
  }
  if (publicKey.asymmetricKeyType !== "rsa") {
    throw new HsmClientError(status.INVALID_ARGUMENT, `wrapForImport: the import key must be RSA, not ${publicKey.asymmetricKeyType ?? "unknown"}`);
  }

  // Buffer.alloc, not randomBytes/allocUnsafe: a private, non-pooled buffer that can be zeroed.
  const ephemeral = Buffer.alloc(32);
  try {
    randomFillSync(ephemeral);
    // oaepHash sets the OAEP digest; OpenSSL uses the same digest for MGF1 unless told otherwise.
    const wrappedKey = publicEncrypt({ key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, ephemeral);
    const kwp = createCipheriv("id-aes256-wrap-pad", ephemeral, KWP_AIV);
    const wrappedMaterial = Buffer.concat([kwp.update(material), kwp.final()]);
    return Buffer.concat([wrappedKey, wrappedMaterial]);
  } finally {
    ephemeral.fill(0);
  }
}
