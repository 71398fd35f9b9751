/**
 * A client that never reads cannot make the daemon hold more than `grpc.streamMaxInFlight` answers:
 * against hsmd as a child process (so that its memory is its own), a stream writes 30,000 encrypts
 * of 4 KiB (117 MiB of requests, as many bytes of answers) and reads nothing. The daemon stops
 * reading the stream once its answers back up (its encrypt count stops growing far below 30,000),
 * its RSS grows by less than a generous bound, and it serves another client meanwhile; once the
 * client reads again, the daemon reads on.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CryptoServiceClient } from "../../src/gen/hsm/v1/crypto";
import { EncryptionAlgorithm, type HsmClient, KeySpec } from "../../src/sdk";
import { TestStream, cryptoClient, outcome } from "../helpers/crypto-stream";
import { buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { userClient } from "../helpers/users";

const MAX_IN_FLIGHT = 256;
const TOTAL = 30_000;
const PAYLOAD = 4096;
// What the daemon may hold for the stream: its in-flight answers (4 KiB and framing each), plus
// room for what is not the stream's (V8 heap growth and garbage not yet collected, nghttp2's
// buffers, libuv): 48 MiB of slack, against 117 MiB of answers a daemon without the bound would keep.
const ANSWER_BYTES = PAYLOAD + 16 + 12 + 64;
const RSS_BOUND = MAX_IN_FLIGHT * ANSWER_BYTES + 48 * 1024 * 1024;

let dp: DaemonProcess;
let alice: HsmClient;
let client: CryptoServiceClient;
let aes: string;

const vmRssBytes = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
async function encryptsDone(): Promise<number> {
  const text = await (await fetch(`${dp.admin}/metrics`)).text();
  const m = /hsmd_grpc_requests_total\{method="Encrypt",code="OK"\} (\d+)/.exec(text);
  return m ? Number(m[1]) : 0;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  buildDist();
  dp = await startDaemonProcess({ config: { grpc: { streamMaxInFlight: MAX_IN_FLIGHT } } });
  alice = await userClient(dp, "alice");
  aes = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "aes" })).id;
  client = cryptoClient(dp.grpc);
}, 180_000);

afterAll(async () => {
  client?.close();
  alice?.close();
  await dp?.cleanup();
});

describe("a client that never reads", () => {
  it("holds the daemon to a bounded number of answers; the daemon serves others meanwhile", async () => {
    const token = alice.exportSession()!.token;
    // Warm up the daemon's stream path first, so that the baseline RSS includes it.
    const warm = new TestStream(client, token);
    for (let i = 0; i < 500; i++) warm.send(i, { $case: "generateRandom", value: { length: 16 } });
    warm.close();
    expect((await warm.ended).codeName).toBe("OK");
    const before = vmRssBytes(dp.pid);
    const doneBefore = await encryptsDone();

    const s = new TestStream(client, token);
    await s.opened;
    s.call.pause(); // never read: the answers stay unread in HTTP/2 and in the daemon
    const plaintext = Buffer.alloc(PAYLOAD, 7);
    for (let i = 0; i < TOTAL; i++) {
      s.send(i, {
        $case: "encrypt",
        value: { keyId: aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext, aad: Buffer.alloc(0), iv: Buffer.alloc(0), oaepLabel: Buffer.alloc(0) },
      });
    }
    // Wait until the daemon has stopped encrypting for this stream: its count holds still for 2 s.
    let done = await encryptsDone();
    for (;;) {
      await sleep(2000);
      const now = await encryptsDone();
      if (now === done) break;
      done = now;
    }
    const processed = done - doneBefore;
    const after = vmRssBytes(dp.pid);
    console.log(
      `never-reading client: the daemon encrypted ${processed} of ${TOTAL} before it stopped reading; RSS ${(before / 2 ** 20).toFixed(1)} → ${(after / 2 ** 20).toFixed(1)} MiB (growth ${((after - before) / 2 ** 20).toFixed(1)} MiB, bound ${(RSS_BOUND / 2 ** 20).toFixed(1)} MiB)`,
    );
    // What went out beyond the stream's own bound sits in HTTP/2 windows and socket buffers (a few MiB at most).
    expect(processed).toBeLessThan(TOTAL / 2);
    expect(after - before).toBeLessThan(RSS_BOUND);

    // Another client is served meanwhile, unary and on a stream of its own.
    expect((await alice.generateRandom({ length: 8 })).random).toHaveLength(8);
    const otherClient = cryptoClient(dp.grpc, { "grpc.use_local_subchannel_pool": 1 }); // its own connection
    const other = new TestStream(otherClient, token);
    expect(outcome(await other.request(1, { $case: "generateRandom", value: { length: 8 } })).code).toBe("OK");
    other.close();
    expect((await other.ended).codeName).toBe("OK");
    otherClient.close();

    // Reading again resumes it: the daemon reads on and answers (a few thousand are enough to see it),
    // then the client cancels the rest.
    s.call.resume();
    const more = processed + 2000;
    while (s.answers.length < more) await sleep(50);
    expect(s.answers.slice(0, more).every((a) => outcome(a).code === "OK")).toBe(true);
    expect(new Set(s.answers.map((a) => a.id)).size).toBe(s.answers.length);
    s.cancel();
    expect((await s.ended).codeName).toBe("CANCELLED");
    expect((await alice.generateRandom({ length: 8 })).random).toHaveLength(8);
  });
});
