/**
 * Hostile peers at the connection level, against hsmd as a real child process (its RSS and file
 * descriptors are its own): a flood of idle raw sockets under a 1024 file descriptor limit, HTTP/2
 * streams carrying large unfinished messages without a session, and a client that never reads its
 * responses. Each must leave the daemon serving good clients, with bounded memory; memory bounds are
 * generous (tens of MiB where the unbounded daemon took hundreds), and nothing here measures time.
 */
import { connect as h2connect, constants as h2, type ClientHttp2Session, type ClientHttp2Stream } from "node:http2";
import { connect as netConnect, type Socket } from "node:net";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { BatchEncryptRequest, EncryptionAlgorithm } from "../../src/gen/hsm/v1/crypto";
import { LoginRequest, Session } from "../../src/gen/hsm/v1/users";
import { KeySpec, SigningAlgorithm, type HsmClient } from "../../src/sdk";
import { buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { USER_PASSWORD, officerClient, userClient } from "../helpers/users";

const MiB = 1024 * 1024;

/** VmRSS of a process, in bytes (/proc/<pid>/status). */
function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
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

/** Resolves at the first sign of the server's answer: HEADERS of a response, trailers, or the stream's end. */
function firstAnswer(st: ClientHttp2Stream): Promise<Outcome> {
  return new Promise((resolve) => {
    st.on("response", (headers) => {
      const s = headers["grpc-status"];
      // A trailers-only answer (a refusal) carries grpc-status in the first HEADERS.
      resolve(s === undefined ? { responded: true } : { responded: false, grpcStatus: Number(s) });
    });
    st.on("trailers", (t) => resolve({ responded: false, grpcStatus: Number(t["grpc-status"]) }));
    st.on("close", () => resolve({ responded: false, rstCode: st.rstCode }));
    st.on("error", () => undefined);
  });
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
      const outcomes: Array<Promise<Outcome>> = [];
      const declared = 5 * MiB - 4096; // under the daemon's message limit: only the missing session refuses it
      const chunk = Buffer.alloc(4 * MiB, 0x41);
      for (let c = 0; c < 8; c++) {
        // The attacker's own session must not refuse its queued bodies (Node's default 10 MiB).
        const s = h2connect(`http://${dp.grpc}`, { maxSessionMemory: 4096 });
        s.on("error", () => undefined);
        sessions.push(s);
        for (let i = 0; i < 32; i++) {
          const st = s.request(grpcHeaders("/hsm.v1.CryptoService/Encrypt"));
          outcomes.push(firstAnswer(st));
          st.write(Buffer.from([0, (declared >>> 24) & 0xff, (declared >>> 16) & 0xff, (declared >>> 8) & 0xff, declared & 0xff]));
          st.write(chunk);
        }
      }
      const { result: all, grownMiB } = await withinRss(dp.pid, before, 96, Promise.all(outcomes)); // the bodies: 1 GiB
      expect(all.filter((o) => o.grpcStatus === 16)).toHaveLength(256);
      expect(grownMiB).toBeLessThan(96);
      for (const s of sessions.splice(0)) s.destroy();
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
      const s = h2connect(`http://${dp.grpc}`, { settings: { initialWindowSize: 0 } });
      s.on("error", () => undefined);
      sessions.push(s);
      // Its session comes from a login on another connection: with window 0, no answer's message reaches this one.
      const other = h2connect(`http://${dp.grpc}`);
      sessions.push(other);
      const r = await rawUnary(other, "/hsm.v1.UserService/Login", LoginRequest.encode({ username: "alice", password: USER_PASSWORD }).finish());
      expect(r.status).toBe(0);
      const token = Session.decode(r.message).token;
      const body = BatchEncryptRequest.encode(BatchEncryptRequest.fromPartial({
        items: Array.from({ length: 64 }, () => ({ keyId: aesId, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.alloc(64 * 1024, 9), aad: Buffer.alloc(0), iv: Buffer.alloc(0) })),
      })).finish();
      const before = rssOf(dp.pid);
      const calls = async () => {
        const out: Outcome[] = [];
        for (let i = 0; i < 40; i++) {
          const st = s.request(grpcHeaders("/hsm.v1.CryptoService/BatchEncrypt", { authorization: `Bearer ${token}` }));
          const o = firstAnswer(st);
          st.end(frame(body));
          out.push(await o);
        }
        return out;
      };
      const { result: outcomes, grownMiB } = await withinRss(dp.pid, before, 128, calls()); // unbounded: 649 MiB
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
