/**
 * npm run soak: mixed load for N minutes against a daemon this script starts (a child process on a
 * fresh SoftHSM2 token): key generation and deletion, sign and verify, encrypt and decrypt, batches,
 * logins and logouts, and bad requests (malformed protobuf, oversized batches, unknown keys, wrong
 * passwords). Reports the daemon's RSS at start, at the end and at its peak, and the count of every
 * outcome per operation. Not part of CI. Exits 1 when the daemon died or any call answered INTERNAL or
 * UNKNOWN (or hit its deadline).
 *
 *   node dist/scripts/soak.js [--minutes N] [--workers N]      (or SOAK_MINUTES, SOAK_WORKERS)
 */
process.env.UV_THREADPOOL_SIZE ??= "16";

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { grpcAddressOf } from "./daemon-ready";
import { initTokenFromFiles } from "./init-token";
import * as grpc from "@grpc/grpc-js";
import { UserServiceClient } from "../src/gen/hsm/v1/users";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, Role, SigningAlgorithm } from "../src/sdk";

const args = process.argv.slice(2);
const arg = (name: string, env: string, def: number) => {
  const i = args.indexOf(`--${name}`);
  const v = Number(i >= 0 ? args[i + 1] : process.env[env]);
  return Number.isFinite(v) && v > 0 ? v : def;
};
const MINUTES = arg("minutes", "SOAK_MINUTES", 10);
const WORKERS = arg("workers", "SOAK_WORKERS", 8);
const ROOT = resolve(__dirname, "../..");
const POOL = 8;

/** The daemon's resident set and its high-water mark, from /proc (bytes). */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? 0) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}
const mib = (b: number) => `${(b / 1024 / 1024).toFixed(1)} MiB`;

