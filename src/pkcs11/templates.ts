import * as pk from "pkcs11js";
import { CKK_EC_EDWARDS, CURVE_OID, ED25519_OID } from "./constants";
import type { KeyAlgorithm, Part, Usage } from "./types";

/**
 * Where a key object lives and whether it may ever be wrapped: the one switch behind CKA_TOKEN,
 * CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED.
 * - `kept`: an object hsmd keeps (a token object, or a session object materialized from its record).
 *   CKA_EXTRACTABLE=false and CKA_WRAP_WITH_TRUSTED=true: C_WrapKey refuses it under any key, so even
 *   someone holding the token's user PIN cannot take it out.
 * - `transient`: a process-private session object (CKA_TOKEN=false: other applications never see
 *   it) that may be wrapped (CKA_EXTRACTABLE=true). Only as the intermediate a new key is sealed
 *   from (wrapped under the domain key for its record, then unwrapped into its kept form) and as the
 *   copy a WrapKey export wraps; destroyed at once. It cannot be CKA_WRAP_WITH_TRUSTED: the domain
 *   key is not a trusted object (on SoftHSM2 a trusted key's value lies in the clear in the token
 *   files, see docs/SECURITY.md).
 * A token object that can be wrapped has no spelling here.
 */
export type Residence = { kind: "kept"; token: boolean } | { kind: "transient" };

/**
 * Turns intent (algorithm, usages, residence) into PKCS#11 attribute templates, with secure defaults
 * in one place (after node-webcrypto-p11's TemplateBuilder):
 * - every secret and private key is CKA_SENSITIVE and CKA_PRIVATE: its value is never readable;
 * - CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED follow the {@link Residence};
 * - each usage flag is set explicitly, true or false, so no device default grants more.
 */
export interface TemplateIntent {
  id: string;
  alg: KeyAlgorithm;
  usages: readonly Usage[];
  residence: Residence;
}

const SECRET_FLAGS: Array<[Usage, number]> = [
  ["encrypt", pk.CKA_ENCRYPT],
  ["decrypt", pk.CKA_DECRYPT],
  ["sign", pk.CKA_SIGN],
  ["verify", pk.CKA_VERIFY],
  ["wrap", pk.CKA_WRAP],
  ["unwrap", pk.CKA_UNWRAP],
  ["derive", pk.CKA_DERIVE],
];
const PRIVATE_FLAGS: Array<[Usage, number]> = [
  ["decrypt", pk.CKA_DECRYPT],
  ["sign", pk.CKA_SIGN],
  ["unwrap", pk.CKA_UNWRAP],
  ["derive", pk.CKA_DERIVE],
];
const PUBLIC_FLAGS: Array<[Usage, number]> = [
  ["encrypt", pk.CKA_ENCRYPT],
  ["verify", pk.CKA_VERIFY],
  ["wrap", pk.CKA_WRAP],
];

function flags(table: Array<[Usage, number]>, usages: readonly Usage[]): pk.Template {
  return table.map(([u, attr]) => ({ type: attr, value: usages.includes(u) }));
}

/** CKA_ID and CKA_LABEL for a key id: the id is how hsmd finds its objects again. */
export function idAttrs(id: string): pk.Template {
  return [
    { type: pk.CKA_ID, value: Buffer.from(id, "utf8") },
    { type: pk.CKA_LABEL, value: `hsmd:${id}` },
  ];
}

/**
 * CKA_ID and CKA_LABEL prefix of a quarantined object: one that no record explains. Its key id moves
 * behind this prefix (in both attributes), so hsmd no longer finds it as a key, yet it stays in the
 * token until a record explains it again (restored) or an operator purges it.
 */
export const QUARANTINE_PREFIX = "hsmd-quarantine:";

/** CKA_ID and CKA_LABEL of a quarantined object of key `id`. */
export function quarantineAttrs(id: string): pk.Template {
  return [
    { type: pk.CKA_ID, value: Buffer.from(`${QUARANTINE_PREFIX}${id}`, "utf8") },
    { type: pk.CKA_LABEL, value: `${QUARANTINE_PREFIX}${id}` },
  ];
}

export function keyType(alg: KeyAlgorithm): number {
  switch (alg.type) {
    case "aes":
      return pk.CKK_AES;
    case "hmac":
      return pk.CKK_GENERIC_SECRET;
    case "rsa":
      return pk.CKK_RSA;
    case "ec":
      return pk.CKK_EC;
    case "ed25519":
      return CKK_EC_EDWARDS;
  }
}

/** CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED of a secret or private key. */
function protection(r: Residence): pk.Template {
  const kept = r.kind === "kept";
  return [
    { type: pk.CKA_TOKEN, value: kept && r.token },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: !kept },
    { type: pk.CKA_WRAP_WITH_TRUSTED, value: kept },
  ];
}

