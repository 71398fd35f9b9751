import { createCipheriv, createDecipheriv, createHash, hkdfSync, randomBytes } from "node:crypto";
import { Readable, type Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, expect, it } from "vitest";
import {
  createDecryptStream,
  createEncryptStream,
  DataKeyCache,
  decryptEnvelope,
  encryptEnvelope,
  GrpcStatus,
  HsmClientError,
  KeySpec,
  readEnvelopeHeader,
  type DataKeySource,
  type DecryptDataKeyRequest,
  type GenerateDataKeyRequest,
} from "../../src/sdk";
import { MessageEncoder } from "../../src/sdk/envelope-codec";

// The envelope format and the data-key cache against a fake data-key source: an in-memory "KMS" that
// wraps data keys the way the service does (AES-GCM under a per-key KEK, the encryption context as
// AAD), counts its calls, and refuses unknown keys (NOT_FOUND) and bad blobs (INVALID_ARGUMENT).

function ctxAad(ctx: Record<string, string> = {}): Buffer {
  return Buffer.from(JSON.stringify(Object.entries(ctx).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
}

class FakeKms implements DataKeySource {
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
function bytes(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let block = createHash("sha256").update(`seed-${seed}`).digest();
  for (let i = 0; i < n; i += 32) {
    block.copy(out, i, 0, Math.min(32, n - i));
    block = createHash("sha256").update(block).digest();
  }
  return out;
}

async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HsmClientError);
    return e as HsmClientError;
  }
  throw new Error("expected a rejection");
}

/** Runs `chunks` through a Transform and collects what comes out. */
async function through(t: Transform, chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), t, async function* (src: AsyncIterable<Buffer>) {
    for await (const c of src) out.push(c);
  });
  return Buffer.concat(out);
}

/** Splits `b` into pieces of pseudo-random sizes from 1 to `max` bytes. */
function chop(b: Buffer, max: number, seed = 1): Buffer[] {
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

interface HandHeader {
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

function handHeader(m: Buffer): HandHeader {
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
function handDecrypt(m: Buffer, dataKey: Buffer): { header: HandHeader; frames: Array<{ seq: number; flags: number; plaintext: Buffer; offset: number }> } {
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

const KEY = "kek-1";
const CTX = { tenant: "acme", purpose: "unit" };

describe("envelope: round trips", () => {
  const F = 16;
  for (const n of [0, 1, F - 1, F, F + 1, 2 * F, 3 * F + 5]) {
    it(`${n} bytes with frame size ${F}: buffer and stream forms agree with the documented layout`, async () => {
      const kms = new FakeKms();
      const pt = bytes(n, n);
      const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: CTX, frameSize: F }, pt);
      const frames = Math.max(1, Math.ceil(n / F));
      const h = handHeader(m);
      expect(m.length).toBe(h.length + frames * 25 + n);

      const r = await decryptEnvelope(kms, m, { expectedContext: CTX });
      expect(r.plaintext.equals(pt)).toBe(true);
      expect(r).toMatchObject({ keyId: KEY, keyVersion: 7, encryptionContext: CTX });

      // By hand, with the data key the fake made: sequence numbers 1…n, only the last one final.
      const hand = handDecrypt(m, kms.dataKeys.get(h.wrapped.toString("base64"))!);
      expect(hand.frames.map((f) => f.seq)).toEqual(Array.from({ length: frames }, (_, i) => i + 1));
      expect(hand.frames.map((f) => f.flags)).toEqual(Array.from({ length: frames }, (_, i) => (i === frames - 1 ? 1 : 0)));
      expect(Buffer.concat(hand.frames.map((f) => f.plaintext)).equals(pt)).toBe(true);
      expect(hand.header).toMatchObject({ frameSize: F, keyId: KEY, keyVersion: 7, context: CTX });

      // Streams: written in odd pieces, read in odd pieces, both directions mixed with the buffer form.
      const streamed = await through(createEncryptStream(kms, { keyId: KEY, encryptionContext: CTX, frameSize: F }), chop(pt, 7, n + 1));
      expect(streamed.length).toBe(m.length);
      expect((await decryptEnvelope(kms, streamed)).plaintext.equals(pt)).toBe(true);
      expect((await through(createDecryptStream(kms, { expectedContext: CTX }), chop(m, 5, n + 2))).equals(pt)).toBe(true);
      expect((await through(createDecryptStream(kms), [m])).equals(pt)).toBe(true);
    });
  }

  for (const n of [0, 1, 65_536, 65_537, 200_000]) {
    it(`${n} bytes with the default 64 KiB frames`, async () => {
      const kms = new FakeKms();
      const pt = bytes(n, 9);
      const m = await encryptEnvelope(kms, { keyId: KEY }, pt);
      expect(readEnvelopeHeader(m)).toMatchObject({ keyId: KEY, keyVersion: 7, frameSize: 65_536, encryptionContext: {} });
      expect(m.length).toBe(readEnvelopeHeader(m).headerLength + Math.max(1, Math.ceil(n / 65_536)) * 25 + n);
      expect((await decryptEnvelope(kms, m)).plaintext.equals(pt)).toBe(true);
      expect((await through(createDecryptStream(kms), chop(m, 30_000, 3))).equals(pt)).toBe(true);
      expect(kms.generated).toBe(1);
      expect(kms.unwrapped).toBe(2);
    });
  }

  it("a fresh message id and a fresh data key for every message; the plaintext never appears", async () => {
    const kms = new FakeKms();
    const pt = Buffer.alloc(64, 0x41);
    const a = await encryptEnvelope(kms, { keyId: KEY, frameSize: 16 }, pt);
    const b = await encryptEnvelope(kms, { keyId: KEY, frameSize: 16 }, pt);
    expect(handHeader(a).messageId.equals(handHeader(b).messageId)).toBe(false);
    expect(handHeader(a).wrapped.equals(handHeader(b).wrapped)).toBe(false);
    expect(a.includes(Buffer.alloc(16, 0x41))).toBe(false);
    expect(kms.generated).toBe(2);
  });

  it("the context is sorted by key bytes in the header, whatever order it was given in", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: { z: "1", a: "2", "é": "3", B: "4" } }, Buffer.from("x"));
    const h = handHeader(m);
    expect(Object.keys(h.context)).toEqual(["B", "a", "z", "é"]);
    expect((await decryptEnvelope(kms, m)).encryptionContext).toEqual({ z: "1", a: "2", "é": "3", B: "4" });
  });

  it("Uint8Array input, and a stream fed one large chunk", async () => {
    const kms = new FakeKms();
    const pt = new Uint8Array(bytes(1000, 4));
    const m = await encryptEnvelope(kms, { keyId: KEY, frameSize: 100 }, pt);
    expect((await decryptEnvelope(kms, new Uint8Array(m))).plaintext.equals(Buffer.from(pt))).toBe(true);
    const s = await through(createEncryptStream(kms, { keyId: KEY, frameSize: 100 }), [Buffer.from(pt)]);
    expect((await decryptEnvelope(kms, s)).plaintext.equals(Buffer.from(pt))).toBe(true);
  });
});

