import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createDecryptStream, createEncryptStream, DataKeyCache, decryptEnvelope, encryptEnvelope, GrpcStatus, readEnvelopeHeader, type DataKeySource } from "../../src/sdk";
import { MessageEncoder } from "../../src/sdk/envelope-codec";
import { bytes, chop, CTX, FakeKms, handDecrypt, handHeader, KEY, rejection, through } from "../helpers/envelope";

// The envelope format against a fake data-key source (test/helpers/envelope.ts): round trips, the
// documented known answer, streams and backpressure, tampering. Options and the data-key cache:
// envelope-cache.test.ts.

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
    const m = await encryptEnvelope(kms, { keyId: KEY, encryptionContext: { z: "1", a: "2", é: "3", B: "4" } }, Buffer.from("x"));
    const h = handHeader(m);
    expect(Object.keys(h.context)).toEqual(["B", "a", "z", "é"]);
    expect((await decryptEnvelope(kms, m)).encryptionContext).toEqual({ z: "1", a: "2", é: "3", B: "4" });
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
  const KAT =
    "48534d450101202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f0000000400056b656b2d3100000007004048444b31aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa0001000674656e616e74000461636d6549df0abdc69b2b5f915f1657a93139c312e5048e1fa700bc82dd47e169c2904205d68d964cc844882d97f7f82518ad250000000100000000042cc5e3488d962dcdaef911defb374d403357219f000000020100000001d2d3ccffe5a4e3f99e0520aeff3ced6948";
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
