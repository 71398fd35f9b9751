import type { CipherSpec, Hash, KeyAlgorithm, OaepHash, SignSpec, Usage, WrapSpec } from "../pkcs11";
import { invalid } from "../errors";
import { KEY_SPEC_NAMES, type EncryptionAlgorithmName, type KeySpecName, type SigningAlgorithmName, type WrapAlgorithmName } from "./types";

/** Key spec → key algorithm (device). */
export const SPEC_ALGORITHM: Record<KeySpecName, KeyAlgorithm> = {
  AES_128: { type: "aes", bits: 128 },
  AES_256: { type: "aes", bits: 256 },
  HMAC_SHA256: { type: "hmac", hash: "sha256" },
  HMAC_SHA384: { type: "hmac", hash: "sha384" },
  HMAC_SHA512: { type: "hmac", hash: "sha512" },
  RSA_2048: { type: "rsa", bits: 2048 },
  RSA_3072: { type: "rsa", bits: 3072 },
  RSA_4096: { type: "rsa", bits: 4096 },
  EC_P256: { type: "ec", curve: "P-256" },
  EC_P384: { type: "ec", curve: "P-384" },
  EC_P521: { type: "ec", curve: "P-521" },
  EC_SECP256K1: { type: "ec", curve: "secp256k1" },
  ED25519: { type: "ed25519" },
};

/** The key spec of a device key algorithm (for imported public keys). */
export function specOf(alg: KeyAlgorithm): KeySpecName {
  for (const [k, v] of Object.entries(SPEC_ALGORITHM)) {
    if (JSON.stringify(v) === JSON.stringify(alg)) return k as KeySpecName;
  }
  throw invalid(`unsupported key algorithm ${JSON.stringify(alg)}`);
}

/** The device algorithm of a key spec (every name has one). */
export function algorithmOf(spec: KeySpecName): KeyAlgorithm {
  const alg = SPEC_ALGORITHM[spec];
  if (!alg) throw invalid(`spec must be one of ${KEY_SPEC_NAMES.map((k) => `KEY_SPEC_${k}`).join(", ")}; got ${spec}`);
  return alg;
}

/** Secret keys (AES, HMAC) are one object; the others a pair. */
export const isSecret = (alg: KeyAlgorithm) => alg.type === "aes" || alg.type === "hmac";

/** Which usages each kind of key may have. */
const ALLOWED: Record<KeyAlgorithm["type"], Usage[]> = {
  aes: ["encrypt", "decrypt", "wrap", "unwrap", "sign", "verify"],
  hmac: ["sign", "verify"],
  rsa: ["encrypt", "decrypt", "sign", "verify", "wrap", "unwrap"],
  ec: ["sign", "verify", "derive"],
  ed25519: ["sign", "verify"],
};
const DEFAULTS: Record<KeyAlgorithm["type"], Usage[]> = {
  aes: ["encrypt", "decrypt"],
  hmac: ["sign", "verify"],
  rsa: ["sign", "verify"],
  ec: ["sign", "verify"],
  ed25519: ["sign", "verify"],
};

/** AES usages that make a MAC key (CKM_AES_CMAC); the others make a cipher key. */
const AES_MAC_USAGES: readonly Usage[] = ["sign", "verify"];

/**
 * Resolves requested usages: defaults when empty; INVALID_ARGUMENT for one that the kind cannot
 * have. An AES key is a cipher key (encrypt, decrypt, wrap, unwrap) or a MAC key (sign, verify for
 * AES-CMAC), never both: one key, one purpose (as KMS's key usages).
 */
export function resolveUsages(alg: KeyAlgorithm, requested: readonly Usage[], publicOnly = false): Usage[] {
  const out = resolveRequested(alg, requested, publicOnly);
  if (alg.type === "aes") {
    const mac = out.filter((u) => AES_MAC_USAGES.includes(u));
    const cipher = out.filter((u) => !AES_MAC_USAGES.includes(u));
    if (mac.length && cipher.length) {
      throw invalid(`usages: an AES key is either a cipher key (encrypt, decrypt, wrap, unwrap) or an AES-CMAC key (sign, verify), not both; got ${out.join(", ")}`);
    }
  }
  return out;
}