describe("envelope: known answer (docs/ENVELOPE.md)", () => {
  // Data key 00 01 … 1f, message id 20 21 … 3f, key "kek-1" version 7, a stand-in wrapped key
  // "HDK1" || 60 × aa, context { tenant: "acme" }, frame size 4, plaintext "hello" (frames "hell", "o").
  const KAT = "48534d450101202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f0000000400056b656b2d3100000007004048444b31aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0001000674656e616e74000461636d6549df0abdc69b2b5f915f1657a93139c312e5048e1fa700bc82dd47e169c2904205d68d964cc844882d97f7f82518ad250000000100000000042cc5e3488d962dcdaef911defb374d403357219f000000020100000001d2d3ccffe5a4e3f99e0520aeff3ced6948";
  const dataKey = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  const messageId = Buffer.from(Array.from({ length: 32 }, (_, i) => 0x20 + i));
  const wrapped = Buffer.concat([Buffer.from("HDK1"), Buffer.alloc(60, 0xaa)]);

  it("the writer produces exactly the documented vector", () => {
    const e = new MessageEncoder({ frameSize: 4, keyId: "kek-1", keyVersion: 7, wrappedDataKey: wrapped, encryptionContext: { tenant: "acme" } }, dataKey, messageId);
    const m = Buffer.concat([e.header, e.frame([Buffer.from("hell")], 4, false), e.frame([Buffer.from("o")], 1, true)]);
    expect(m.toString("hex")).toBe(KAT);
  });

  it("the reader opens the vector, and the hand decoder agrees", async () => {
    const source: DataKeySource = {
      generateDataKey: async () => {
        throw new Error("not used");
      },
      decryptDataKey: async (r) => {
        expect(r).toEqual({ keyId: "kek-1", wrappedDataKey: wrapped, encryptionContext: { tenant: "acme" } });
        return { keyId: "kek-1", keyVersion: 7, plaintextDataKey: Buffer.from(dataKey) };
      },
    };
    const r = await decryptEnvelope(source, Buffer.from(KAT, "hex"));
    expect(r).toEqual({ plaintext: Buffer.from("hello"), keyId: "kek-1", keyVersion: 7, encryptionContext: { tenant: "acme" } });
    expect(Buffer.concat(handDecrypt(Buffer.from(KAT, "hex"), dataKey).frames.map((f) => f.plaintext)).toString()).toBe("hello");
  });
});

