/**
 * Hostile peers at the connection level, against hsmd as a real child process (its RSS and file
 * descriptors are its own): a flood of idle raw sockets under a 1024 file descriptor limit, HTTP/2
 * streams carrying large unfinished messages without a session, and a client that never reads its
 * responses. Each must leave the daemon serving good clients, with bounded memory; memory bounds are
 * generous (tens of MiB where the unbounded daemon took hundreds), and nothing here measures time.
 * The raw HTTP/2 attackers of the memory tests run in a child process of their own
 * (test/helpers/h2-attacker-child.cjs, which says why).
 */
import { spawn } from "node:child_process";
import { connect as h2connect, constants as h2, type ClientHttp2Session } from "node:http2";
import { connect as netConnect, type Socket } from "node:net";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { EncryptionAlgorithm } from "../../src/gen/hsm/v1/crypto";
import { LoginRequest } from "../../src/gen/hsm/v1/users";
import { KeySpec, SigningAlgorithm, type HsmClient } from "../../src/sdk";
import { REPO, buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { USER_PASSWORD, officerClient, userClient } from "../helpers/users";

const MiB = 1024 * 1024;

/** VmRSS of a process, in bytes (/proc/<pid>/status). */
function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

const ATTACKER = join(__dirname, "../helpers/h2-attacker-child.cjs");

/**
 * Runs the raw HTTP/2 attacker (h2-attacker-child.cjs) in its own process: resolves the JSON line it
 * prints; rejects, with its stderr, if it exits otherwise (a crash of the attacker is never retried).
 */
function runAttacker<T>(mode: "unfinished-bodies" | "never-reads", args: Record<string, unknown>): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [ATTACKER, join(REPO, "dist"), mode, JSON.stringify(args)], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (code === 0) resolve(JSON.parse(out) as T);
      else reject(new Error(`the ${mode} attacker process exited with code ${code}, signal ${signal}:\n${err.slice(-4000)}`));
    });
  });
}

/** A gRPC frame: flag 0, big-endian length, message. */
const frame = (msg: Uint8Array) => Buffer.concat([Buffer.from([0, ...[24, 16, 8, 0].map((s) => (msg.length >>> s) & 0xff)]), msg]);

const grpcHeaders = (path: string, extra: Record<string, string> = {}) => ({
  ":method": "POST",
  ":path": path,
  "content-type": "application/grpc",
  te: "trailers",
  ...extra,
});

/** How a raw stream ended: its response headers and trailers (grpc-status), or an RST code. */
interface Outcome {
  /** The server sent response headers with a message to follow (the call ran and answered). */
  responded: boolean;
  grpcStatus?: number;
  rstCode?: number;
}

/** A raw unary call over an HTTP/2 session: the whole answer. */
function rawUnary(s: ClientHttp2Session, path: string, body: Uint8Array, extra: Record<string, string> = {}): Promise<{ status: number; message: Buffer }> {
  return new Promise((resolve, reject) => {
    const st = s.request(grpcHeaders(path, extra));
    const chunks: Buffer[] = [];
    let status = -1;
    st.on("response", (h) => h["grpc-status"] !== undefined && (status = Number(h["grpc-status"])));
    st.on("trailers", (t) => (status = Number(t["grpc-status"])));
    st.on("data", (c: Buffer) => chunks.push(c));
    st.on("end", () => resolve({ status, message: Buffer.concat(chunks).subarray(5) }));
    st.on("error", reject);
    st.end(frame(body));
  });
}

/**
 * Awaits `work` while watching the daemon's RSS: rejects as soon as it has grown past `boundMiB`
 * over `before` (an unbounded daemon may never answer the calls at all), else resolves with the
 * work's result and the growth in MiB once the work settles.
 */
async function withinRss<T>(pid: number, before: number, boundMiB: number, work: Promise<T>): Promise<{ result: T; grownMiB: number }> {
  let settled = false;
  const done = work.finally(() => (settled = true));
  while (!settled) {
    const grownMiB = (rssOf(pid) - before) / MiB;
    if (grownMiB > boundMiB) throw new Error(`the daemon's RSS grew by ${grownMiB.toFixed(0)} MiB (bound ${boundMiB} MiB) while the calls were pending`);
    await Promise.race([done.catch(() => undefined), new Promise((r) => setTimeout(r, 50))]);
  }
  const result = await done;
  return { result, grownMiB: (rssOf(pid) - before) / MiB };
}

async function adminGet(dp: DaemonProcess, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`${dp.admin}${path}`);
  return { status: r.status, body: await r.text() };
}