function resolveRequested(alg: KeyAlgorithm, requested: readonly Usage[], publicOnly: boolean): Usage[] {
  if (requested.length === 0) return publicOnly ? (alg.type === "rsa" ? ["verify"] : ["verify"]) : [...DEFAULTS[alg.type]];
  const out = new Set<Usage>();
  const allowed = publicOnly ? ALLOWED[alg.type].filter((u) => u === "verify" || u === "encrypt" || u === "wrap") : ALLOWED[alg.type];
  for (const u of requested) {
    if (!allowed.includes(u)) throw invalid(`usages: a ${alg.type}${publicOnly ? " public" : ""} key cannot be used to ${u} (allowed: ${allowed.join(", ")})`);
    out.add(u);
  }
  return [...out];
}

/** An encryption algorithm resolved for a key: the cipher spec minus per-call parameters. */
export function cipherFor(alg: EncryptionAlgorithmName, key: KeyAlgorithm): { name: CipherSpec["name"]; hash?: OaepHash } {
  const need = (t: KeyAlgorithm["type"], name: CipherSpec["name"], hash?: OaepHash) => {
    if (key.type !== t) throw invalid(`algorithm ENCRYPTION_ALGORITHM_${alg} needs an ${t.toUpperCase()} key; this key is ${key.type.toUpperCase()}`);
    return { name, hash };
  };
  switch (alg) {
    case "AES_GCM":
      return need("aes", "AES_GCM");
    case "AES_CBC_PAD":
      return need("aes", "AES_CBC_PAD");
    case "AES_CTR":
      return need("aes", "AES_CTR");
    case "RSA_OAEP_SHA256":
      return need("rsa", "RSA_OAEP", "sha256");
    case "RSA_OAEP_SHA384":
      return need("rsa", "RSA_OAEP", "sha384");
    case "RSA_OAEP_SHA512":
      return need("rsa", "RSA_OAEP", "sha512");
    case "RSA_OAEP_SHA1":
      return need("rsa", "RSA_OAEP", "sha1");
    default:
      throw invalid(`algorithm must be one of AES_GCM, AES_CBC_PAD, AES_CTR, RSA_OAEP_SHA1/256/384/512; got ${alg}`);
  }
}

/** A signing algorithm resolved for a key; INVALID_ARGUMENT when it does not fit the key. */
export function signFor(alg: SigningAlgorithmName, key: KeyAlgorithm, digest: boolean): SignSpec {
  const input = digest ? "digest" : "message";
  const need = (t: KeyAlgorithm["type"]) => {
    if (key.type !== t)
      throw invalid(
        `algorithm SIGNING_ALGORITHM_${alg} needs ${t === "ec" ? "an EC" : t === "rsa" ? "an RSA" : t === "hmac" ? "an HMAC" : t === "aes" ? "an AES" : "an Ed25519"} key; this key is ${key.type.toUpperCase()}`,
      );
  };
  const hashOf: Partial<Record<SigningAlgorithmName, Hash>> = {
    RSA_PKCS1_SHA256: "sha256",
    RSA_PKCS1_SHA384: "sha384",
    RSA_PKCS1_SHA512: "sha512",
    RSA_PSS_SHA256: "sha256",
    RSA_PSS_SHA384: "sha384",
    RSA_PSS_SHA512: "sha512",
    ECDSA_SHA256: "sha256",
    ECDSA_SHA384: "sha384",
    ECDSA_SHA512: "sha512",
    HMAC_SHA256: "sha256",
    HMAC_SHA384: "sha384",
    HMAC_SHA512: "sha512",
  };
  const hash = hashOf[alg];
  switch (alg) {
    case "RSA_PKCS1_SHA256":
    case "RSA_PKCS1_SHA384":
    case "RSA_PKCS1_SHA512":
      need("rsa");
      return { name: "RSA_PKCS1", hash: hash!, input };
    case "RSA_PSS_SHA256":
    case "RSA_PSS_SHA384":
    case "RSA_PSS_SHA512":
      need("rsa");
      return { name: "RSA_PSS", hash: hash!, input };
    case "ECDSA_SHA256":
    case "ECDSA_SHA384":
    case "ECDSA_SHA512":
      need("ec");
      return { name: "ECDSA", hash: hash!, input };
    case "ED25519":
      need("ed25519");
      if (digest) throw invalid("Ed25519 (PureEdDSA) signs the message itself: message_type DIGEST is not allowed");
      return { name: "EDDSA" };
    case "HMAC_SHA256":
    case "HMAC_SHA384":
    case "HMAC_SHA512":
      need("hmac");
      if (digest) throw invalid("HMAC is computed over the message: message_type DIGEST is not allowed");
      if (key.type === "hmac" && key.hash !== hash) throw invalid(`this is an HMAC-${key.hash.toUpperCase()} key; use SIGNING_ALGORITHM_HMAC_${key.hash.toUpperCase()}`);
      return { name: "HMAC", hash: hash! };
    case "AES_CMAC":
      need("aes");
      if (digest) throw invalid("AES-CMAC is computed over the message: message_type DIGEST is not allowed");
      return { name: "AES_CMAC" };
    default:
      throw invalid(`algorithm must be a SigningAlgorithm other than UNSPECIFIED; got ${alg}`);
  }
}

