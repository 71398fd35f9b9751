import { createDecipheriv, hkdfSync, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createDecryptStream,
  createEncryptStream,
  DataKeyCache,
  decryptEnvelope,
  encryptEnvelope,
  GrpcStatus,
  HsmClient,
  HsmClientError,
  KeySpec,
  KeyUsage,
  readEnvelopeHeader,
  type DataKeySource,
} from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

// Envelope encryption through a real daemon on a real SoftHSM2 token: the data keys come from the
// HSM and are wrapped and unwrapped by the service; the data itself never leaves this process.
let td: TestDaemon;
let alice: HsmClient; // owns the key-encryption key
let carol: HsmClient; // the key is shared with her
let bob: HsmClient; // no access
let kek: string;
const CTX = { tenant: "acme", object: "invoice-42.pdf" };

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  carol = await userClient(td, "carol");
  bob = await userClient(td, "bob");
  kek = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "envelope-kek", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] })).id;
  await alice.shareKey({ keyId: kek, username: "carol" });
});
afterAll(async () => {
  for (const c of [alice, carol, bob]) c?.close();
  await td?.cleanup();
});

async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HsmClientError);
    return e as HsmClientError;
  }
  throw new Error("expected a rejection");
}

/** A client wrapper that counts the service calls the envelope makes. */
function counting(c: HsmClient) {
  const calls = { generate: 0, decrypt: 0 };
  const source: DataKeySource = {
    generateDataKey: (r) => (calls.generate++, c.generateDataKey(r)),
    decryptDataKey: (r) => (calls.decrypt++, c.decryptDataKey(r)),
  };
  return { source, calls };
}

