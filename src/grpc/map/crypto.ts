/**
 * hsm.v1 CryptoService messages ↔ the key domain (src/keys): algorithm, message type, signature
 * format and spec numbers ↔ names, batch results ↔ ItemError. An unknown or unspecified enum number
 * answers INVALID_ARGUMENT with the message the domain used to give.
 */
import { grpcStatusOf } from "../status";
import { Code, HsmError, invalid } from "../../errors";
import {
  EncryptionAlgorithm,
  MessageType,
  SignatureFormat,
  SigningAlgorithm,
  WrapAlgorithm,
  type DecryptDataKeyRequest,
  type DecryptRequest,
  type DeriveKeyRequest,
  type EncryptRequest,
  type GenerateDataKeyRequest,
  type GenerateDataKeyResponse,
  type ItemError,
  type SignRequest,
  type UnwrapKeyRequest,
  type VerifyRequest,
  type WrapKeyRequest,
} from "../../gen/hsm/v1/crypto";
import { KeySpec } from "../../gen/hsm/v1/keys";
import type {
  BatchResult,
  DataKeyInput,
  DataKeyOutput,
  DecryptDataKeyInput,
  DecryptInput,
  DeriveKeyInput,
  EncryptInput,
  EncryptionAlgorithmName,
  SignInput,
  SigningAlgorithmName,
  UnwrapKeyInput,
  VerifyInput,
  WrapAlgorithmName,
  WrapKeyInput,
} from "../../keys";
import { specFromProto, specToProto, usagesFromProto } from "./keys";

/** An enum's value names without their prefix, by number (UNSPECIFIED left out). */
function namesOf<N extends string>(e: Record<string, string | number>, prefix: string): Map<number, N> {
  const out = new Map<number, N>();
  for (const [k, v] of Object.entries(e)) if (typeof v === "number" && v !== 0 && k.startsWith(prefix)) out.set(v, k.slice(prefix.length) as N);
  return out;
}
const ENCRYPTION = namesOf<EncryptionAlgorithmName>(EncryptionAlgorithm, "ENCRYPTION_ALGORITHM_");
const SIGNING = namesOf<SigningAlgorithmName>(SigningAlgorithm, "SIGNING_ALGORITHM_");
const WRAP = namesOf<WrapAlgorithmName>(WrapAlgorithm, "WRAP_ALGORITHM_");

/** An EncryptionAlgorithm number as a name; INVALID_ARGUMENT for UNSPECIFIED or an unknown one. */
export function encryptionAlgorithmFromProto(alg: EncryptionAlgorithm): EncryptionAlgorithmName {
  const n = ENCRYPTION.get(alg);
  if (!n) throw invalid(`algorithm must be one of AES_GCM, AES_CBC_PAD, AES_CTR, RSA_OAEP_SHA1/256/384/512; got ${EncryptionAlgorithm[alg] ?? alg}`);
  return n;
}

/** A SigningAlgorithm number as a name; INVALID_ARGUMENT for UNSPECIFIED or an unknown one. */
export function signingAlgorithmFromProto(alg: SigningAlgorithm): SigningAlgorithmName {
  const n = SIGNING.get(alg);
  if (!n) throw invalid(`algorithm must be a SigningAlgorithm other than UNSPECIFIED; got ${SigningAlgorithm[alg] ?? alg}`);
  return n;
}

/** A WrapAlgorithm number as a name; INVALID_ARGUMENT for UNSPECIFIED or an unknown one. */
export function wrapAlgorithmFromProto(alg: WrapAlgorithm): WrapAlgorithmName {
  const n = WRAP.get(alg);
  if (!n) throw invalid(`algorithm must be AES_KW, AES_KWP, RSA_OAEP_SHA256 or RSA_OAEP_SHA1; got ${WrapAlgorithm[alg] ?? alg}`);
  return n;
}

/** EncryptRequest → domain. */
export function encryptFromProto(r: EncryptRequest): EncryptInput {
  return { keyId: r.keyId, algorithm: encryptionAlgorithmFromProto(r.algorithm), plaintext: r.plaintext, aad: r.aad, iv: r.iv, oaepLabel: r.oaepLabel };
}

/** DecryptRequest → domain. */
export function decryptFromProto(r: DecryptRequest): DecryptInput {
  const blob = r.ciphertextBlob.length > 0;
  // A self-describing ciphertext names its algorithm; one named beside it must be the same (checked by the domain).
  return {
    keyId: r.keyId,
    algorithm: blob && r.algorithm === EncryptionAlgorithm.ENCRYPTION_ALGORITHM_UNSPECIFIED ? undefined : encryptionAlgorithmFromProto(r.algorithm),
    ciphertext: r.ciphertext,
    iv: r.iv,
    aad: r.aad,
    tagLength: r.tagLength,
    oaepLabel: r.oaepLabel,
    ciphertextBlob: r.ciphertextBlob,
    keyVersion: r.keyVersion,
  };
}