/** A key wrapping algorithm as the device runs it. */
export function wrapFor(alg: WrapAlgorithmName): WrapSpec {
  switch (alg) {
    case "AES_KW":
      return { name: "AES_KW" };
    case "AES_KWP":
      return { name: "AES_KWP" };
    case "RSA_OAEP_SHA256":
      return { name: "RSA_OAEP", hash: "sha256" };
    case "RSA_OAEP_SHA1":
      return { name: "RSA_OAEP", hash: "sha1" };
    default:
      throw invalid(`algorithm must be AES_KW, AES_KWP, RSA_OAEP_SHA256 or RSA_OAEP_SHA1; got ${alg}`);
  }
}

export const HASH_LEN: Record<OaepHash, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

/**
 * The OAEP label of a request (CK_RSA_PKCS_OAEP_PARAMS pSourceData): INVALID_ARGUMENT for one on an
 * algorithm other than RSA-OAEP, or longer than `max` bytes (limits.maxOaepLabelBytes).
 */
export function oaepLabelFor(label: Uint8Array, isOaep: boolean, algorithmName: string, max: number): Buffer {
  const b = Buffer.from(label);
  if (b.length === 0) return b;
  if (!isOaep) throw invalid(`oaep_label is only for the RSA_OAEP algorithms; ${algorithmName} takes none`);
  if (b.length > max) throw invalid(`oaep_label is ${b.length} bytes; the limit is ${max} (limits.maxOaepLabelBytes)`);
  return b;
}

/**
 * The shortest truncated HMAC tag hsmd computes or accepts, for every hash: 16 bytes (128 bits).
 * RFC 2104 §5 asks for at least 80 bits and half the hash output (16 bytes for SHA-256); callers
 * of HMAC-SHA384/512 who follow it to the letter choose 24 or 32.
 */
export const MIN_MAC_LENGTH = 16;

/**
 * The request's `mac_length` for a signing spec: undefined for the full tag (0, or the hash's full
 * length); INVALID_ARGUMENT for one on an algorithm other than HMAC, below {@link MIN_MAC_LENGTH}
 * or above the full tag.
 */
export function macLengthFor(macLength: number, spec: SignSpec, algorithmName: string): number | undefined {
  if (!macLength) return undefined;
  if (spec.name !== "HMAC") throw invalid(`mac_length is only for the HMAC algorithms (truncated HMAC tags); ${algorithmName} takes none`);
  const full = HASH_LEN[spec.hash];
  if (macLength < MIN_MAC_LENGTH) throw invalid(`mac_length must be at least ${MIN_MAC_LENGTH} bytes (shorter HMAC tags are too easy to forge); got ${macLength}`);
  if (macLength > full) throw invalid(`mac_length must be at most ${full} bytes, the full HMAC-${spec.hash.toUpperCase()} tag; got ${macLength}`);
  return macLength === full ? undefined : macLength;
}
