import { createPublicKey, type JsonWebKey } from "node:crypto";
import { CURVE_BYTES, CURVE_OID, ED25519_OID } from "./constants";
import type { Curve, KeyAlgorithm } from "./types";
import { invalid } from "../errors";

/** DER OCTET STRING around `content` (CKA_EC_POINT is an OCTET STRING holding the point). */
export function derOctetString(content: Buffer): Buffer {
  const len = content.length;
  const head = len < 0x80 ? Buffer.from([0x04, len]) : len < 0x100 ? Buffer.from([0x04, 0x81, len]) : Buffer.from([0x04, 0x82, len >> 8, len & 0xff]);
  return Buffer.concat([head, content]);
}

/** Unwraps a DER OCTET STRING if `buf` is one whose length matches; otherwise returns it unchanged. */
export function unwrapOctetString(buf: Buffer): Buffer {
  if (buf[0] !== 0x04 || buf.length < 2) return buf;
  let len = buf[1]!;
  let off = 2;
  if (len === 0x81) {
    len = buf[2]!;
    off = 3;
  } else if (len === 0x82) {
    len = (buf[2]! << 8) | buf[3]!;
    off = 4;
  }
  return off + len === buf.length ? buf.subarray(off) : buf;
}

const JWK_CRV: Record<Curve, string> = { "P-256": "P-256", "P-384": "P-384", "P-521": "P-521", secp256k1: "secp256k1" };

function b64u(b: Buffer): string {
  return b.toString("base64url");
}

function leftPad(b: Buffer, n: number): Buffer {
  return b.length >= n ? b : Buffer.concat([Buffer.alloc(n - b.length), b]);
}

/** SPKI DER from the PKCS#11 attributes of a public key. Public data only. */
export function spkiFromAttributes(alg: KeyAlgorithm, attrs: { modulus?: Buffer; exponent?: Buffer; ecPoint?: Buffer }): Buffer {
  let jwk: JsonWebKey;
  if (alg.type === "rsa") {
    jwk = { kty: "RSA", n: b64u(attrs.modulus!), e: b64u(attrs.exponent!) };
  } else if (alg.type === "ec") {
    const pt = unwrapOctetString(attrs.ecPoint!);
    const n = CURVE_BYTES[alg.curve];
    if (pt[0] !== 0x04 || pt.length !== 1 + 2 * n) throw new Error("unexpected EC point encoding from the device");
    jwk = { kty: "EC", crv: JWK_CRV[alg.curve], x: b64u(pt.subarray(1, 1 + n)), y: b64u(pt.subarray(1 + n)) };
  } else if (alg.type === "ed25519") {
    const pt = unwrapOctetString(attrs.ecPoint!);
    jwk = { kty: "OKP", crv: "Ed25519", x: b64u(pt) };
  } else {
    throw new Error(`no public key for ${alg.type}`);
  }
  return createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "der" });
}

/** What the device needs to create a public key object from an SPKI, and the algorithm it denotes. */
export interface PublicKeyParts {
  alg: KeyAlgorithm;
  modulus?: Buffer;
  exponent?: Buffer;
  /** Uncompressed point (EC) or 32-byte key (Ed25519), without the OCTET STRING wrapper. */
  point?: Buffer;
  ecParams?: Buffer;
}

/** Parses an SPKI (DER) into the parts a PKCS#11 public key object needs; INVALID_ARGUMENT when it is not one hsmd supports. */
export function partsFromSpki(spki: Buffer): PublicKeyParts {
  let jwk: JsonWebKey;
  try {
    jwk = createPublicKey({ key: spki, format: "der", type: "spki" }).export({ format: "jwk" });
  } catch {
    throw invalid("public key is not a valid SubjectPublicKeyInfo (DER)");
  }
  if (jwk.kty === "RSA") {
    const modulus = Buffer.from(jwk.n!, "base64url");
    const bits = modulus.length * 8;
    if (bits !== 2048 && bits !== 3072 && bits !== 4096) throw invalid(`RSA public key of ${bits} bits: hsmd supports 2048, 3072 and 4096`);
    return { alg: { type: "rsa", bits }, modulus, exponent: Buffer.from(jwk.e!, "base64url") };
  }
  if (jwk.kty === "EC") {
    const curve = (Object.keys(JWK_CRV) as Curve[]).find((c) => JWK_CRV[c] === jwk.crv);
    if (!curve) throw invalid(`EC curve ${jwk.crv} is not supported (P-256, P-384, P-521, secp256k1)`);
    const n = CURVE_BYTES[curve];
    const point = Buffer.concat([Buffer.from([4]), leftPad(Buffer.from(jwk.x!, "base64url"), n), leftPad(Buffer.from(jwk.y!, "base64url"), n)]);
    return { alg: { type: "ec", curve }, point, ecParams: CURVE_OID[curve] };
  }
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") {
    return { alg: { type: "ed25519" }, point: Buffer.from(jwk.x!, "base64url"), ecParams: ED25519_OID };
  }
  throw invalid(`public key type ${jwk.kty}${jwk.crv ? " " + jwk.crv : ""} is not supported`);
}
