import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { invalid } from "../errors";
import type { OaepHash } from "./types";

/**
 * EME-OAEP encoding and decoding (RFC 8017 §7.1), for devices that do RSA in the HSM
 * (CKM_RSA_X_509) but not OAEP with the wanted hash. Only message bytes pass through here, never a
 * key: the private-key operation stays in the device. `label` is the OAEP label L (empty by
 * default); only its hash enters the encoding.
 */
const HLEN: Record<OaepHash, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

function mgf1(hash: OaepHash, seed: Buffer, len: number): Buffer {
  const out = Buffer.alloc(len);
  let off = 0;
  for (let counter = 0; off < len; counter++) {
    const c = Buffer.alloc(4);
    c.writeUInt32BE(counter);
    const d = createHash(hash).update(seed).update(c).digest();
    d.copy(out, off);
    off += d.length;
  }
  return out;
}

function xorInto(a: Buffer, b: Buffer): void {
  for (let i = 0; i < a.length; i++) a[i]! ^= b[i]!;
}

/** Largest message for a k-byte modulus. */
export function oaepMaxMessage(k: number, hash: OaepHash): number {
  return k - 2 * HLEN[hash] - 2;
}

/** EM (k bytes) for message `m` under label `label`. */
export function oaepEncode(m: Buffer, k: number, hash: OaepHash, label: Buffer = Buffer.alloc(0)): Buffer {
  const h = HLEN[hash];
  if (m.length > oaepMaxMessage(k, hash)) throw invalid(`plaintext is ${m.length} bytes; RSA-OAEP with this key and hash takes at most ${oaepMaxMessage(k, hash)}`);
  const lHash = createHash(hash).update(label).digest();
  const db = Buffer.concat([lHash, Buffer.alloc(k - m.length - 2 * h - 2), Buffer.from([1]), m]);
  const seed = randomBytes(h);
  xorInto(db, mgf1(hash, seed, db.length));
  xorInto(seed, mgf1(hash, db, h));
  return Buffer.concat([Buffer.from([0]), seed, db]);
}

/**
 * Message from EM, or undefined when EM is not a valid encoding. Every check runs before the one
 * verdict, so the failure reveals nothing about which part was wrong (Manger's attack).
 */
export function oaepDecode(em: Buffer, k: number, hash: OaepHash, label: Buffer = Buffer.alloc(0)): Buffer | undefined {
  const h = HLEN[hash];
  if (k < 2 * h + 2) return undefined;
  // The device returns the integer's bytes; left-pad to k.
  const full = em.length === k ? Buffer.from(em) : em.length < k ? Buffer.concat([Buffer.alloc(k - em.length), em]) : undefined;
  if (!full) return undefined;
  const y = full[0]!;
  const seed = full.subarray(1, 1 + h);
  const db = full.subarray(1 + h);
  xorInto(seed, mgf1(hash, db, h));
  xorInto(db, mgf1(hash, seed, db.length));
  const lHash = createHash(hash).update(label).digest();
  let bad = timingSafeEqual(db.subarray(0, h), lHash) ? 0 : 1;
  bad |= y;
  // Find the 0x01 separator without branching on secret data.
  let idx = 0;
  let found = 0;
  let junk = 0;
  for (let i = h; i < db.length; i++) {
    const b = db[i]!;
    const isOne = b === 1 ? 1 : 0;
    const isZero = b === 0 ? 1 : 0;
    const first = isOne & (found ^ 1);
    idx = first ? i : idx;
    junk |= (found ^ 1) & (isZero ^ 1) & (isOne ^ 1);
    found |= isOne;
  }
  bad |= junk | (found ^ 1);
  return bad ? undefined : Buffer.from(db.subarray(idx + 1));
}
