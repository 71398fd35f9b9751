/**
 * Shared fixtures of the envelope unit tests (envelope.test.ts, envelope-cache.test.ts): a fake
 * data-key source, deterministic bytes, stream helpers and an independent reader of the format.
 */
import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { Readable, type Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { expect } from "vitest";
import { GrpcStatus, HsmClientError, KeySpec, type DataKeySource, type DecryptDataKeyRequest, type GenerateDataKeyRequest } from "../../src/sdk";

// The envelope format and the data-key cache against a fake data-key source: an in-memory "KMS" that
// wraps data keys the way the service does (AES-GCM under a per-key KEK, the encryption context as
// AAD), counts its calls, and refuses unknown keys (NOT_FOUND) and bad blobs (INVALID_ARGUMENT).

/** The AAD the fake service binds a wrapped data key to: the context as sorted JSON. */
export function ctxAad(ctx: Record<string, string> = {}): Buffer {
  return Buffer.from(JSON.stringify(Object.entries(ctx).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}

/** An in-memory data-key source that wraps data keys as the service does and counts its calls. */
export class FakeKms implements DataKeySource {
  readonly keks = new Map<string, Buffer>();
  generated = 0;
  unwrapped = 0;
  /** Every data key handed out, by wrapped key (base64): the test's side channel. */
  readonly dataKeys = new Map<string, Buffer>();

  constructor(...ids: string[]) {
    for (const id of ids.length ? ids : ["kek-1"]) this.keks.set(id, randomBytes(32));
  }

  private kek(id: string | undefined): Buffer {
    const k = this.keks.get(id ?? "");
    if (!k) throw new HsmClientError(GrpcStatus.NOT_FOUND, `key ${id} not found`);
    return k;
  }

  async generateDataKey(req: Partial<GenerateDataKeyRequest>) {
    const kek = this.kek(req.keyId);
    if (req.spec !== KeySpec.KEY_SPEC_AES_256) throw new HsmClientError(GrpcStatus.INVALID_ARGUMENT, "the envelope asks for AES-256");
    this.generated++;
    const dk = randomBytes(32);
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", kek, iv);
    c.setAAD(ctxAad(req.encryptionContext));
    const wrapped = Buffer.concat([Buffer.from("HDK1"), iv, c.update(dk), c.final(), c.getAuthTag()]);
    this.dataKeys.set(wrapped.toString("base64"), Buffer.from(dk));
    return { keyId: req.keyId!, keyVersion: 7, spec: KeySpec.KEY_SPEC_AES_256, plaintextDataKey: dk, wrappedDataKey: wrapped };
  }

  async decryptDataKey(req: Partial<DecryptDataKeyRequest>) {
    const kek = this.kek(req.keyId);
    this.unwrapped++;
    const w = Buffer.from(req.wrappedDataKey ?? []);
    try {
      if (w.length !== 64 || !w.subarray(0, 4).equals(Buffer.from("HDK1"))) throw new Error("format");
      const d = createDecipheriv("aes-256-gcm", kek, w.subarray(4, 16));
      d.setAAD(ctxAad(req.encryptionContext));
      d.setAuthTag(w.subarray(48));
      const dk = Buffer.concat([d.update(w.subarray(16, 48)), d.final()]);
      return { keyId: req.keyId!, keyVersion: 7, plaintextDataKey: dk };
    } catch {
      throw new HsmClientError(GrpcStatus.INVALID_ARGUMENT, "wrapped_data_key does not open under this key with this encryption context");
    }
  }
}

/** Deterministic bytes (so failures are reproducible). */
export function bytes(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash("sha256").update(`seed-${seed}`).digest();
  for (let i = 0; i < n; i += 32) {
    block.copy(out, i, 0, Math.min(32, n - i));
    block = createHash("sha256").update(block).digest();
  }
  return out;
}

/** The HsmClientError `p` rejects with (fails the test if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HsmClientError);
    return e as HsmClientError;
  }
  throw new Error("expected a rejection");
}

/** Runs `chunks` through a Transform and collects what comes out. */
export async function through(t: Transform, chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), t, async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) out.push(c);
  });
  return Buffer.concat(out);
}

/** Splits `b` into pieces of pseudo-random sizes from 1 to `max` bytes. */
export function chop(b: Buffer, max: number, seed = 1): Buffer[] {
  const out: Buffer[] = [];
  let x = seed;
  for (let i = 0; i < b.length; ) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const n = 1 + (x % max);
    out.push(b.subarray(i, i + n));
    i += n;
  }
  return out;
}