describe("envelope: streams and backpressure", () => {
  /** A lazy source of `total` bytes in 1 MiB chunks that counts what has been pulled from it. */
  function source(total: number) {
    let produced = 0;
    const block = bytes(1 << 20, 3);
    const stream = new Readable({
      highWaterMark: 1 << 20,
      read() {
        if (produced >= total) return void this.push(null);
        produced += block.length;
        this.push(block);
      },
    });
    return { stream, produced: () => produced };
  }
  const turns = async (n: number) => {
    for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
  };

  it("an encrypt stream whose output nobody reads stops pulling its input (bounded buffering)", async () => {
    const kms = new FakeKms();
    const src = source(256 << 20);
    const enc = createEncryptStream(kms, { keyId: KEY });
    src.stream.pipe(enc); // nothing reads enc
    await turns(500);
    expect(src.produced()).toBeGreaterThan(0);
    expect(src.produced()).toBeLessThanOrEqual(8 << 20); // a few chunks of buffers, not 256 MiB
    src.stream.unpipe(enc);
    src.stream.destroy();
    enc.destroy();
  });

  it("a decrypt stream whose output nobody reads stops pulling its input", async () => {
    const kms = new FakeKms();
    const src = source(256 << 20);
    const enc = createEncryptStream(kms, { keyId: KEY });
    const dec = createDecryptStream(kms);
    src.stream.pipe(enc).pipe(dec); // nothing reads dec
    await turns(500);
    expect(src.produced()).toBeGreaterThan(0);
    expect(src.produced()).toBeLessThanOrEqual(12 << 20);
    for (const s of [src.stream, enc, dec]) s.destroy();
  });

  it("a decrypt stream announces the authenticated header, then the plaintext", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: CTX, frameSize: 8 }, Buffer.from("hello, world"));
    const dec = createDecryptStream(kms);
    const seen: unknown[] = [];
    dec.on("header", (h) => seen.push(h));
    expect((await through(dec, chop(m, 3))).toString()).toBe("hello, world");
    expect(seen).toEqual([{ keyId: KEY, keyVersion: 7, encryptionContext: CTX, frameSize: 8 }]);
  });
});

