import { describe, expect, it } from "vitest";
import { createDecryptStream, createEncryptStream, DataKeyCache, decryptEnvelope, encryptEnvelope, GrpcStatus, type DataKeySource } from "../../src/sdk";
import { bytes, chop, CTX, FakeKms, handHeader, KEY, rejection, through } from "../helpers/envelope";

// The envelope options and the data-key cache against a fake data-key source (test/helpers/envelope.ts).

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