// ---- an independent reader of the documented format (docs/ENVELOPE.md), sharing no code with src ----

/** An envelope header as the hand decoder reads it. */
export interface HandHeader {
  version: number;
  algorithm: number;
  messageId: Buffer;
  frameSize: number;
  keyId: string;
  keyVersion: number;
  wrapped: Buffer;
  context: Record<string, string>;
  commitment: Buffer;
  tag: Buffer;
  length: number;
  /** Byte ranges [start, end) of the fields, for the bit-flip test. */
  fields: Record<string, [number, number]>;
}

/** Decodes a message's header by hand, from the documented layout. */
export function handHeader(m: Buffer): HandHeader {
  const fields: Record<string, [number, number]> = { magic: [0, 4], version: [4, 5], algorithm: [5, 6], messageId: [6, 38], frameSize: [38, 42] };
  let p = 42;
  const kLen = m.readUInt16BE(p);
  fields.keyId = [p, p + 2 + kLen];
  const keyId = m.toString("utf8", p + 2, p + 2 + kLen);
  p += 2 + kLen;
  const keyVersion = m.readUInt32BE(p);
  p += 4;
  const wLen = m.readUInt16BE(p);
  const wrapped = m.subarray(p + 2, p + 2 + wLen);
  fields.wrapped = [p, p + 2 + wLen];
  p += 2 + wLen;
  const start = p;
  const count = m.readUInt16BE(p);
  p += 2;
  const context: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    const kl = m.readUInt16BE(p);
    const k = m.toString("utf8", p + 2, p + 2 + kl);
    p += 2 + kl;
    const vl = m.readUInt16BE(p);
    context[k] = m.toString("utf8", p + 2, p + 2 + vl);
    p += 2 + vl;
  }
  fields.context = [start, p];
  fields.commitment = [p, p + 32];
  fields.tag = [p + 32, p + 48];
  return {
    version: m[4]!,
    algorithm: m[5]!,
    messageId: m.subarray(6, 38),
    frameSize: m.readUInt32BE(38),
    keyId,
    keyVersion,
    wrapped,
    context,
    commitment: m.subarray(p, p + 32),
    tag: m.subarray(p + 32, p + 48),
    length: p + 48,
    fields,
  };
}

/** Decrypts a whole message by hand with Node's crypto and the documented layout. */
export function handDecrypt(m: Buffer, dataKey: Buffer): { header: HandHeader; frames: Array<{ seq: number; flags: number; plaintext: Buffer; offset: number }> } {
  const h = handHeader(m);
  expect(m.subarray(0, 4).toString("ascii")).toBe("HSME");
  expect([h.version, h.algorithm]).toEqual([1, 1]);
  const key = Buffer.from(hkdfSync("sha256", dataKey, h.messageId, "HSME v1 AES-256-GCM message key", 32));
  expect(Buffer.from(hkdfSync("sha256", dataKey, h.messageId, "HSME v1 key commitment", 32)).equals(h.commitment)).toBe(true);
  const ht = createDecipheriv("aes-256-gcm", key, Buffer.alloc(12));
  ht.setAAD(m.subarray(0, h.length - 16));
  ht.setAuthTag(h.tag);
  ht.final();
  const frames = [];
  let p = h.length;
  for (;;) {
    const seq = m.readUInt32BE(p);
    const flags = m[p + 4]!;
    const len = m.readUInt32BE(p + 5);
    const iv = Buffer.alloc(12);
    iv.writeUInt32BE(seq, 8);
    const aad = Buffer.alloc(41);
    h.messageId.copy(aad);
    aad.writeUInt32BE(seq, 32);
    aad[36] = flags;
    aad.writeUInt32BE(len, 37);
    const d = createDecipheriv("aes-256-gcm", key, iv);
    d.setAAD(aad);
    d.setAuthTag(m.subarray(p + 9 + len, p + 9 + len + 16));
    frames.push({ seq, flags, plaintext: Buffer.concat([d.update(m.subarray(p + 9, p + 9 + len)), d.final()]), offset: p });
    p += 9 + len + 16;
    if (flags & 1) break;
  }
  expect(p).toBe(m.length);
  return { header: h, frames };
}

/** The key id and encryption context most cases use. */
export const KEY = "kek-1";
export const CTX = { tenant: "acme", purpose: "unit" };