/** Template for a secret key (generate, unwrap, derive). */
export function secretTemplate(t: TemplateIntent, withLength: boolean): pk.Template {
  const tpl: pk.Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) },
    ...protection(t.residence),
    ...idAttrs(t.id),
    ...flags(SECRET_FLAGS, t.usages),
  ];
  if (withLength) tpl.push({ type: pk.CKA_VALUE_LEN, value: secretLength(t.alg) });
  return tpl;
}

/** Length in bytes of a secret key's value. HMAC keys are as long as the hash output (RFC 2104 §3). */
export function secretLength(alg: KeyAlgorithm): number {
  if (alg.type === "aes") return alg.bits / 8;
  if (alg.type === "hmac") return alg.hash === "sha256" ? 32 : alg.hash === "sha384" ? 48 : 64;
  throw new Error(`${alg.type} is not a secret key`);
}

/** Template for a private key (generate, unwrap). */
export function privateTemplate(t: TemplateIntent): pk.Template {
  return [{ type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY }, { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) }, ...protection(t.residence), ...idAttrs(t.id), ...flags(PRIVATE_FLAGS, t.usages)];
}

/** Template for a public key (generate: without key parts; create: with them). Never secret, so only CKA_TOKEN follows the residence. */
export function publicTemplate(t: TemplateIntent, parts?: { modulus?: Buffer; exponent?: Buffer; ecPointDer?: Buffer }): pk.Template {
  const tpl: pk.Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) },
    { type: pk.CKA_TOKEN, value: t.residence.kind === "kept" && t.residence.token },
    { type: pk.CKA_PRIVATE, value: false },
    ...idAttrs(t.id),
    ...flags(PUBLIC_FLAGS, t.usages),
  ];
  if (t.alg.type === "rsa") {
    if (parts?.modulus) tpl.push({ type: pk.CKA_MODULUS, value: parts.modulus }, { type: pk.CKA_PUBLIC_EXPONENT, value: parts.exponent! });
    else tpl.push({ type: pk.CKA_MODULUS_BITS, value: t.alg.bits }, { type: pk.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) });
  } else if (t.alg.type === "ec") {
    tpl.push({ type: pk.CKA_EC_PARAMS, value: CURVE_OID[t.alg.curve] });
    if (parts?.ecPointDer) tpl.push({ type: pk.CKA_EC_POINT, value: parts.ecPointDer });
  } else if (t.alg.type === "ed25519") {
    tpl.push({ type: pk.CKA_EC_PARAMS, value: ED25519_OID });
    if (parts?.ecPointDer) tpl.push({ type: pk.CKA_EC_POINT, value: parts.ecPointDer });
  }
  return tpl;
}

/**
 * The domain key (generate with `withLength`, or unwrap when joining): an AES-256 token object,
 * sensitive, wrap/unwrap only (every other usage false explicitly: SoftHSM2 defaults CKA_VERIFY to
 * true), extractable but only under a trusted key (CKA_WRAP_WITH_TRUSTED), which only a security
 * officer can create: that is how a joining node receives it.
 */
export function domainKeyTemplate(id: string, withLength: boolean): pk.Template {
  const tpl: pk.Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_TOKEN, value: true },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: true },
    { type: pk.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pk.CKA_WRAP, value: true },
    { type: pk.CKA_UNWRAP, value: true },
    { type: pk.CKA_ENCRYPT, value: false },
    { type: pk.CKA_DECRYPT, value: false },
    { type: pk.CKA_SIGN, value: false },
    { type: pk.CKA_VERIFY, value: false },
    ...idAttrs(id),
  ];
  if (withLength) tpl.push({ type: pk.CKA_VALUE_LEN, value: 32 });
  return tpl;
}

/**
 * The ephemeral AES key of a BYOK import, unwrapped with RSA-OAEP under the import key: a session
 * object that can only unwrap, never be wrapped, destroyed after the one unwrap.
 */
export function importEphemeralTemplate(): pk.Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    { type: pk.CKA_WRAP_WITH_TRUSTED, value: true },
    { type: pk.CKA_UNWRAP, value: true },
  ];
}

/** CKA_CLASS of each part of a key. */
export const CLASS_OF: Record<Part, number> = { secret: pk.CKO_SECRET_KEY, private: pk.CKO_PRIVATE_KEY, public: pk.CKO_PUBLIC_KEY };

/** C_FindObjectsInit template for one part of a key: its CKA_ID and CKA_CLASS. */
export function findTemplate(id: string, part: Part): pk.Template {
  return [
    { type: pk.CKA_ID, value: Buffer.from(id, "utf8") },
    { type: pk.CKA_CLASS, value: CLASS_OF[part] },
  ];
}