describe("envelope through the service", () => {
  for (const n of [0, 1, 65_535, 65_536, 65_537, 5 * 1024 * 1024 + 3]) {
    it(`round trip of ${n} bytes (buffers and streams)`, async () => {
      const pt = randomBytes(n);
      const m = await encryptEnvelope(alice, { keyId: kek, encryptionContext: CTX }, pt);
      expect(readEnvelopeHeader(m)).toMatchObject({ keyId: kek, keyVersion: 1, encryptionContext: CTX, frameSize: 65_536 });
      const r = await decryptEnvelope(alice, m, { expectedContext: CTX });
      expect(r.plaintext.equals(pt)).toBe(true);
      expect(r).toMatchObject({ keyId: kek, keyVersion: 1, encryptionContext: CTX });
      const chunks: Buffer[] = [];
      for (let i = 0; i < m.length; i += 100_000) chunks.push(m.subarray(i, i + 100_000));
      const out: Buffer[] = [];
      await pipeline(Readable.from(chunks), createDecryptStream(carol, { expectedContext: CTX }), async function* (src: AsyncIterable<Buffer>) {
        for await (const c of src) out.push(c);
      });
      expect(Buffer.concat(out).equals(pt)).toBe(true);
      // And the other way: encrypted by a stream, decrypted as a buffer by the user the key is shared with.
      const parts: Buffer[] = [];
      await pipeline(Readable.from([pt]), createEncryptStream(alice, { keyId: kek, encryptionContext: CTX, plaintextLength: n }), async (src: AsyncIterable<Buffer>) => {
        for await (const c of src) parts.push(c);
      });
      expect(Buffer.concat(parts).length).toBe(m.length);
      expect((await decryptEnvelope(carol, Buffer.concat(parts))).plaintext.equals(pt)).toBe(true);
    });
  }

  it("the format on the wire is the documented one: frame 1 decrypted by hand with Node's crypto", async () => {
    const pt = Buffer.from("The quick brown fox jumps over the lazy dog, twice over: ".repeat(3));
    const m = await encryptEnvelope(alice, { keyId: kek, encryptionContext: CTX, frameSize: 64 }, pt);
    // Header, read by the documented offsets.
    expect(m.subarray(0, 6).equals(Buffer.from([0x48, 0x53, 0x4d, 0x45, 1, 1]))).toBe(true);
    const messageId = m.subarray(6, 38);
    expect(m.readUInt32BE(38)).toBe(64);
    let p = 42;
    const keyId = m.toString("utf8", p + 2, p + 2 + m.readUInt16BE(p));
    p += 2 + m.readUInt16BE(p);
    expect(keyId).toBe(kek);
    expect(m.readUInt32BE(p)).toBe(1);
    p += 4;
    const wrapped = m.subarray(p + 2, p + 2 + m.readUInt16BE(p));
    p += 2 + wrapped.length;
    expect(wrapped.subarray(0, 4).toString()).toBe("hsm1");
    const entries = m.readUInt16BE(p);
    p += 2;
    const context: Record<string, string> = {};
    for (let i = 0; i < entries; i++) {
      const k = m.toString("utf8", p + 2, p + 2 + m.readUInt16BE(p));
      p += 2 + m.readUInt16BE(p);
      context[k] = m.toString("utf8", p + 2, p + 2 + m.readUInt16BE(p));
      p += 2 + m.readUInt16BE(p);
    }
    expect(Object.keys(context)).toEqual(["object", "tenant"]);
    const commitment = m.subarray(p, p + 32);
    const headerTag = m.subarray(p + 32, p + 48);
    const headerEnd = p + 48;

    // The data key, unwrapped by the service for us (the envelope would ask the same).
    const dk = (await alice.decryptDataKey({ keyId, wrappedDataKey: wrapped, encryptionContext: context })).plaintextDataKey;
    expect(dk.length).toBe(32);
    const key = Buffer.from(hkdfSync("sha256", dk, messageId, "HSME v1 AES-256-GCM message key", 32));
    expect(Buffer.from(hkdfSync("sha256", dk, messageId, "HSME v1 key commitment", 32)).equals(commitment)).toBe(true);
    const h = createDecipheriv("aes-256-gcm", key, Buffer.alloc(12));
    h.setAAD(m.subarray(0, headerEnd - 16));
    h.setAuthTag(headerTag);
    h.final();

    // Frame 1: seq 1, not final, 64 bytes.
    expect([m.readUInt32BE(headerEnd), m[headerEnd + 4], m.readUInt32BE(headerEnd + 5)]).toEqual([1, 0, 64]);
    const iv = Buffer.concat([Buffer.alloc(8), Buffer.from([0, 0, 0, 1])]);
    const aad = Buffer.concat([messageId, Buffer.from([0, 0, 0, 1, 0, 0, 0, 0, 64])]);
    const d = createDecipheriv("aes-256-gcm", key, iv);
    d.setAAD(aad);
    d.setAuthTag(m.subarray(headerEnd + 9 + 64, headerEnd + 9 + 64 + 16));
    const frame1 = Buffer.concat([d.update(m.subarray(headerEnd + 9, headerEnd + 9 + 64)), d.final()]);
    expect(frame1.equals(pt.subarray(0, 64))).toBe(true);
    expect(m.length).toBe(headerEnd + 3 * 25 + pt.length);
  });

  it("decrypt needs access to the key: a crypto user it is not shared with gets NOT_FOUND from the service", async () => {
    const m = await encryptEnvelope(alice, { keyId: kek, encryptionContext: CTX }, Buffer.from("secret"));
    const e = await rejection(decryptEnvelope(bob, m));
    expect(e.code).toBe(GrpcStatus.NOT_FOUND);
    expect(e.details).toMatch(/^envelope: DecryptDataKey under .* failed: /);
    const s = await rejection(
      pipeline(Readable.from([m]), createDecryptStream(bob), async (src: AsyncIterable<Buffer>) => {
        for await (const _ of src);
      }),
    );
    expect(s.code).toBe(GrpcStatus.NOT_FOUND);
    expect((await rejection(encryptEnvelope(bob, { keyId: kek }, Buffer.from("x")))).code).toBe(GrpcStatus.NOT_FOUND);
    // Carol, whom the key is shared with, can decrypt and encrypt.
    expect((await decryptEnvelope(carol, m)).plaintext.toString()).toBe("secret");
    const mc = await encryptEnvelope(carol, { keyId: kek }, Buffer.from("from carol"));
    expect((await decryptEnvelope(alice, mc)).plaintext.toString()).toBe("from carol");
  });

  it("a context mismatch: refused locally with an expected context, and by the service when the header lies", async () => {
    const m = await encryptEnvelope(alice, { keyId: kek, encryptionContext: CTX }, Buffer.from("secret"));
    const e = await rejection(decryptEnvelope(alice, m, { expectedContext: { tenant: "globex" } }));
    expect(e.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(e.details).toBe('envelope: encryption context mismatch: "tenant" is "acme" in the message, expected "globex"');
    const t = Buffer.from(m);
    t.write("ACME", t.indexOf(Buffer.from("acme")));
    const s = await rejection(decryptEnvelope(alice, t));
    expect(s.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(s.details).toMatch(/^envelope: DecryptDataKey under .* failed: wrapped_data_key does not open/);
  });

  it("tampering and truncation are refused after the service unwrapped the key", async () => {
    const m = await encryptEnvelope(alice, { keyId: kek, frameSize: 1024 }, randomBytes(5000));
    const last = Buffer.from(m);
    last[last.length - 20]! ^= 0x01;
    expect((await rejection(decryptEnvelope(alice, last))).details).toBe("envelope: frame 5 failed authentication");
    expect((await rejection(decryptEnvelope(alice, m.subarray(0, m.length - (9 + 904 + 16))))).details).toBe("envelope: message truncated (no final frame)");
  });

  it("the data-key cache spares the service calls, within its limits, and its stats show it", async () => {
    const { source, calls } = counting(alice);
    const cache = new DataKeyCache({ maxAgeMs: 60_000, maxMessages: 4, maxBytes: 1 << 20, capacity: 16 });
    const ms: Buffer[] = [];
    for (let i = 0; i < 10; i++) ms.push(await encryptEnvelope(source, { keyId: kek, encryptionContext: CTX, cache }, Buffer.from(`message ${i}`)));
    expect(calls.generate).toBe(3); // messages 1-4, 5-8, 9-10
    // Data keys 1, 1, 1, 1, 2, 2, 2, 2, 3, 3 (the wrapped key in each header) — and every message has its own id.
    const w = 11 + kek.length + 13 + 48; // a wrapped data key: its header (docs/CIPHERTEXT.md), then 32 + 16 bytes
    const wrapped = ms.map((m) => m.subarray(m.indexOf(Buffer.from("hsm1")), m.indexOf(Buffer.from("hsm1")) + w).toString("base64"));
    expect([0, 0, 0, 0, 1, 1, 1, 1, 2, 2].map((g) => wrapped.indexOf(wrapped[g * 4]!))).toEqual([0, 0, 0, 0, 4, 4, 4, 4, 8, 8]);
    expect(new Set(wrapped).size).toBe(3);
    expect(new Set(ms.map((m) => m.subarray(6, 38).toString("hex"))).size).toBe(10);
    for (let i = 0; i < 10; i++) expect((await decryptEnvelope(source, ms[i]!, { cache })).plaintext.toString()).toBe(`message ${i}`);
    expect(calls.decrypt).toBe(3); // one unwrap per data key
    expect(cache.stats).toMatchObject({ hits: 7 + 7, misses: 3 + 3 });
    expect(cache.stats.hitRate).toBeCloseTo(14 / 20);
    // Without a cache: one GenerateDataKey per message.
    for (let i = 0; i < 3; i++) await encryptEnvelope(source, { keyId: kek }, Buffer.from("x"));
    expect(calls.generate).toBe(6);
  });
});
