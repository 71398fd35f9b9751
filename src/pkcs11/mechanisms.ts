import * as pk from "pkcs11js";
import { createHash } from "node:crypto";
import { CKM_AES_KEY_WRAP_PAD, CKM_EDDSA, DIGEST_INFO_PREFIX, HASH_MECH, OAEP_MECH } from "./constants";
import type { CipherSpec, OaepHash, SignSpec, WrapSpec } from "./types";

/**
 * Domain operation specs → PKCS#11 mechanisms (CKM_*) with their parameters: the one place that
 * knows how a CipherSpec, SignSpec or WrapSpec is spelled for the device.
 */

/** CKM_RSA_PKCS_OAEP with MGF1 of the same hash; a non-empty label goes in pSourceData (CKZ_DATA_SPECIFIED). */
export function oaep(hash: OaepHash, label?: Buffer): pk.Mechanism {
  return {
    mechanism: pk.CKM_RSA_PKCS_OAEP,
    parameter: {
      type: pk.CK_PARAMS_RSA_OAEP,
      hashAlg: OAEP_MECH[hash].digest,
      mgf: OAEP_MECH[hash].mgf,
      source: 1 /* CKZ_DATA_SPECIFIED */,
      ...(label?.length ? { sourceData: label } : {}),
    } as pk.RsaOAEP,
  };
}

/** CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD or CKM_RSA_PKCS_OAEP for C_WrapKey/C_UnwrapKey. */
export function wrapMechanism(spec: WrapSpec): pk.Mechanism {
  switch (spec.name) {
    case "AES_KW":
      return { mechanism: pk.CKM_AES_KEY_WRAP };
    case "AES_KWP":
      return { mechanism: CKM_AES_KEY_WRAP_PAD };
    case "RSA_OAEP":
      return oaep(spec.hash, spec.label);
  }
}

/** CKM_AES_GCM, CKM_AES_CBC_PAD, CKM_AES_CTR or CKM_RSA_PKCS_OAEP for C_EncryptInit/C_DecryptInit. */
export function cipherMechanism(spec: CipherSpec): pk.Mechanism {
  switch (spec.name) {
    case "AES_GCM":
      return {
        mechanism: pk.CKM_AES_GCM,
        parameter: { type: pk.CK_PARAMS_AES_GCM, iv: spec.iv, aad: spec.aad.length ? spec.aad : undefined, ivBits: spec.iv.length * 8, tagBits: spec.tagBytes * 8 } as pk.AesGCM,
      };
    case "AES_CBC_PAD":
      return { mechanism: pk.CKM_AES_CBC_PAD, parameter: spec.iv };
    case "AES_CTR": {
      // CK_AES_CTR_PARAMS { CK_ULONG ulCounterBits; CK_BYTE cb[16]; } on LP64.
      const prm = Buffer.alloc(24);
      prm.writeBigUInt64LE(128n, 0);
      spec.iv.copy(prm, 8);
      return { mechanism: pk.CKM_AES_CTR, parameter: prm };
    }
    case "RSA_OAEP":
      return oaep(spec.hash, spec.label);
  }
}

/** CK_RSA_PKCS_PSS_PARAMS: MGF1 of the same hash, salt as long as the hash. */
export function pssParams(hash: "sha256" | "sha384" | "sha512"): pk.RsaPSS {
  return { type: pk.CK_PARAMS_RSA_PSS, hashAlg: HASH_MECH[hash].digest, mgf: HASH_MECH[hash].mgf, saltLen: HASH_MECH[hash].len };
}

/** Picks the mechanism and the bytes the device signs, hashing on the host where the device only signs digests. */
export function signMechanism(spec: SignSpec, data: Buffer, mechs: Set<number>): { mech: pk.Mechanism; input: Buffer } {
  switch (spec.name) {
    case "RSA_PKCS1":
      if (spec.input === "message" && mechs.has(HASH_MECH[spec.hash].rsaPkcs)) return { mech: { mechanism: HASH_MECH[spec.hash].rsaPkcs }, input: data };
      return { mech: { mechanism: pk.CKM_RSA_PKCS }, input: Buffer.concat([DIGEST_INFO_PREFIX[spec.hash], digestOf(spec.hash, data, spec.input)]) };
    case "RSA_PSS":
      if (spec.input === "message" && mechs.has(HASH_MECH[spec.hash].rsaPss)) return { mech: { mechanism: HASH_MECH[spec.hash].rsaPss, parameter: pssParams(spec.hash) }, input: data };
      return { mech: { mechanism: pk.CKM_RSA_PKCS_PSS, parameter: pssParams(spec.hash) }, input: digestOf(spec.hash, data, spec.input) };
    case "ECDSA":
      return { mech: { mechanism: pk.CKM_ECDSA }, input: digestOf(spec.hash, data, spec.input) };
    case "EDDSA":
      return { mech: { mechanism: CKM_EDDSA }, input: data };
    case "HMAC":
      return { mech: { mechanism: HASH_MECH[spec.hash].hmac }, input: data };
    case "AES_CMAC":
      return { mech: { mechanism: pk.CKM_AES_CMAC }, input: data };
  }
}

function digestOf(hash: "sha256" | "sha384" | "sha512", data: Buffer, input: "message" | "digest"): Buffer {
  return input === "digest" ? data : createHash(hash).update(data).digest();
}

/** CKM_ECDH1_DERIVE with CKD_NULL (the raw shared secret becomes the key) and the peer's public point. */
export function ecdhMechanism(peerPoint: Buffer): pk.Mechanism {
  return { mechanism: pk.CKM_ECDH1_DERIVE, parameter: { type: pk.CK_PARAMS_EC_DH, kdf: pk.CKD_NULL, publicData: peerPoint } as pk.ECDH1 };
}