/** SignRequest → domain: message type, then algorithm, then signature format (each INVALID_ARGUMENT when unknown). */
export function signFromProto(r: SignRequest): SignInput {
  if (r.messageType !== MessageType.MESSAGE_TYPE_RAW && r.messageType !== MessageType.MESSAGE_TYPE_DIGEST) throw invalid(`message_type must be RAW or DIGEST; got ${r.messageType}`);
  const algorithm = signingAlgorithmFromProto(r.algorithm);
  if (r.signatureFormat !== SignatureFormat.SIGNATURE_FORMAT_DER && r.signatureFormat !== SignatureFormat.SIGNATURE_FORMAT_RAW) {
    throw invalid(`signature_format must be DER or RAW; got ${r.signatureFormat}`);
  }
  return {
    keyId: r.keyId,
    algorithm,
    message: r.message,
    messageType: r.messageType === MessageType.MESSAGE_TYPE_DIGEST ? "DIGEST" : "RAW",
    signatureFormat: r.signatureFormat === SignatureFormat.SIGNATURE_FORMAT_RAW ? "RAW" : "DER",
    macLength: r.macLength,
  };
}

/** VerifyRequest → domain. */
export const verifyFromProto = (r: VerifyRequest): VerifyInput => ({ ...signFromProto(r), signature: r.signature, keyVersion: r.keyVersion });

/** WrapKeyRequest → domain. */
export function wrapKeyFromProto(r: WrapKeyRequest): WrapKeyInput {
  return { wrappingKeyId: r.wrappingKeyId, keyId: r.keyId, algorithm: wrapAlgorithmFromProto(r.algorithm), oaepLabel: r.oaepLabel };
}

/** UnwrapKeyRequest → domain. */
export function unwrapKeyFromProto(r: UnwrapKeyRequest): UnwrapKeyInput {
  const algorithm = wrapAlgorithmFromProto(r.algorithm);
  return {
    unwrappingKeyId: r.unwrappingKeyId,
    wrappedKey: r.wrappedKey,
    algorithm,
    spec: specFromProto(r.spec),
    publicKeySpki: r.publicKeySpki,
    label: r.label,
    usages: usagesFromProto(r.usages),
    exportable: r.exportable,
    requestId: r.requestId,
    oaepLabel: r.oaepLabel,
  };
}

/** DeriveKeyRequest → domain. */
export function deriveKeyFromProto(r: DeriveKeyRequest): DeriveKeyInput {
  return {
    privateKeyId: r.privateKeyId,
    peerPublicKeySpki: r.peerPublicKeySpki,
    spec: specFromProto(r.spec),
    label: r.label,
    usages: usagesFromProto(r.usages),
    exportable: r.exportable,
    requestId: r.requestId,
  };
}

/** GenerateDataKeyRequest → domain: spec UNSPECIFIED is the default (AES_256); a number the API does not define INVALID_ARGUMENT. */
export function dataKeyFromProto(r: GenerateDataKeyRequest): DataKeyInput {
  let spec: DataKeyInput["spec"];
  if (r.spec !== KeySpec.KEY_SPEC_UNSPECIFIED) {
    try {
      spec = specFromProto(r.spec);
    } catch {
      throw invalid("spec must be KEY_SPEC_AES_256 (the default) or KEY_SPEC_AES_128 for a data key");
    }
  }
  return { keyId: r.keyId, spec, encryptionContext: r.encryptionContext };
}

/** GenerateDataKey's domain answer as the response. */
export const dataKeyToProto = (d: DataKeyOutput): GenerateDataKeyResponse => ({ ...d, spec: specToProto(d.spec) });

/** DecryptDataKeyRequest → domain (the same fields). */
export const decryptDataKeyFromProto = (r: DecryptDataKeyRequest): DecryptDataKeyInput => ({ keyId: r.keyId, wrappedDataKey: r.wrappedDataKey, encryptionContext: r.encryptionContext });

/** A batch item's outcome as the oneof of its result: the value, or its gRPC status and message (INTERNAL without details). */
export function batchResultToProto<O>(res: BatchResult<O>): { $case: "ok"; value: O } | { $case: "error"; value: ItemError } {
  if (res.ok) return { $case: "ok", value: res.value };
  return { $case: "error", value: itemErrorOf(res.error) };
}

/** An error as an ItemError (a batch item's, a stream message's): its gRPC status and message, INTERNAL without details. */
export function itemErrorOf(e: unknown): ItemError {
  const err = HsmError.from(e);
  return { code: grpcStatusOf(err.code), message: err.code === Code.Internal ? "internal error" : err.message };
}
