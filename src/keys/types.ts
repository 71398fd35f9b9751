/**
 * The key domain's own vocabulary: names, not wire enum numbers. The gRPC layer maps its messages
 * to and from these (src/grpc/map/keys.ts, src/grpc/map/crypto.ts); records store the same names.
 */
import type { Usage } from "../pkcs11";

/** Every key spec hsmd makes or imports (the API's KeySpec without its KEY_SPEC_ prefix). */
export const KEY_SPEC_NAMES = [
  "AES_128",
  "AES_256",
  "HMAC_SHA256",
  "HMAC_SHA384",
  "HMAC_SHA512",
  "RSA_2048",
  "RSA_3072",
  "RSA_4096",
  "EC_P256",
  "EC_P384",
  "EC_P521",
  "EC_SECP256K1",
  "ED25519",
] as const;
/** A key spec by name ("EC_P256"): what records store and KeyService speaks. */
export type KeySpecName = (typeof KEY_SPEC_NAMES)[number];

/** How a key came to be (the API's KeyOrigin without its KEY_ORIGIN_ prefix). */
export const KEY_ORIGIN_NAMES = ["GENERATED", "IMPORTED", "PUBLIC", "UNWRAPPED", "DERIVED"] as const;
/** A key origin by name ("GENERATED"): what records store. */
export type KeyOriginName = (typeof KEY_ORIGIN_NAMES)[number];

/** Key states by their API names (KeyState without the KEY_STATE_ prefix). */
export const KEY_STATE_NAMES = ["ENABLED", "DISABLED", "PENDING_DELETION", "PENDING_IMPORT"] as const;
export type KeyStateName = (typeof KEY_STATE_NAMES)[number];

/** Encryption algorithms (the API's EncryptionAlgorithm without its ENCRYPTION_ALGORITHM_ prefix). */
export type EncryptionAlgorithmName = "AES_GCM" | "AES_CBC_PAD" | "AES_CTR" | "RSA_OAEP_SHA256" | "RSA_OAEP_SHA384" | "RSA_OAEP_SHA512" | "RSA_OAEP_SHA1";

/** Signing algorithms (the API's SigningAlgorithm without its SIGNING_ALGORITHM_ prefix). */
export type SigningAlgorithmName =
  | "RSA_PKCS1_SHA256"
  | "RSA_PKCS1_SHA384"
  | "RSA_PKCS1_SHA512"
  | "RSA_PSS_SHA256"
  | "RSA_PSS_SHA384"
  | "RSA_PSS_SHA512"
  | "ECDSA_SHA256"
  | "ECDSA_SHA384"
  | "ECDSA_SHA512"
  | "ED25519"
  | "HMAC_SHA256"
  | "HMAC_SHA384"
  | "HMAC_SHA512"
  | "AES_CMAC";

/** Key wrapping algorithms (the API's WrapAlgorithm without its WRAP_ALGORITHM_ prefix). */
export type WrapAlgorithmName = "AES_KW" | "AES_KWP" | "RSA_OAEP_SHA256" | "RSA_OAEP_SHA1";

/** What a Sign or Verify message is: the message itself or its digest. */
export type MessageKind = "RAW" | "DIGEST";
/** ECDSA signature encoding: DER SEQUENCE (X.509, OpenSSL) or r ‖ s (IEEE P1363). */
export type SignatureEncoding = "DER" | "RAW";
/** Encodings an imported public key may come in. */
export type PublicKeyFormatName = "SPKI_DER" | "PEM" | "JWK";

/** A key as callers see it: never its wrapped material; the share list only for its owner. */
export interface Key {
  id: string;
  label: string;
  spec: KeySpecName;
  usages: Usage[];
  state: KeyStateName;
  origin: KeyOriginName;
  createdAt: string;
  /** SPKI DER of the primary version; empty for a secret key. */
  publicKeySpki: Buffer;
  publicOnly: boolean;
  exportable: boolean;
  version: number;
  /** The owner's name; "" for a key made before users existed. */
  owner: string;
  /** Crypto users it is shared with (only for its owner; empty otherwise). */
  sharedWith: string[];
  description: string;
  tags: Record<string, string>;
  /** PENDING_DELETION: when it is destroyed (RFC 3339); "" otherwise. */
  deletionDate: string;
  minDecryptionVersion: number;
  /** 0: no automatic rotation. */
  rotationPeriodDays: number;
  /** "" when no rotation is scheduled. */
  nextRotationAt: string;
  /** "" when the key does not expire. */
  validTo: string;
  /** Aliases ("alias/NAME") pointing at it that the viewer may see (filled by the alias layer; [] otherwise). */
  aliases: string[];
  versionCount: number;
}

/** GenerateKey. `usages` empty: the spec's defaults. `requestId` "": no idempotency. */
export interface GenerateKeyInput {
  spec: KeySpecName;
  label: string;
  usages: Usage[];
  exportable: boolean;
  requestId: string;
  /** Automatic rotation period in days (0 or absent: off; else lifecycle.rotationPeriodDays' bounds). */
  rotationPeriodDays?: number;
  /** Issue 13 (lane S): "" or absent for none. */
  description?: string;
  tags?: Record<string, string>;
}

/** ImportPublicKey: a public key in one of the accepted formats. */
export interface ImportPublicKeyInput {
  format: PublicKeyFormatName;
  publicKey: Uint8Array;
  label: string;
  usages: Usage[];
  requestId: string;
}