async function startDaemon(dir: string): Promise<{ child: ChildProcess; grpc: string; dataDir: string }> {
  const conf = join(dir, "softhsm2.conf");
  mkdirSync(join(dir, "tokens"));
  writeFileSync(conf, `directories.tokendir = ${join(dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const pin = randomBytes(12).toString("base64url");
  const pinFile = join(dir, "pin");
  writeFileSync(pinFile, pin, { mode: 0o600 });
  const env = { ...process.env, SOFTHSM2_CONF: conf, UV_THREADPOOL_SIZE: String(POOL + 4) };
  const soPinFile = join(dir, "so-pin");
  writeFileSync(soPinFile, `${pin}so`, { mode: 0o600 });
  initTokenFromFiles(env, "soak", pinFile, soPinFile);
  const dataDir = join(dir, "data");
  const cfg = join(dir, "hsmd.json");
  writeFileSync(
    cfg,
    JSON.stringify({
      node: { id: "soak", dataDir },
      listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
      devMode: true,
      device: { profile: "softhsm2", tokenLabel: "soak", poolSize: POOL, pin: { file: pinFile } },
    }),
  );
  const child = spawn(process.execPath, [join(ROOT, "dist/src/main.js"), "init", "--config", cfg], { env, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const address = await grpcAddressOf(child, () => err);
  return { child, grpc: address, dataDir };
}

/** Outcome counts: operation -> status name -> count. */
const outcomes = new Map<string, Map<string, number>>();
function count(op: string, status: string): void {
  const m = outcomes.get(op) ?? new Map<string, number>();
  m.set(status, (m.get(status) ?? 0) + 1);
  outcomes.set(op, m);
}
/** Runs one operation and counts its outcome: OK, the status it failed with, or the status a raw call answered. */
async function run(op: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    const r = await fn();
    count(op, typeof r === "string" ? r : "OK");
  } catch (e) {
    count(op, e instanceof HsmClientError ? e.codeName : `thrown ${e instanceof Error ? e.message.slice(0, 60) : String(e)}`);
  }
}

function rawCall(client: grpc.Client, path: string, body: Buffer, token?: string): Promise<string> {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return new Promise((res) =>
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      md,
      { deadline: new Date(Date.now() + 30_000) },
      (e) => res(e ? (grpc.status[e.code] ?? String(e.code)) : "OK"),
    ),
  );
}

/** A bearer token from a raw Login (the SDK keeps its own token to itself). */
function rawLogin(endpoint: string, username: string, password: string): Promise<string> {
  const c = new UserServiceClient(endpoint, grpc.credentials.createInsecure());
  return new Promise<string>((res, rej) => c.login({ username, password }, (e, s) => (c.close(), e ? rej(e) : res(s.token))));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "hsmd-soak-"));
  const { child, grpc: endpoint, dataDir } = await startDaemon(dir);
  let died = false;
  child.on("exit", () => (died = true));
  const pid = child.pid!;
  try {
    const otp = readFileSync(join(dataDir, "first-officer-password"), "utf8").trim();
    const officerPassword = randomBytes(18).toString("base64url");
    const userPassword = randomBytes(18).toString("base64url");
    const co = new HsmClient({ endpoint, defaultDeadlineMs: 30_000 });
    await co.login("admin", otp);
    await co.changePassword(otp, officerPassword);
    await co.createUser({ username: "soak", role: Role.ROLE_CRYPTO_USER, password: userPassword });
    co.close();
    const user = new HsmClient({ endpoint, defaultDeadlineMs: 30_000 });
    await user.login("soak", userPassword);
    // The raw (bad) requests carry a session of their own, so that they get past authentication.
    const token = await rawLogin(endpoint, "soak", userPassword);
    const ec = await user.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "soak-ec" });
    const aes = await user.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "soak-aes" });
    const raw = new grpc.Client(endpoint, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": -1 });
    const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
    const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
    const msg = Buffer.from("soak message");
    const block = randomBytes(4096);

    /** The mix, by weight: mostly crypto, some key churn and logins, some bad requests. */
    const ops: Array<[number, string, () => Promise<unknown>]> = [
      [
        30,
        "Sign+Verify",
        async () => {
          const { signature } = await user.sign({ keyId: ec.id, algorithm: ECDSA, message: msg });
          const { valid } = await user.verify({ keyId: ec.id, algorithm: ECDSA, message: msg, signature });
          if (!valid) throw new Error("signature did not verify");
        },
      ],
      [
        30,
        "Encrypt+Decrypt",
        async () => {
          const e = await user.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: block });
          const d = await user.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv });
          if (!Buffer.from(d.plaintext).equals(block)) throw new Error("decrypt did not round-trip");
        },
      ],
      [8, "BatchSign(16)", () => user.batchSign({ items: Array.from({ length: 16 }, () => ({ keyId: ec.id, algorithm: ECDSA, message: msg })) })],
      [8, "BatchEncrypt(8x4KiB)", () => user.batchEncrypt({ items: Array.from({ length: 8 }, () => ({ keyId: aes.id, algorithm: GCM, plaintext: block })) })],
      [
        4,
        "GenerateKey+DeleteKey",
        async () => {
          const k = await user.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "soak-churn" });
          await user.deleteKey({ keyId: k.id });
        },
      ],
      [
        2,
        "Login+Logout",
        async () => {
          const c = new HsmClient({ endpoint, defaultDeadlineMs: 30_000 });
          try {
            await c.login("soak", userPassword);
            await c.logout();
          } finally {
            c.close();
          }
        },
      ],
      [
        2,
        "bad: Login unknown user",
        async () => {
          const c = new HsmClient({ endpoint, defaultDeadlineMs: 30_000 });
          try {
            await c.login("nobody", "wrong-password-1");
          } finally {
            c.close();
          }
        },
      ],
      [4, "bad: malformed Sign (raw)", () => rawCall(raw, "/hsm.v1.CryptoService/Sign", randomBytes(1 + Math.floor(Math.random() * 64)), token)],
      [4, "bad: Sign unknown key", () => user.sign({ keyId: "00000000-0000-4000-8000-000000000000", algorithm: ECDSA, message: msg })],
      [2, "bad: BatchSign 257 items", () => user.batchSign({ items: Array.from({ length: 257 }, () => ({ keyId: ec.id, algorithm: ECDSA, message: msg })) })],
      [1, "bad: BatchEncrypt 2.6M items (raw)", () => rawCall(raw, "/hsm.v1.CryptoService/BatchEncrypt", Buffer.alloc(5 * 1024 * 1024, Buffer.from([0x0a, 0x00])), token)],
    ];
    const total = ops.reduce((n, [w]) => n + w, 0);
    const pick = () => {
      let r = Math.random() * total;
      for (const o of ops) if ((r -= o[0]) < 0) return o;
      return ops[0]!;
    };

    const start = memoryOf(pid);
    let peak = start.rss;
    const sampler = setInterval(() => {
      if (!died) peak = Math.max(peak, memoryOf(pid).rss);
    }, 500);
    const t0 = Date.now();
    const end = t0 + MINUTES * 60_000;
    console.log(`soak: ${MINUTES} min, ${WORKERS} workers against hsmd pid ${pid} at ${endpoint}; RSS at start ${mib(start.rss)}`);
    const progress = setInterval(() => {
      const done = [...outcomes.values()].reduce((n, m) => n + [...m.values()].reduce((a, b) => a + b, 0), 0);
      console.log(`  ${Math.round((Date.now() - t0) / 1000)} s: ${done} calls, RSS ${died ? "(daemon exited)" : mib(memoryOf(pid).rss)}`);
    }, 30_000);
    await Promise.all(
      Array.from({ length: WORKERS }, async () => {
        while (Date.now() < end && !died) {
          const [, name, fn] = pick();
          await run(name, fn);
        }
      }),
    );
    clearInterval(sampler);
    clearInterval(progress);
    const seconds = (Date.now() - t0) / 1000;
    const last = died ? undefined : memoryOf(pid);
    console.log(`\nafter ${seconds.toFixed(0)} s: daemon ${died ? "EXITED" : "alive"}`);
    if (last) console.log(`RSS start ${mib(start.rss)}, end ${mib(last.rss)}, peak ${mib(Math.max(peak, last.rss))} (sampled every 0.5 s; VmHWM ${mib(last.hwm)})`);
    const rows = [...outcomes].sort(([a], [b]) => a.localeCompare(b));
    let bad = died;
    for (const [op, m] of rows) {
      const n = [...m.values()].reduce((a, b) => a + b, 0);
      console.log(`  ${op.padEnd(36)} ${String(n).padStart(8)}  ${[...m].map(([s, c]) => `${s} ${c}`).join(", ")}`);
      for (const s of m.keys()) if (s === "INTERNAL" || s === "UNKNOWN" || s === "DEADLINE_EXCEEDED" || s.startsWith("thrown")) bad = true;
    }
    const calls = rows.reduce((n, [, m]) => n + [...m.values()].reduce((a, b) => a + b, 0), 0);
    console.log(`  ${"all".padEnd(36)} ${String(calls).padStart(8)}  (${(calls / seconds).toFixed(0)}/s)`);
    raw.close();
    user.close();
    if (bad) {
      console.log("FAILED: the daemon died, or a call answered INTERNAL, UNKNOWN or an unexpected outcome");
      process.exitCode = 1;
    }
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => (died ? r(undefined) : child.once("exit", r)));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