describe("hostile connections", () => {
  beforeAll(() => buildDist());

  describe("1,100 idle raw sockets under a file descriptor limit of 1024", () => {
    let dp: DaemonProcess;
    let good: HsmClient;
    let keyId: string;
    const sockets: Socket[] = [];

    beforeAll(async () => {
      dp = await startDaemonProcess({
        wrap: ["prlimit", "--nofile=1024:1024", "--"],
        // Deadlines far beyond the test, so that only the connection bound closes sockets while the
        // flood is held (the deadlines have their own test below).
        config: { connections: { handshakeTimeoutSeconds: 600, idleTimeoutSeconds: 600 } },
      });
      good = await userClient(dp);
      keyId = (await good.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "fd-flood" })).id;
    });
    afterAll(async () => {
      for (const s of sockets) s.destroy();
      good?.close();
      await dp?.cleanup();
    });

    it("the connection bound is clamped to the fd limit and logged; past it the flood is refused, the good client signs, /healthz answers; once the sockets close everything is ready again", async () => {
      const clamp = /gRPC connections: at most (\d+) at once, not the configured 1000: the file descriptor limit \(RLIMIT_NOFILE\) is 1024/.exec(dp.stderr());
      expect(clamp, dp.stderr()).not.toBeNull();
      const bound = Number(clamp![1]);
      expect(bound).toBeLessThan(1024 - 128 - 64);

      const [host, port] = dp.grpc.split(":");
      let closed = 0;
      for (let i = 0; i < 1100; i++) {
        const s = netConnect({ host, port: Number(port) });
        s.on("error", () => undefined);
        s.resume(); // reads (and drops) the server's SETTINGS, so that its close is seen
        s.on("close", () => closed++);
        sockets.push(s);
      }
      // The daemon closes what is past its bound (the good client's connection holds one slot).
      await expect.poll(() => closed, { timeout: 60_000 }).toBeGreaterThanOrEqual(1100 - bound);
      await expect.poll(() => dp.stderr(), { timeout: 30_000 }).toMatch(new RegExp(`gRPC connection limit of ${bound} reached .*refused \\d+ new connection`));

      // While the flood holds every other slot: the good client's connection is its own, the admin
      // port has its own bound, and the device has its descriptors.
      const msg = Buffer.from("signed during a flood");
      const { signature } = await good.sign({ keyId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
      expect((await good.verify({ keyId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg, signature })).valid).toBe(true);
      const k = await good.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "during-flood" });
      expect(k.id).toBeTruthy();
      expect((await adminGet(dp, "/healthz")).status).toBe(200);
      const during = await adminGet(dp, "/readyz");
      expect(during.status, during.body).toBe(200);

      for (const s of sockets.splice(0)) s.destroy();
      // A fresh client on a new connection, once the daemon has seen the sockets go.
      const fresh = await (async () => {
        for (;;) {
          try {
            return await userClient(dp, "bob", { defaultDeadlineMs: 5_000 });
          } catch (e) {
            if ((e as { codeName?: string }).codeName !== "UNAVAILABLE") throw e;
          }
        }
      })();
      try {
        const ec = await fresh.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "after-flood-ec" });
        expect((await fresh.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg })).signature.length).toBeGreaterThan(0);
      } finally {
        fresh.close();
      }
      const ready = await adminGet(dp, "/readyz");
      expect(ready.status, ready.body).toBe(200);
      expect(dp.stderr()).not.toMatch(/is not materialized|CKR_GENERAL_ERROR|EMFILE|device fault/);
    });
  });

  describe("memory", () => {
    let dp: DaemonProcess;
    let good: HsmClient;
    let aesId: string;
    const sessions: ClientHttp2Session[] = [];

    beforeAll(async () => {
      dp = await startDaemonProcess({ config: { connections: { idleTimeoutSeconds: 2, handshakeTimeoutSeconds: 2 } } });
      good = await userClient(dp);
      aesId = (await good.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "mem" })).id;
      // Warm up the paths the tests take (a full batch through the SDK) before the first RSS reading.
      const items = Array.from({ length: 48 }, () => ({ keyId: aesId, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.alloc(64 * 1024, 7) }));
      await good.batchEncrypt({ items });
    });
    afterAll(async () => {
      for (const s of sessions) s.destroy();
      good?.close();
      await dp?.cleanup();
    });

    it("256 streams each holding 4 MiB of an unfinished 5 MiB message without a session: all UNAUTHENTICATED before the bodies are read, RSS grows by far less than the bodies", async () => {
      const before = rssOf(dp.pid);
      // 8 sessions × 32 streams, each writing a 4 MiB piece of a message declared 5 MiB long (under
      // the daemon's message limit: only the missing session refuses it); the streams stay open,
      // their bodies unread, until every one has answered and the attacker process exits.
      const attack = runAttacker<{ outcomes: Outcome[] }>("unfinished-bodies", { grpc: dp.grpc, sessions: 8, streams: 32, declared: 5 * MiB - 4096, chunkBytes: 4 * MiB });
      const { result, grownMiB } = await withinRss(dp.pid, before, 96, attack); // the bodies: 1 GiB
      expect(result.outcomes).toHaveLength(256);
      expect(result.outcomes.filter((o) => o.grpcStatus === 16)).toHaveLength(256);
      expect(grownMiB).toBeLessThan(96);
      // The daemon still serves, and the refusals are audited like any refused call.
      expect((await good.generateRandom({ length: 8 })).random.length).toBe(8);
      const co = await officerClient(dp);
      try {
        // Audited rate-limited: the first of each second on its own, the rest as "N more like it" counts.
        const counted = async () => {
          const { entries } = await co.queryAuditLog({ operation: "Encrypt", limit: 1000 });
          const refused = entries.filter((e) => e.status === "UNAUTHENTICATED");
          for (const e of refused) expect(e.detail).toMatch(/^(refused before the request was read|\d+ more like it from 127\.0\.0\.1 within 1000 ms)/);
          expect(refused[0]!.user).toBe("");
          expect(refused[0]!.client).toMatch(/127\.0\.0\.1/);
          expect(refused.length).toBeLessThan(64);
          return refused.reduce((n, e) => n + Number(/^(\d+) more like it/.exec(e.detail)?.[1] ?? 1), 0);
        };
        await vi.waitFor(async () => expect(await counted()).toBe(256), { timeout: 10_000, interval: 250 });
      } finally {
        co.close();
      }
    });

    it("a client that never reads (HTTP/2 window 0) sending 40 BatchEncrypt of 64 × 64 KiB: its later calls answer RESOURCE_EXHAUSTED, RSS stays bounded, other clients are served", async () => {
      const before = rssOf(dp.pid);
      // Its connection's HTTP/2 window is 0; its session comes from a login (as alice) on another
      // connection of the attacker process. The calls are made one after another.
      const attack = runAttacker<{ loginStatus: number; outcomes: Outcome[] }>("never-reads", {
        grpc: dp.grpc,
        username: "alice",
        password: USER_PASSWORD,
        keyId: aesId,
        calls: 40,
        items: 64,
        itemBytes: 64 * 1024,
      });
      const { result, grownMiB } = await withinRss(dp.pid, before, 128, attack); // unbounded: 649 MiB
      expect(result.loginStatus).toBe(0);
      const outcomes = result.outcomes;
      const queued = outcomes.filter((o) => o.responded).length;
      const refused = outcomes.filter((o) => o.grpcStatus === 8 || o.rstCode === h2.NGHTTP2_ENHANCE_YOUR_CALM).length;
      expect(queued).toBeGreaterThanOrEqual(1);
      expect(queued + refused).toBe(40);
      expect(refused).toBeGreaterThanOrEqual(30);
      expect(grownMiB).toBeLessThan(128);
      expect(dp.stderr()).toMatch(/leaves \d+ response bytes unread \(connections\.maxQueuedResponseBytes 8388608\)/);
      // Another client on its own connection is served meanwhile.
      const e = await good.encrypt({ keyId: aesId, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("still served") });
      expect(e.ciphertext.length).toBeGreaterThan(0);
    });

    it("a raw socket that never sends the HTTP/2 preface is closed after connections.handshakeTimeoutSeconds, and the daemon says so", async () => {
      const [host, port] = dp.grpc.split(":");
      const sock = netConnect({ host, port: Number(port) });
      sock.on("error", () => undefined);
      sock.resume();
      await new Promise<void>((resolve) => sock.on("close", () => resolve())); // by the daemon: nothing here closes it
      await expect.poll(() => dp.stderr(), { timeout: 30_000 }).toMatch(/closed \d+ gRPC connection\(s\) that started no call within 2000 ms \(connections\.handshakeTimeoutSeconds\)/);
    });

    it("a connection that made its calls and then stays idle is closed after connections.idleTimeoutSeconds", async () => {
      const s = h2connect(`http://${dp.grpc}`);
      sessions.push(s);
      const closed = new Promise<void>((resolve) => s.on("close", () => resolve()));
      const r = await rawUnary(s, "/hsm.v1.UserService/Login", LoginRequest.encode({ username: "alice", password: "wrong-password" }).finish());
      expect(r.status).toBe(16);
      await closed; // by the daemon (GOAWAY), nothing on this side closes it
      expect(s.destroyed || s.closed).toBe(true);
    });
  });
});