describe("envelope: tampering", () => {
  const F = 16;
  const PT = bytes(40, 77); // frames of 16, 16 and 8 bytes

  it("every single flipped bit of a short message is detected (buffer form and stream form)", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: { a: "b" }, frameSize: F }, PT);
    const [kStart, kEnd] = handHeader(m).fields.keyId!;
    const codes = new Map<string, number>();
    for (let bit = 0; bit < m.length * 8; bit++) {
      const t = Buffer.from(m);
      t[bit >> 3]! ^= 1 << (bit & 7);
      const e = await rejection(decryptEnvelope(kms, t));
      // A different (valid UTF-8) key id names a key the service does not know: NOT_FOUND, from the
      // service. Everything else, including a key id that is no longer UTF-8, is INVALID_ARGUMENT.
      const inKeyId = bit >> 3 >= kStart + 2 && bit >> 3 < kEnd && (bit & 7) !== 7;
      expect(e.code, `bit ${bit}: ${e.message}`).toBe(inKeyId ? GrpcStatus.NOT_FOUND : GrpcStatus.INVALID_ARGUMENT);
      expect(e.message).toMatch(/envelope: /);
      if (bit % 3 === 0) {
        const se = await rejection(through(createDecryptStream(kms), chop(t, 9, bit)));
        expect(se.code).toBe(e.code);
      }
      const key = e.details.replace(/\d+/g, "N");
      codes.set(key, (codes.get(key) ?? 0) + 1);
    }
    // Each part of the message has its own check, and the frames' tags catch every ciphertext bit.
    expect([...codes.keys()].join("\n")).toMatch(/frame N failed authentication/);
    expect([...codes.keys()].join("\n")).toMatch(/the header failed authentication/);
    expect([...codes.keys()].join("\n")).toMatch(/bad magic/);
  });

  it("truncation anywhere (every prefix: inside the header, at each frame boundary, mid-frame) is detected", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, frameSize: F }, PT);
    const h = handHeader(m);
    const boundaries = [h.length, h.length + 41, h.length + 82];
    for (let n = 0; n < m.length; n++) {
      const e = await rejection(decryptEnvelope(kms, m.subarray(0, n)));
      expect(e.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      if (n === 0) expect(e.details).toBe("envelope: message truncated (empty input)");
      else if (n < h.length) expect(e.details).toBe("envelope: message truncated (incomplete header)");
      else if (boundaries.includes(n)) expect(e.details).toBe("envelope: message truncated (no final frame)");
      else expect(e.details).toBe(`envelope: message truncated (no final frame; frame ${boundaries.filter((b) => b < n).length} is cut short)`);
      const se = await rejection(through(createDecryptStream(kms), chop(m.subarray(0, n), 11, n)));
      expect(se.details).toBe(e.details);
    }
  });

  /** The byte ranges of the frames of `m`. */
  function frameRanges(m: Buffer): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (let p = handHeader(m).length; p < m.length; ) {
      const end = p + 9 + m.readUInt32BE(p + 5) + 16;
      out.push([p, end]);
      p = end;
    }
    return out;
  }

  it("reordered, dropped or repeated frames are detected, even with their sequence numbers rewritten", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, frameSize: F }, bytes(4 * F, 5));
    const fr = frameRanges(m);
    expect(fr.length).toBe(4);
    const hdr = m.subarray(0, fr[0]![0]);
    const frame = (i: number) => m.subarray(fr[i]![0], fr[i]![1]);
    const assemble = (order: number[]) => Buffer.concat([hdr, ...order.map(frame)]);

    expect((await rejection(decryptEnvelope(kms, assemble([0, 2, 1, 3])))).details).toBe("envelope: frame 2 is out of order (it carries sequence number 3)");
    expect((await rejection(decryptEnvelope(kms, assemble([0, 2, 3])))).details).toBe("envelope: frame 2 is out of order (it carries sequence number 3)");
    expect((await rejection(decryptEnvelope(kms, assemble([0, 1, 1, 2, 3])))).details).toBe("envelope: frame 3 is out of order (it carries sequence number 2)");
    expect((await rejection(decryptEnvelope(kms, assemble([0, 1, 2, 3, 3])))).details).toBe("envelope: trailing data after the final frame");
    expect((await rejection(decryptEnvelope(kms, Buffer.concat([m, Buffer.from([0])])))).details).toBe("envelope: trailing data after the final frame");

    // Swap frames 2 and 3 and rewrite their sequence numbers so they look in order: the tags catch it.
    const swapped = assemble([0, 2, 1, 3]);
    swapped.writeUInt32BE(2, fr[1]![0]);
    swapped.writeUInt32BE(3, fr[2]![0]);
    expect((await rejection(decryptEnvelope(kms, swapped))).details).toBe("envelope: frame 2 failed authentication");

    // Mark frame 3 final and drop frame 4: the flag is authenticated.
    const cut = assemble([0, 1, 2]);
    cut[fr[2]![0] + 4] = 1;
    expect((await rejection(decryptEnvelope(kms, cut))).details).toBe("envelope: frame 3 failed authentication");
  });

  it("frames swapped between two messages under the same (cached) data key are detected", async () => {
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 60_000, capacity: 10 });
    const a = await encryptEnvelope(kms, { keyId: KEY, frameSize: F, cache }, bytes(3 * F, 1));
    const b = await encryptEnvelope(kms, { keyId: KEY, frameSize: F, cache }, bytes(3 * F, 2));
    expect(kms.generated).toBe(1);
    expect(handHeader(a).wrapped.equals(handHeader(b).wrapped)).toBe(true);
    const fa = frameRanges(a);
    const fb = frameRanges(b);
    const mixed = Buffer.concat([a.subarray(0, fa[1]![0]), b.subarray(fb[1]![0], fb[1]![1]), a.subarray(fa[2]![0])]);
    expect((await rejection(decryptEnvelope(kms, mixed))).details).toBe("envelope: frame 2 failed authentication");
    // A's header with all of B's frames.
    const graft = Buffer.concat([a.subarray(0, fa[0]![0]), b.subarray(fb[0]![0])]);
    expect((await rejection(decryptEnvelope(kms, graft))).details).toBe("envelope: frame 1 failed authentication");
    expect((await decryptEnvelope(kms, a)).plaintext.equals(bytes(3 * F, 1))).toBe(true);
  });

  it("an expected context that does not match is refused before the service is asked", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: { tenant: "acme", file: "a.txt" } }, Buffer.from("hello"));
    const e1 = await rejection(decryptEnvelope(kms, m, { expectedContext: { tenant: "other" } }));
    expect(e1.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(e1.details).toBe('envelope: encryption context mismatch: "tenant" is "acme" in the message, expected "other"');
    const e2 = await rejection(decryptEnvelope(kms, m, { expectedContext: { region: "eu" } }));
    expect(e2.details).toBe('envelope: encryption context mismatch: the message has no "region" (expected "eu")');
    const e3 = await rejection(through(createDecryptStream(kms, { expectedContext: { tenant: "other" } }), [m]));
    expect(e3.details).toBe(e1.details);
    expect(kms.unwrapped).toBe(0);
    // A subset is enough.
    expect((await decryptEnvelope(kms, m, { expectedContext: { tenant: "acme" } })).plaintext.toString()).toBe("hello");
  });

  it("a header whose context was changed (and re-encoded consistently) does not unwrap", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: { tenant: "acme" } }, Buffer.from("hello"));
    const i = m.indexOf(Buffer.from("acme"));
    const t = Buffer.from(m);
    t.write("evil", i);
    const e = await rejection(decryptEnvelope(kms, t, { expectedContext: { tenant: "evil" } }));
    expect(e.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(e.details).toMatch(/^envelope: DecryptDataKey under kek-1 failed: wrapped_data_key does not open/);
  });

  it("garbage, other versions and other algorithms are refused clearly", async () => {
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY }, Buffer.from("x"));
    expect((await rejection(decryptEnvelope(kms, Buffer.from("not an envelope")))).details).toBe('envelope: not an hsmd envelope message (bad magic; expected "HSME")');
    const v2 = Buffer.from(m);
    v2[4] = 2;
    expect((await rejection(decryptEnvelope(kms, v2))).details).toBe("envelope: unsupported message version 2 (this SDK reads version 1)");
    const alg = Buffer.from(m);
    alg[5] = 9;
    expect((await rejection(decryptEnvelope(kms, alg))).details).toBe("envelope: unsupported algorithm suite 0x09");
    const big = Buffer.from(m);
    big.writeUInt32BE(64 * 1024 * 1024, 38);
    expect((await rejection(decryptEnvelope(kms, big))).details).toBe("envelope: frame size 67108864 is outside 1 … 16777216");
    expect(kms.unwrapped).toBe(0);
  });
});

