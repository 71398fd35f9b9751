import * as pk from "pkcs11js";
import { CKK_EC_EDWARDS, CURVE_OID, ED25519_OID } from "./constants";
import type { KeyAlgorithm, Usage } from "./types";

/**
 * Turns intent (algorithm, usages, persistence) into PKCS#11 attribute templates, with secure
 * defaults in one place (after node-webcrypto-p11's TemplateBuilder):
 * - every secret and private key is CKA_SENSITIVE and CKA_PRIVATE: its value never leaves the HSM in
 *   the clear;
 * - CKA_EXTRACTABLE is true only so that the key can be wrapped under the domain key for its record
 *   (and, for exportable keys, under a caller's key: the service checks that, not the device);
 * - each usage flag is set explicitly, true or false, so no device default grants more.
 */
export interface TemplateIntent {
  id: string;
  alg: KeyAlgorithm;
  usages: readonly Usage[];
  /** CKA_TOKEN: persistent token object (true) or session object (false). */
  token: boolean;
  extractable: boolean;
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

/** Template for a secret key (generate, unwrap, derive). */
export function secretTemplate(t: TemplateIntent, withLength: boolean): pk.Template {
  const tpl: pk.Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) },
    { type: pk.CKA_TOKEN, value: t.token },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: t.extractable },
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
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) },
    { type: pk.CKA_TOKEN, value: t.token },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: t.extractable },
    ...idAttrs(t.id),
    ...flags(PRIVATE_FLAGS, t.usages),
  ];
}

/** Template for a public key (generate: without key parts; create: with them). */
export function publicTemplate(t: TemplateIntent, parts?: { modulus?: Buffer; exponent?: Buffer; ecPointDer?: Buffer }): pk.Template {
  const tpl: pk.Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType(t.alg) },
    { type: pk.CKA_TOKEN, value: t.token },
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