/** C_FindObjectsInit template matching every object the session can see (the inventory). */
export function everyObjectTemplate(): pk.Template {
  return [];
}

/** C_GetAttributeValue query: CKA_LABEL, CKA_ID and CKA_CLASS (what the inventory reads of each object). */
export function objectInfoQuery(): pk.Template {
  return [{ type: pk.CKA_LABEL }, { type: pk.CKA_ID }, { type: pk.CKA_CLASS }];
}

/** C_GetAttributeValue query: CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED (whether a key can be wrapped, and under what). */
export function wrapGuardQuery(): pk.Template {
  return [{ type: pk.CKA_EXTRACTABLE }, { type: pk.CKA_WRAP_WITH_TRUSTED }];
}

/** C_GetAttributeValue query: an RSA public key's CKA_MODULUS and CKA_PUBLIC_EXPONENT. */
export function rsaPublicQuery(): pk.Template {
  return [{ type: pk.CKA_MODULUS }, { type: pk.CKA_PUBLIC_EXPONENT }];
}

/** C_GetAttributeValue query: an EC or EdDSA public key's CKA_EC_POINT. */
export function ecPointQuery(): pk.Template {
  return [{ type: pk.CKA_EC_POINT }];
}

/** C_CopyObject template of a crypto call's session-object copy of a token key (CKA_TOKEN=false, all else as the original). */
export function sessionCopyTemplate(): pk.Template {
  return [{ type: pk.CKA_TOKEN, value: false }];
}

/** C_SetAttributeValue template clearing CKA_EXTRACTABLE (PKCS#11 allows true → false only). */
export function unextractableTemplate(): pk.Template {
  return [{ type: pk.CKA_EXTRACTABLE, value: false }];
}

/** C_CopyObject template turning a transient key the device will not wrap into its kept form (CKA_EXTRACTABLE=false). */
export function keptCopyTemplate(token: boolean): pk.Template {
  return [
    { type: pk.CKA_TOKEN, value: token },
    { type: pk.CKA_EXTRACTABLE, value: false },
  ];
}

/** An RSA key as JWK members (base64url), for the OAEP probe's throw-away key pair. */
export interface RsaJwkParts {
  n?: string;
  e?: string;
  d?: string;
  p?: string;
  q?: string;
  dp?: string;
  dq?: string;
  qi?: string;
}

const b64u = (x: string | undefined) => Buffer.from(x!, "base64url");

/** The OAEP probe's public key: a session object that can only encrypt. */
export function probeRsaPublicTemplate(jwk: RsaJwkParts): pk.Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_ENCRYPT, value: true },
    { type: pk.CKA_MODULUS, value: b64u(jwk.n) },
    { type: pk.CKA_PUBLIC_EXPONENT, value: b64u(jwk.e) },
  ];
}

/** The OAEP probe's private key, made on the host for the purpose: a sensitive session object that can only decrypt. */
export function probeRsaPrivateTemplate(jwk: RsaJwkParts): pk.Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_DECRYPT, value: true },
    { type: pk.CKA_MODULUS, value: b64u(jwk.n) },
    { type: pk.CKA_PUBLIC_EXPONENT, value: b64u(jwk.e) },
    { type: pk.CKA_PRIVATE_EXPONENT, value: b64u(jwk.d) },
    { type: pk.CKA_PRIME_1, value: b64u(jwk.p) },
    { type: pk.CKA_PRIME_2, value: b64u(jwk.q) },
    { type: pk.CKA_EXPONENT_1, value: b64u(jwk.dp) },
    { type: pk.CKA_EXPONENT_2, value: b64u(jwk.dq) },
    { type: pk.CKA_COEFFICIENT, value: b64u(jwk.qi) },
  ];
}

/**
 * A joiner's transport public key as the security officer places it in this token: a trusted
 * (CKA_TRUSTED) RSA token object that can only wrap, so the domain key (CKA_WRAP_WITH_TRUSTED) can
 * be wrapped under it and under nothing untrusted. `n` and `e` are base64url (JWK).
 */
export function trustedTransportKeyTemplate(id: string, n: string, e: string): pk.Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
    { type: pk.CKA_TOKEN, value: true },
    { type: pk.CKA_PRIVATE, value: false },
    { type: pk.CKA_TRUSTED, value: true },
    { type: pk.CKA_WRAP, value: true },
    { type: pk.CKA_ENCRYPT, value: false },
    { type: pk.CKA_VERIFY, value: false },
    ...idAttrs(id),
    { type: pk.CKA_MODULUS, value: Buffer.from(n, "base64url") },
    { type: pk.CKA_PUBLIC_EXPONENT, value: Buffer.from(e, "base64url") },
  ];
}
