import * as pk from "pkcs11js";
import type { Curve, Hash } from "./types";

/** PKCS#11 v3.0 values that pkcs11js does not name. */
export const CKK_EC_EDWARDS = 0x40;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
/** CKM_AES_KEY_WRAP_PAD (RFC 5649). */
export const CKM_AES_KEY_WRAP_PAD = 0x210a;

/** DER-encoded OIDs for CKA_EC_PARAMS. */
export const CURVE_OID: Record<Curve, Buffer> = {
  "P-256": Buffer.from("06082a8648ce3d030107", "hex"),
  "P-384": Buffer.from("06052b81040022", "hex"),
  "P-521": Buffer.from("06052b81040023", "hex"),
  secp256k1: Buffer.from("06052b8104000a", "hex"),
};
/** id-Ed25519 (RFC 8410). */
export const ED25519_OID = Buffer.from("06032b6570", "hex");

/** Field size in bytes, for raw r||s signatures and EC points. */
export const CURVE_BYTES: Record<Curve, number> = { "P-256": 32, "P-384": 48, "P-521": 66, secp256k1: 32 };

export const HASH_MECH: Record<Hash, { digest: number; mgf: number; hmac: number; rsaPkcs: number; rsaPss: number; len: number }> = {
  sha256: { digest: pk.CKM_SHA256, mgf: pk.CKG_MGF1_SHA256, hmac: pk.CKM_SHA256_HMAC, rsaPkcs: pk.CKM_SHA256_RSA_PKCS, rsaPss: pk.CKM_SHA256_RSA_PKCS_PSS, len: 32 },
  sha384: { digest: pk.CKM_SHA384, mgf: pk.CKG_MGF1_SHA384, hmac: pk.CKM_SHA384_HMAC, rsaPkcs: pk.CKM_SHA384_RSA_PKCS, rsaPss: pk.CKM_SHA384_RSA_PKCS_PSS, len: 48 },
  sha512: { digest: pk.CKM_SHA512, mgf: pk.CKG_MGF1_SHA512, hmac: pk.CKM_SHA512_HMAC, rsaPkcs: pk.CKM_SHA512_RSA_PKCS, rsaPss: pk.CKM_SHA512_RSA_PKCS_PSS, len: 64 },
};

/** OAEP hash → (CKM digest, CKG MGF1). */
export const OAEP_MECH: Record<"sha1" | "sha256" | "sha384" | "sha512", { digest: number; mgf: number; len: number }> = {
  sha1: { digest: pk.CKM_SHA_1, mgf: pk.CKG_MGF1_SHA1, len: 20 },
  sha256: { digest: pk.CKM_SHA256, mgf: pk.CKG_MGF1_SHA256, len: 32 },
  sha384: { digest: pk.CKM_SHA384, mgf: pk.CKG_MGF1_SHA384, len: 48 },
  sha512: { digest: pk.CKM_SHA512, mgf: pk.CKG_MGF1_SHA512, len: 64 },
};

/** DER DigestInfo prefixes (RFC 8017 §9.2 note 1), for CKM_RSA_PKCS over a precomputed digest. */
export const DIGEST_INFO_PREFIX: Record<Hash, Buffer> = {
  sha256: Buffer.from("3031300d060960864801650304020105000420", "hex"),
  sha384: Buffer.from("3041300d060960864801650304020205000430", "hex"),
  sha512: Buffer.from("3051300d060960864801650304020305000440", "hex"),
};

/** Human names for the mechanisms hsmd uses, for messages and metrics. */
export const MECHANISM_NAMES: Record<number, string> = {
  [pk.CKM_AES_KEY_GEN]: "CKM_AES_KEY_GEN",
  [pk.CKM_GENERIC_SECRET_KEY_GEN]: "CKM_GENERIC_SECRET_KEY_GEN",
  [pk.CKM_RSA_PKCS_KEY_PAIR_GEN]: "CKM_RSA_PKCS_KEY_PAIR_GEN",
  [pk.CKM_EC_KEY_PAIR_GEN]: "CKM_EC_KEY_PAIR_GEN",
  [CKM_EC_EDWARDS_KEY_PAIR_GEN]: "CKM_EC_EDWARDS_KEY_PAIR_GEN",
  [pk.CKM_AES_GCM]: "CKM_AES_GCM",
  [pk.CKM_AES_CBC_PAD]: "CKM_AES_CBC_PAD",
  [pk.CKM_AES_CTR]: "CKM_AES_CTR",
  [pk.CKM_AES_KEY_WRAP]: "CKM_AES_KEY_WRAP",
  [CKM_AES_KEY_WRAP_PAD]: "CKM_AES_KEY_WRAP_PAD",
  [pk.CKM_RSA_PKCS_OAEP]: "CKM_RSA_PKCS_OAEP",
  [pk.CKM_RSA_PKCS]: "CKM_RSA_PKCS",
  [pk.CKM_RSA_X_509]: "CKM_RSA_X_509",
  [pk.CKM_RSA_PKCS_PSS]: "CKM_RSA_PKCS_PSS",
  [pk.CKM_SHA256_RSA_PKCS]: "CKM_SHA256_RSA_PKCS",
  [pk.CKM_SHA384_RSA_PKCS]: "CKM_SHA384_RSA_PKCS",
  [pk.CKM_SHA512_RSA_PKCS]: "CKM_SHA512_RSA_PKCS",
  [pk.CKM_SHA256_RSA_PKCS_PSS]: "CKM_SHA256_RSA_PKCS_PSS",
  [pk.CKM_SHA384_RSA_PKCS_PSS]: "CKM_SHA384_RSA_PKCS_PSS",
  [pk.CKM_SHA512_RSA_PKCS_PSS]: "CKM_SHA512_RSA_PKCS_PSS",
  [pk.CKM_ECDSA]: "CKM_ECDSA",
  [CKM_EDDSA]: "CKM_EDDSA",
  [pk.CKM_SHA256_HMAC]: "CKM_SHA256_HMAC",
  [pk.CKM_SHA384_HMAC]: "CKM_SHA384_HMAC",
  [pk.CKM_SHA512_HMAC]: "CKM_SHA512_HMAC",
  [pk.CKM_AES_CMAC]: "CKM_AES_CMAC",
  [pk.CKM_ECDH1_DERIVE]: "CKM_ECDH1_DERIVE",
  [pk.CKM_SHA256]: "CKM_SHA256",
};

export function mechanismName(m: number): string {
  return MECHANISM_NAMES[m] ?? `0x${m.toString(16)}`;
}

/** The value of a CKM_* name: hsmd's own names, then every one pkcs11js defines; undefined if unknown. */
export function mechanismByName(name: string): number | undefined {
  for (const [v, n] of Object.entries(MECHANISM_NAMES)) if (n === name) return Number(v);
  const v = (pk as unknown as Record<string, unknown>)[name];
  return name.startsWith("CKM_") && typeof v === "number" ? v : undefined;
}
