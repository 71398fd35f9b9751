import { createCipheriv, createHash } from "node:crypto";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDecryptStream, createEncryptStream, HsmClient, KeySpec } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

// 1 GiB through encrypt → decrypt streams against a real daemon, never held in memory: the plaintext
// is made on the fly (a seeded AES-256-CTR keystream), both ends are hashed, and the process's RSS is
// sampled throughout. The bound checked is memory, not time; the time is printed.
let td: TestDaemon;
let c: HsmClient;
let kek: string;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td, "streamer");
  kek = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "stream-kek" })).id;
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** `total` pseudo-random bytes in `block`-sized chunks: AES-256-CTR over zeros under a fixed seed. */
function keystream(total: number, block: number): Readable {
  const ctr = createCipheriv("aes-256-ctr", Buffer.alloc(32, 7), Buffer.alloc(16, 9));
  const zeros = Buffer.alloc(block);
  let left = total;
  return new Readable({
    highWaterMark: block,
    read() {
      if (left === 0) {
        this.push(null);
        return;
      }
      const n = Math.min(block, left);
      left -= n;
      this.push(ctr.update(n === block ? zeros : zeros.subarray(0, n)));
    },
  });
}

/** A pass-through that hashes (and counts) what flows through it. */
function tap(): { stream: Transform; digest: () => string; bytes: () => number } {
  const h = createHash("sha256");
  let n = 0;
  const stream = new Transform({
    transform(chunk: Buffer, _e, cb) {
      h.update(chunk);
      n += chunk.length;
      cb(null, chunk);
    },
  });
  return { stream, digest: () => h.digest("hex"), bytes: () => n };
}

describe("envelope streaming", () => {
  it("1 GiB: encrypt → decrypt streams, sha256 in = sha256 out, RSS well under the size", async () => {
    const size = GiB;
    const input = tap();
    let ciphertextBytes = 0;
    const count = new Transform({
      transform(chunk: Buffer, _e, cb) {
        ciphertextBytes += chunk.length;
        cb(null, chunk);
      },
    });
    const out = createHash("sha256");
    let plaintextBytes = 0;
    const sink = new Writable({
      write(chunk: Buffer, _e, cb) {
        out.update(chunk);
        plaintextBytes += chunk.length;
        cb();
      },
    });
    let peak = process.memoryUsage.rss();
    const baseline = peak;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage.rss());
    }, 20);
    const started = performance.now();
    try {
      await pipeline(
        keystream(size, MiB),
        input.stream,
        createEncryptStream(c, { keyId: kek, encryptionContext: { test: "1GiB" } }),
        count,
        createDecryptStream(c, { expectedContext: { test: "1GiB" } }),
        sink,
      );
    } finally {
      clearInterval(sampler);
    }
    peak = Math.max(peak, process.memoryUsage.rss());
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `envelope 1 GiB: ${seconds.toFixed(1)} s (${(size / MiB / seconds).toFixed(0)} MiB/s through encrypt + decrypt), ` +
        `RSS baseline ${(baseline / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB`,
    );
    expect(input.bytes()).toBe(size);
    expect(plaintextBytes).toBe(size);
    expect(out.digest("hex")).toBe(input.digest());
    const frames = size / (64 * 1024);
    expect(ciphertextBytes).toBeGreaterThan(size + frames * 25);
    expect(ciphertextBytes).toBeLessThan(size + frames * 25 + 1024);
    expect(peak).toBeLessThan(512 * MiB);
  }, 600_000);
});
