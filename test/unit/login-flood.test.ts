/**
 * The login flood defences, alone: the per-address token bucket (fake clock), the password-hashing
 * lane (hashes the test releases by hand), and the user service doing the same lane work for an
 * unknown user as for a known one.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { PeerRateLimiter, peerAddress } from "../../src/access";
import { Code, HsmError } from "../../src/errors";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";
import { HASH_LANE_FULL, HashLane, INVALID_CREDENTIALS, UserService } from "../../src/users";

function caught(fn: () => unknown): HsmError | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return e as HsmError;
  }
}

describe("peerAddress", () => {
  it("keeps the host and drops the port of every grpc-js peer form", () => {
    expect(peerAddress("ipv4:127.0.0.1:50123")).toBe("127.0.0.1");
    expect(peerAddress("127.0.0.1:50123")).toBe("127.0.0.1");
    expect(peerAddress("ipv6:[::1]:50123")).toBe("::1");
    expect(peerAddress("[2001:db8::7]:443")).toBe("2001:db8::7");
    expect(peerAddress("unix:/run/hsmd.sock")).toBe("unix:/run/hsmd.sock");
  });
});

describe("PeerRateLimiter (fake clock)", () => {
  let t = 1_000_000;
  const now = () => t;

  it("lets a burst through, then one per refill interval, and says when to retry", () => {
    const rl = new PeerRateLimiter({ burst: 3, perSecond: 2, maxPeers: 100, now });
    for (let i = 0; i < 3; i++) expect(rl.take("a")).toEqual({ ok: true });
    expect(rl.take("a")).toEqual({ ok: false, retryAfterMs: 500 });
    t += 250;
    expect(rl.take("a")).toEqual({ ok: false, retryAfterMs: 250 });
    t += 250;
    expect(rl.take("a")).toEqual({ ok: true });
    expect(rl.take("a").ok).toBe(false);
    // Another address has its own bucket; a long quiet spell refills to the burst, never beyond.
    expect(rl.take("b")).toEqual({ ok: true });
    t += 60_000;
    for (let i = 0; i < 3; i++) expect(rl.take("a")).toEqual({ ok: true });
    expect(rl.take("a").ok).toBe(false);
    expect(rl.refused).toBe(4);
  });

  it("refuses a login over the rate with RESOURCE_EXHAUSTED naming the address, the wait and the setting; new ports are the same peer", () => {
    const rl = new PeerRateLimiter({ burst: 2, perSecond: 0.5, maxPeers: 100, now });
    rl.admitLogin("ipv4:10.0.0.9:4000");
    rl.admitLogin("ipv4:10.0.0.9:4001");
    const err = caught(() => rl.admitLogin("ipv4:10.0.0.9:4002"));
    expect(err?.code).toBe(Code.ResourceExhausted);
    expect(err?.message).toBe("too many logins from 10.0.0.9: retry in 2.0 s (the limit is 2 at once, then 0.5 per second: auth.loginRateLimit)");
    expect(caught(() => rl.admitLogin("ipv4:10.0.0.10:4000"))).toBeUndefined();
    t += 2000;
    expect(caught(() => rl.admitLogin("ipv4:10.0.0.9:4003"))).toBeUndefined();
  });

  it("tracks at most maxPeers addresses, forgetting the least recently seen", () => {
    const rl = new PeerRateLimiter({ burst: 1, perSecond: 0.001, maxPeers: 2, now });
    expect(rl.take("a").ok).toBe(true);
    expect(rl.take("b").ok).toBe(true);
    expect(rl.take("a").ok).toBe(false); // a is now the most recent
    expect(rl.take("c").ok).toBe(true); // evicts b
    expect(rl.size).toBe(2);
    expect(rl.take("a").ok).toBe(false); // a was kept
    expect(rl.take("b").ok).toBe(true); // b was forgotten: a fresh bucket
  });

  it("refuses nonsense sizes", () => {
    expect(() => new PeerRateLimiter({ burst: 0, perSecond: 1, maxPeers: 1 })).toThrow(RangeError);
    expect(() => new PeerRateLimiter({ burst: 1, perSecond: 0, maxPeers: 1 })).toThrow(RangeError);
    expect(() => new PeerRateLimiter({ burst: 1, perSecond: 1, maxPeers: 0 })).toThrow(RangeError);
  });
});

describe("HashLane", () => {
  /** A hash the test finishes by hand, counting how many run at once. */
  function gate() {
    const releases: Array<() => void> = [];
    let running = 0;
    let peak = 0;
    const job = () =>
      new Promise<string>((resolve) => {
        running++;
        peak = Math.max(peak, running);
        releases.push(() => {
          running--;
          resolve("hashed");
        });
      });
    return { job, releases, peak: () => peak, running: () => running };
  }
  const tick = () => new Promise((r) => setImmediate(r));

  it("runs at most `concurrency` at once, in arrival order, and refuses past the queue with RESOURCE_EXHAUSTED", async () => {
    const lane = new HashLane({ concurrency: 2, maxQueue: 3 });
    const g = gate();
    const order: number[] = [];
    const calls = Array.from({ length: 5 }, (_, i) => lane.run(async () => (order.push(i), g.job())));
    const refused = await lane.run(g.job).then(
      () => undefined,
      (e: unknown) => e as HsmError,
    );
    expect(refused?.code).toBe(Code.ResourceExhausted);
    expect(refused?.message).toBe(HASH_LANE_FULL);
    expect(refused?.message).toMatch(/retry/);
    await tick();
    expect(lane.stats()).toEqual({ inFlight: 2, queued: 3, peakInFlight: 2, completed: 0, refused: 1 });
    while (g.releases.length) {
      g.releases.shift()!();
      await tick();
      await tick();
    }
    expect(await Promise.all(calls)).toEqual(Array(5).fill("hashed"));
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect(g.peak()).toBe(2);
    expect(lane.stats()).toEqual({ inFlight: 0, queued: 0, peakInFlight: 2, completed: 5, refused: 1 });
  });

  it("frees the slot of a hash that fails", async () => {
    const lane = new HashLane({ concurrency: 1, maxQueue: 0 });
    await expect(lane.run(async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(await lane.run(async () => "next")).toBe("next");
    expect(lane.stats().inFlight).toBe(0);
  });
});

describe("UserService in the lane", () => {
  let root: string | undefined;
  let store: EmbeddedStore | undefined;
  afterEach(async () => {
    await store?.close();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  it("spends exactly one lane hash on a login of an unknown user, a known user's wrong password and a malformed name", async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-lane-"));
    store = await openEmbeddedStore(join(root, "store"));
    const lane = new HashLane({ concurrency: 1, maxQueue: 8 });
    const users = new UserService({ store, scrypt: { N: 2 ** 10, r: 8, p: 1 }, hashLane: lane });
    await users.initialize("admin", "first-password-1");
    const before = lane.stats().completed;
    const attempts: Array<[string, string]> = [
      ["nobody", "whatever-1"],
      ["admin", "wrong-password"],
      ["Bad Name!", "whatever-1"],
    ];
    for (const [i, [name, pw]] of attempts.entries()) {
      await expect(users.login(name, pw)).rejects.toMatchObject({ code: Code.Unauthenticated, message: INVALID_CREDENTIALS });
      expect(lane.stats().completed).toBe(before + i + 1);
    }
  });
});