describe("envelope: options", () => {
  const kms = new FakeKms();
  const bad: Array<[string, () => Promise<unknown>, RegExp]> = [
    ["no keyId", () => encryptEnvelope(kms, { keyId: "" }, Buffer.alloc(1)), /keyId is required/],
    ["no options", () => encryptEnvelope(kms, undefined as never, Buffer.alloc(1)), /options/],
    ["frameSize 0", () => encryptEnvelope(kms, { keyId: KEY, frameSize: 0 }, Buffer.alloc(1)), /frameSize must be an integer from 1 to 16777216/],
    ["frameSize 1.5", () => encryptEnvelope(kms, { keyId: KEY, frameSize: 1.5 }, Buffer.alloc(1)), /frameSize/],
    ["frameSize 32 MiB", () => encryptEnvelope(kms, { keyId: KEY, frameSize: 32 << 20 }, Buffer.alloc(1)), /frameSize/],
    ["a number in the context", () => encryptEnvelope(kms, { keyId: KEY, encryptionContext: { n: 1 as never } }, Buffer.alloc(1)), /encryptionContext.n must be a string/],
    ["an empty context key", () => encryptEnvelope(kms, { keyId: KEY, encryptionContext: { "": "x" } }, Buffer.alloc(1)), /keys must not be empty/],
    ["a cache that is not one", () => encryptEnvelope(kms, { keyId: KEY, cache: {} as never }, Buffer.alloc(1)), /cache must be a DataKeyCache/],
    ["a string plaintext", () => encryptEnvelope(kms, { keyId: KEY }, "text" as never), /plaintext must be a Buffer/],
    ["no client", () => encryptEnvelope(null as never, { keyId: KEY }, Buffer.alloc(1)), /client must be an HsmClient/],
    ["a string ciphertext", () => decryptEnvelope(kms, "x" as never), /ciphertext must be a Buffer/],
    ["a bad expected context", () => decryptEnvelope(kms, Buffer.alloc(1), { expectedContext: [] as never }), /expectedContext must be an object/],
    ["cache maxAgeMs 0", async () => new DataKeyCache({ maxAgeMs: 0, capacity: 1 }), /maxAgeMs must be a positive number/],
    ["cache capacity missing", async () => new DataKeyCache({ maxAgeMs: 1 } as never), /capacity must be a positive integer/],
    ["cache maxMessages 0.5", async () => new DataKeyCache({ maxAgeMs: 1, capacity: 1, maxMessages: 0.5 }), /maxMessages must be a positive integer/],
    ["cache maxBytes -1", async () => new DataKeyCache({ maxAgeMs: 1, capacity: 1, maxBytes: -1 }), /maxBytes must be a positive integer/],
    ["stream plaintextLength -1", async () => createEncryptStream(kms, { keyId: KEY, plaintextLength: -1 }), /plaintextLength must be a non-negative integer/],
    ["stream frameSize 0", async () => createEncryptStream(kms, { keyId: KEY, frameSize: 0 }), /frameSize/],
  ];
  for (const [name, call, message] of bad) {
    it(`${name} → INVALID_ARGUMENT`, async () => {
      const e = await rejection(call());
      expect(e.code).toBe(GrpcStatus.INVALID_ARGUMENT);
      expect(e.details).toMatch(/^envelope: /);
      expect(e.details).toMatch(message);
    });
  }

  it("a stream whose input is longer or shorter than its declared plaintextLength fails", async () => {
    const long = await rejection(through(createEncryptStream(kms, { keyId: KEY, plaintextLength: 3 }), [Buffer.from("ab"), Buffer.from("cd")]));
    expect(long.details).toBe("envelope: the input is longer than the declared plaintextLength, 3");
    const short = await rejection(through(createEncryptStream(kms, { keyId: KEY, plaintextLength: 5 }), [Buffer.from("ab")]));
    expect(short.details).toBe("envelope: the input ended after 2 bytes; plaintextLength declared 5");
  });

  it("the service's refusals keep their status (unknown key → NOT_FOUND)", async () => {
    const e = await rejection(encryptEnvelope(kms, { keyId: "nope" }, Buffer.alloc(1)));
    expect(e.code).toBe(GrpcStatus.NOT_FOUND);
    expect(e.details).toBe("envelope: GenerateDataKey under nope failed: key nope not found");
    const s = await rejection(through(createEncryptStream(kms, { keyId: "nope" }), [Buffer.alloc(1)]));
    expect(s.code).toBe(GrpcStatus.NOT_FOUND);
    const m = await encryptEnvelope(kms, { keyId: KEY }, Buffer.alloc(1));
    const other = new FakeKms("kek-1"); // same id, different KEK
    expect((await rejection(decryptEnvelope(other, m))).code).toBe(GrpcStatus.INVALID_ARGUMENT);
  });
});