/** ImportKey (BYOK): material wrapped under the cluster's import key. */
export interface ImportKeyInput {
  importKeyId: string;
  spec: KeySpecName;
  wrappedKeyMaterial: Uint8Array;
  /** Required for an asymmetric key (checked against the private key). */
  publicKeySpki: Uint8Array;
  label: string;
  usages: Usage[];
  exportable: boolean;
  requestId: string;
  /** Issue 13 (lane S): RFC 3339 expiry ("" or absent: never), re-import target ("" or absent: a new key), metadata. */
  validTo?: string;
  keyId?: string;
  description?: string;
  tags?: Record<string, string>;
}

/** GetImportParameters' answer: the cluster's import key and how to wrap under it. */
export interface ImportParameters {
  importKeyId: string;
  publicKeySpki: Buffer;
  publicKeyPem: string;
  wrappingAlgorithm: string;
}

/**
 * ListKeys. `spec` null: a spec the API does not know (matches no key); undefined: no spec filter.
 * `pageSize` 0: the default page.
 */
export interface ListKeysQuery {
  pageSize: number;
  pageToken: string;
  labelPrefix: string;
  spec?: KeySpecName | null;
  usage?: Usage;
  /** Issue 13 (lane S): only keys in this state; only keys with this tag (and value, when not empty). */
  state?: KeyStateName;
  tagKey?: string;
  tagValue?: string;
  /** Only this key (ListKeys' alias filter, resolved by the caller): one page, never a next one. */
  keyId?: string;
}

/** One page of keys; `nextPageToken` "" on the last. */
export interface KeyPage {
  keys: Key[];
  nextPageToken: string;
}

/** GetPublicKey's answer: the same key in three encodings. */
export interface PublicKeyView {
  keyId: string;
  spkiDer: Buffer;
  pem: string;
  jwk: string;
  version: number;
}

/** Encrypt. `iv` empty: the service picks one. */
export interface EncryptInput {
  keyId: string;
  algorithm: EncryptionAlgorithmName;
  plaintext: Uint8Array;
  aad: Uint8Array;
  iv: Uint8Array;
  oaepLabel: Uint8Array;
}

/** Encrypt's answer (`iv` empty for RSA-OAEP). */
export interface EncryptOutput {
  keyId: string;
  ciphertext: Buffer;
  iv: Buffer;
  keyVersion: number;
  /** The self-describing form (docs/CIPHERTEXT.md); empty for RSA. */
  ciphertextBlob: Buffer;
}

/** Decrypt. `tagLength` 0: 16 bytes (AES-GCM only). */
export interface DecryptInput {
  keyId: string;
  /** A self-describing ciphertext (docs/CIPHERTEXT.md); empty for the raw form. */
  ciphertextBlob: Uint8Array;
  /** Raw form: the version to decrypt with (0: primary). */
  keyVersion: number;
  /** Raw form only (undefined with a ciphertextBlob: its header names it). */
  algorithm: EncryptionAlgorithmName | undefined;
  ciphertext: Uint8Array;
  iv: Uint8Array;
  aad: Uint8Array;
  tagLength: number;
  oaepLabel: Uint8Array;
}

/** Decrypt's answer. */
export interface DecryptOutput {
  keyId: string;
  plaintext: Buffer;
  keyVersion: number;
}

/** Sign. `macLength` 0: the full tag. */
export interface SignInput {
  keyId: string;
  algorithm: SigningAlgorithmName;
  message: Uint8Array;
  messageType: MessageKind;
  signatureFormat: SignatureEncoding;
  macLength: number;
}

/** Sign's answer. */
export interface SignOutput {
  keyId: string;
  signature: Buffer;
  keyVersion: number;
}

/** Verify: Sign's input and the signature to check. */
export interface VerifyInput extends SignInput {
  signature: Uint8Array;
  /** 0: the primary version. */
  keyVersion: number;
}

/** Verify's answer. */
export interface VerifyOutput {
  keyId: string;
  valid: boolean;
  keyVersion: number;
}

/** WrapKey: exports an exportable key under a wrapping key. */
export interface WrapKeyInput {
  wrappingKeyId: string;
  keyId: string;
  algorithm: WrapAlgorithmName;
  oaepLabel: Uint8Array;
}

/** UnwrapKey: a new key from a blob wrapped under an unwrapping key. */
export interface UnwrapKeyInput {
  unwrappingKeyId: string;
  wrappedKey: Uint8Array;
  algorithm: WrapAlgorithmName;
  spec: KeySpecName;
  /** Required for an asymmetric key (checked against the private key). */
  publicKeySpki: Uint8Array;
  label: string;
  usages: Usage[];
  exportable: boolean;
  requestId: string;
  oaepLabel: Uint8Array;
}

/** DeriveKey: an AES key from ECDH between a private key and a peer's public key. */
export interface DeriveKeyInput {
  privateKeyId: string;
  peerPublicKeySpki: Uint8Array;
  spec: KeySpecName;
  label: string;
  usages: Usage[];
  exportable: boolean;
  requestId: string;
}

/** GenerateDataKey. `spec` undefined: AES_256. */
export interface DataKeyInput {
  keyId: string;
  spec?: KeySpecName;
  encryptionContext: Record<string, string>;
}

/** GenerateDataKey's answer (`plaintextDataKey` empty without plaintext). */
export interface DataKeyOutput {
  keyId: string;
  keyVersion: number;
  spec: KeySpecName;
  plaintextDataKey: Buffer;
  wrappedDataKey: Buffer;
}

/** DecryptDataKey. */
export interface DecryptDataKeyInput {
  keyId: string;
  wrappedDataKey: Uint8Array;
  encryptionContext: Record<string, string>;
}

/** DecryptDataKey's answer. */
export interface DecryptDataKeyOutput {
  keyId: string;
  keyVersion: number;
  plaintextDataKey: Buffer;
}

/** One batch item's outcome: its value, or the error that item alone met. */
export type BatchResult<O> = { ok: true; value: O } | { ok: false; error: unknown };
