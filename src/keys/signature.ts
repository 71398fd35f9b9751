import { invalid } from "../errors";

/**
 * ECDSA signature encodings: PKCS#11 returns r ‖ s (IEEE P1363); OpenSSL and X.509 use the DER
 * SEQUENCE { INTEGER r, INTEGER s }. Pure functions, strict on input.
 */
function derInt(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  let v = b.subarray(i);
  if (v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return Buffer.concat([Buffer.from([0x02]), derLen(v.length), v]);
}

function derLen(n: number): Buffer {
  return n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
}

/** r ‖ s → DER. */
export function rawToDer(raw: Buffer): Buffer {
  const n = raw.length / 2;
  const body = Buffer.concat([derInt(raw.subarray(0, n)), derInt(raw.subarray(n))]);
  return Buffer.concat([Buffer.from([0x30]), derLen(body.length), body]);
}

/**
 * DER → r ‖ s, each left-padded to `size` bytes. Returns undefined for anything that is not a
 * strict DER encoding of two positive integers that fit (BER variants are refused, as Wycheproof
 * expects).
 */
export function derToRaw(der: Buffer, size: number): Buffer | undefined {
  let off = 0;
  const readLen = (): number | undefined => {
    const first = der[off++];
    if (first === undefined) return undefined;
    if (first < 0x80) return first;
    if (first === 0x81) {
      const l = der[off++];
      return l !== undefined && l >= 0x80 ? l : undefined;
    }
    if (first === 0x82) {
      if (off + 2 > der.length) return undefined;
      const l = (der[off]! << 8) | der[off + 1]!;
      off += 2;
      return l >= 0x100 ? l : undefined;
    }
    return undefined;
  };
  if (der[off++] !== 0x30) return undefined;
  const seqLen = readLen();
  if (seqLen === undefined || off + seqLen !== der.length) return undefined;
  const ints: Buffer[] = [];
  for (let k = 0; k < 2; k++) {
    if (der[off++] !== 0x02) return undefined;
    const l = readLen();
    if (l === undefined || l === 0 || off + l > der.length) return undefined;
    const v = der.subarray(off, off + l);
    off += l;
    if (v[0]! & 0x80) return undefined; // negative
    if (v.length > 1 && v[0] === 0 && !(v[1]! & 0x80)) return undefined; // non-minimal
    const stripped = v[0] === 0 ? v.subarray(1) : v;
    if (stripped.length > size) return undefined;
    ints.push(Buffer.concat([Buffer.alloc(size - stripped.length), stripped]));
  }
  if (off !== der.length) return undefined;
  return Buffer.concat(ints);
}

/** Throws INVALID_ARGUMENT unless `b` is empty-free bytes of the expected length. */
export function requireLength(name: string, b: Buffer, lengths: number[]): void {
  if (!lengths.includes(b.length)) throw invalid(`${name} must be ${lengths.join(" or ")} bytes; got ${b.length}`);
}