describe("envelope: data-key cache", () => {
  const wrappedOf = (m: Buffer) => handHeader(m).wrapped.toString("base64");

  it("maxMessages: an entry serves exactly that many messages, then a fresh data key", async () => {
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 60_000, maxMessages: 3, capacity: 10 });
    const ms = [];
    for (let i = 0; i < 7; i++) ms.push(await encryptEnvelope(kms, { keyId: KEY, encryptionContext: CTX, cache }, bytes(10, i)));
    const w = ms.map(wrappedOf);
    expect(kms.generated).toBe(3);
    expect(new Set(w.slice(0, 3)).size).toBe(1);
    expect(new Set(w.slice(3, 6)).size).toBe(1);
    expect(w[3]).not.toBe(w[0]);
    expect(w[6]).not.toBe(w[3]);
    expect(cache.stats).toEqual({ hits: 4, misses: 3, evictions: 2, hitRate: 4 / 7, entries: 1 });
    for (let i = 0; i < 7; i++) expect((await decryptEnvelope(kms, ms[i]!)).plaintext.equals(bytes(10, i))).toBe(true);
  });

  it("maxBytes: an entry serves up to exactly maxBytes plaintext bytes; a larger message bypasses the cache", async () => {
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 60_000, maxBytes: 100, capacity: 10 });
    const enc = (n: number) => encryptEnvelope(kms, { keyId: KEY, cache }, bytes(n)).then(wrappedOf);
    const a = [await enc(60), await enc(40)]; // 100 bytes: exactly the budget
    expect(kms.generated).toBe(1);
    expect(a[0]).toBe(a[1]);
    const b = await enc(1); // 101 would be beyond: fresh key
    expect(kms.generated).toBe(2);
    expect(b).not.toBe(a[0]);
    const big = await enc(101); // alone larger than maxBytes: never cached, the current entry stays
    expect(kms.generated).toBe(3);
    const c = await enc(99); // 1 + 99 = 100: still the second key
    expect(c).toBe(b);
    expect(big).not.toBe(b);
    expect(kms.generated).toBe(3);
    expect(cache.stats).toMatchObject({ hits: 2, misses: 3, entries: 1 });
    // An empty message counts as a message but no bytes.
    expect(await enc(0)).toBe(b); // the entry is full (100 of 100), but 0 more bytes fit: it is reused
  });

  it("maxAgeMs: an entry is used until maxAgeMs after it was fetched, never at or after it (injected clock)", async () => {
    let now = 1_000;
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 500, capacity: 10, now: () => now });
    const enc = () => encryptEnvelope(kms, { keyId: KEY, cache }, Buffer.from("x")).then(wrappedOf);
    const first = await enc();
    now = 1_499;
    expect(await enc()).toBe(first);
    now = 1_500;
    const second = await enc();
    expect(second).not.toBe(first);
    expect(kms.generated).toBe(2);
    now = 1_999;
    expect(await enc()).toBe(second);
    now = 10_000;
    expect(await enc()).not.toBe(second);
    expect(kms.generated).toBe(3);
    expect(cache.stats).toMatchObject({ hits: 2, misses: 3, evictions: 2 });
  });

  it("an expired key is zeroed when it is dropped, and clear() zeroes every key", async () => {
    let now = 0;
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 10, capacity: 10, now: () => now });
    await encryptEnvelope(kms, { keyId: KEY, cache, encryptionContext: { a: "1" } }, Buffer.from("x"));
    // The cache's own copy of the key (reached through its internals: nothing else holds it).
    const held = () => [...(cache as unknown as { entries: Map<string, { material: { dataKey: Buffer } }> }).entries.values()].map((e) => e.material.dataKey);
    const [k1] = held();
    expect(k1!.equals(Buffer.alloc(32))).toBe(false);
    now = 10;
    await encryptEnvelope(kms, { keyId: KEY, cache, encryptionContext: { a: "2" } }, Buffer.from("x"));
    expect(k1!.equals(Buffer.alloc(32))).toBe(true);
    const [k2] = held();
    expect(held().length).toBe(1);
    cache.clear();
    expect(k2!.equals(Buffer.alloc(32))).toBe(true);
    expect(cache.stats.entries).toBe(0);
  });

  it("entries are per key id and per context; capacity evicts the least recently used", async () => {
    const kms = new FakeKms("k1", "k2");
    const cache = new DataKeyCache({ maxAgeMs: 60_000, capacity: 2 });
    const enc = (keyId: string, c: Record<string, string>) => encryptEnvelope(kms, { keyId, encryptionContext: c, cache }, Buffer.from("x")).then(wrappedOf);
    const a = await enc("k1", { t: "a" });
    const b = await enc("k1", { t: "b" });
    expect(a).not.toBe(b);
    expect(await enc("k1", { t: "a" })).toBe(a); // a is now the most recent
    const c = await enc("k2", { t: "a" }); // evicts b
    expect(c).not.toBe(a);
    expect(kms.generated).toBe(3);
    expect(await enc("k1", { t: "a" })).toBe(a);
    expect(await enc("k1", { t: "b" })).not.toBe(b);
    expect(kms.generated).toBe(4);
    expect(cache.stats).toMatchObject({ hits: 2, misses: 4, evictions: 2, entries: 2 });
    // Context order does not matter.
    expect(await enc("k1", { u: "1", v: "2" })).toBe(await enc("k1", { v: "2", u: "1" }));
  });

  it("one cache never hands one client's data key to another client", async () => {
    const kms = new FakeKms();
    // The same backend behind another client object.
    const other: DataKeySource = { generateDataKey: (r) => kms.generateDataKey(r), decryptDataKey: (r) => kms.decryptDataKey(r) };
    const cache = new DataKeyCache({ maxAgeMs: 60_000, capacity: 10 });
    const m = await encryptEnvelope(kms, { keyId: KEY, cache }, Buffer.from("x"));
    await encryptEnvelope(other, { keyId: KEY, cache }, Buffer.from("x"));
    expect(kms.generated).toBe(2);
    await decryptEnvelope(kms, m, { cache });
    await decryptEnvelope(other, m, { cache });
    expect(kms.unwrapped).toBe(2);
    expect(cache.stats.hits).toBe(0);
  });

  it("concurrent messages share one fetch and still respect maxMessages", async () => {
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 60_000, maxMessages: 5, capacity: 10 });
    const ms = await Promise.all(Array.from({ length: 10 }, (_, i) => encryptEnvelope(kms, { keyId: KEY, cache }, bytes(5, i))));
    expect(kms.generated).toBe(2);
    const counts = new Map<string, number>();
    for (const m of ms) counts.set(wrappedOf(m), (counts.get(wrappedOf(m)) ?? 0) + 1);
    expect([...counts.values()]).toEqual([5, 5]);
  });

  it("streams use the cache only with a declared plaintextLength", async () => {
    const kms = new FakeKms();
    const cache = new DataKeyCache({ maxAgeMs: 60_000, maxBytes: 1000, capacity: 10 });
    const pt = bytes(300);
    const s1 = await through(createEncryptStream(kms, { keyId: KEY, cache, plaintextLength: 300 }), chop(pt, 50));
    const s2 = await through(createEncryptStream(kms, { keyId: KEY, cache, plaintextLength: 300 }), chop(pt, 50));
    expect(kms.generated).toBe(1);
    expect(wrappedOf(s1)).toBe(wrappedOf(s2));
    const s3 = await through(createEncryptStream(kms, { keyId: KEY, cache }), chop(pt, 50)); // size unknown
    expect(kms.generated).toBe(2);
    expect(wrappedOf(s3)).not.toBe(wrappedOf(s1));
    const b = await encryptEnvelope(kms, { keyId: KEY, cache }, pt); // 900 of 1000
    expect(wrappedOf(b)).toBe(wrappedOf(s1));
    await through(createEncryptStream(kms, { keyId: KEY, cache, plaintextLength: 300 }), chop(pt, 50)); // 1200: fresh
    expect(kms.generated).toBe(3);
    expect(cache.stats).toMatchObject({ hits: 2, misses: 3 });
  });

  it("decrypt caches unwrapped data keys under the same limits (messages, bytes, age)", async () => {
    let now = 0;
    const kms = new FakeKms();
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: CTX }, bytes(40));
    const dec = (cache: DataKeyCache) => decryptEnvelope(kms, m, { cache, expectedContext: CTX });

    const byCount = new DataKeyCache({ maxAgeMs: 1_000, maxMessages: 3, capacity: 10, now: () => now });
    for (let i = 0; i < 7; i++) await dec(byCount); // unwraps for messages 1, 4 and 7
    expect(kms.unwrapped).toBe(3);
    expect(byCount.stats).toMatchObject({ hits: 4, misses: 3, evictions: 2 });

    // Bytes are charged once a message is read: an entry serves while it is below maxBytes.
    kms.unwrapped = 0;
    const byBytes = new DataKeyCache({ maxAgeMs: 1_000, maxBytes: 100, capacity: 10, now: () => now });
    await dec(byBytes); // miss, 40
    await dec(byBytes); // hit, 80
    await dec(byBytes); // hit (80 < 100), 120
    expect(kms.unwrapped).toBe(1);
    await dec(byBytes); // 120 ≥ 100: unwrap again
    expect(kms.unwrapped).toBe(2);

    // Age, and the stream form sharing the same entries.
    kms.unwrapped = 0;
    const byAge = new DataKeyCache({ maxAgeMs: 1_000, capacity: 10, now: () => now });
    expect((await through(createDecryptStream(kms, { cache: byAge }), [m])).equals(bytes(40))).toBe(true);
    now = 999;
    expect((await through(createDecryptStream(kms, { cache: byAge }), chop(m, 10))).equals(bytes(40))).toBe(true);
    expect((await dec(byAge)).plaintext.equals(bytes(40))).toBe(true);
    expect(kms.unwrapped).toBe(1);
    now = 1_000;
    await dec(byAge);
    expect(kms.unwrapped).toBe(2);
    expect(byAge.stats).toMatchObject({ hits: 2, misses: 2, evictions: 1 });

    // Another message (another wrapped key) is another entry.
    await decryptEnvelope(kms, await encryptEnvelope(kms, { keyId: KEY, encryptionContext: CTX }, bytes(1)), { cache: byAge });
    expect(kms.unwrapped).toBe(3);
    expect(byAge.stats.entries).toBe(2);
  });

  it("never beyond the limits: a long pseudo-random run against a reference model", async () => {
    let now = 0;
    const kms = new FakeKms();
    const limits = { maxAgeMs: 1_000, maxMessages: 7, maxBytes: 1_000 };
    const cache = new DataKeyCache({ ...limits, capacity: 4, now: () => now });
    const use = new Map<string, { first: number; messages: number; bytes: number }>();
    let model: { at: number; messages: number; bytes: number } | undefined;
    let expectedGenerations = 0;
    let x = 42;
    const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
    for (let i = 0; i < 400; i++) {
      now += rnd(60);
      const n = rnd(12) === 0 ? 1_000 + rnd(50) : rnd(400);
      const w = wrappedOf(await encryptEnvelope(kms, { keyId: KEY, cache, frameSize: 64 }, bytes(n, i)));
      // The reference: reuse when age, count and bytes all allow it; a message > maxBytes is never cached.
      if (n > limits.maxBytes) expectedGenerations++;
      else if (model && now - model.at < limits.maxAgeMs && model.messages < limits.maxMessages && model.bytes + n <= limits.maxBytes) {
        model.messages++;
        model.bytes += n;
      } else {
        expectedGenerations++;
        model = { at: now, messages: 1, bytes: n };
      }
      const u = use.get(w) ?? { first: now, messages: 0, bytes: 0 };
      u.messages++;
      u.bytes += n;
      use.set(w, u);
      expect(now - u.first).toBeLessThan(limits.maxAgeMs);
      expect(u.messages).toBeLessThanOrEqual(limits.maxMessages);
      if (u.messages > 1) expect(u.bytes).toBeLessThanOrEqual(limits.maxBytes);
    }
    expect(kms.generated).toBe(expectedGenerations);
    expect(cache.stats.hits + cache.stats.misses).toBe(400);
    expect(cache.stats.misses).toBe(expectedGenerations);
    expect(cache.stats.hits).toBeGreaterThan(100);
  });
});
