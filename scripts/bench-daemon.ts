/**
 * The daemon side of `npm run bench`: hsmd in a child process on the benchmark's token (its gRPC and
 * admin addresses from the ready banner), and the logged-in crypto user every daemon call runs as.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { HsmClient, Role } from "../src/sdk";
import { grpcAddressOf } from "./daemon-ready";

/** A daemon the benchmark started: its process, gRPC address and admin address (host:port, for /metrics). */
export interface BenchDaemon {
  child: ChildProcess;
  grpc: string;
  admin: string;
}

/**
 * A crypto user for the benchmark: the first officer changes its one-time password (random, like
 * every password here) and creates the user, which logs in; every daemon call then carries its session
 * and goes through authorization and the audit log, as in production.
 */
export async function benchUser(grpc: string, dataDir: string): Promise<HsmClient> {
  const { randomBytes } = await import("node:crypto");
  const otp = readFileSync(join(dataDir, "first-officer-password"), "utf8").trim();
  const officerPassword = randomBytes(18).toString("base64url");
  const userPassword = randomBytes(18).toString("base64url");
  const co = new HsmClient({ endpoint: grpc });
  await co.login("admin", otp);
  await co.changePassword(otp, officerPassword);
  await co.createUser({ username: "bench", role: Role.ROLE_CRYPTO_USER, password: userPassword });
  co.close();
  // Unary calls: the "through hsmd" rows measure the unary path (the SDK streams crypto by default).
  const client = new HsmClient({ endpoint: grpc, cryptoStream: false });
  await client.login("bench", userPassword);
  return client;
}

/** Starts `hsmd init` on token "bench" with a pool of `pool` sessions, and waits for its ready banner. */
export async function startDaemon(root: string, dir: string, conf: string, pinFile: string, pool: number): Promise<BenchDaemon> {
  const cfg = join(dir, "hsmd.json");
  writeFileSync(
    cfg,
    JSON.stringify({
      node: { id: "bench", dataDir: join(dir, "data") },
      listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
      devMode: true,
      // HSMD_BENCH_WORKERS: device.workers for the daemon (unset: the config's default); A/B of the session workers.
      device: { profile: "softhsm2", tokenLabel: "bench", poolSize: pool, pin: { file: pinFile }, ...(process.env.HSMD_BENCH_WORKERS ? { workers: Number(process.env.HSMD_BENCH_WORKERS) } : {}) },
    }),
  );
  // HSMD_BENCH_PROF=dir: the daemon writes V8 CPU profiles (main thread and workers) there when it stops.
  const prof = process.env.HSMD_BENCH_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.HSMD_BENCH_PROF}`] : [];
  const child = spawn(process.execPath, [...prof, join(root, "dist/src/main.js"), "init", "--config", cfg], {
    env: { ...process.env, SOFTHSM2_CONF: conf, UV_THREADPOOL_SIZE: String(pool + 4) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  const admin = new Promise<string>((res) => {
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /admin\s+http:\/\/(\S+)/.exec(out);
      if (m) res(m[1]!);
    });
  });
  const grpc = await grpcAddressOf(child);
  return { child, grpc, admin: await admin };
}
