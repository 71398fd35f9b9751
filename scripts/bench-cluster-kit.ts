/**
 * What the cluster benchmarks share (scripts/bench-cluster.ts, scripts/bench-scale.ts): real etcd
 * members and hsmd daemons as child processes on loopback, each daemon on its own SoftHSM2 token,
 * joined through the real ceremony (init, join requests approved by the first officer with the
 * serving node's SO PIN), a crypto user on every endpoint, and the clean-up of every process and
 * temporary directory on exit, Ctrl-C or SIGTERM.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Etcd3 } from "etcd3";
import { HsmClient, Role } from "../src/sdk";
import { initTokenFromFiles } from "./init-token";

const MODULE = process.env.SOFTHSM2_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so";
const ETCD = process.env.ETCD_BIN ?? "/usr/bin/etcd";
/** The repository's root (scripts are compiled to dist/scripts). */
export const ROOT = resolve(__dirname, "../..");
/** The daemon's entry point the benchmarks spawn. */
export const MAIN = join(ROOT, "dist/src/main.js");

const procs: ChildProcess[] = [];
const dirs: string[] = [];
/** SIGKILLs every child process the kit started that is still running. */
export const killAll = (): void => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
};
/** Removes a temporary directory now and forgets it. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  const i = dirs.indexOf(dir);
  if (i >= 0) dirs.splice(i, 1);
}
/** Registers a temporary directory removed on exit (or by removeDir). */
export function tempDir(dir: string): string {
  dirs.push(dir);
  return dir;
}
let installed = false;
/** Kills the children and removes the temporary directories on exit, Ctrl-C and SIGTERM (once). */
export function installCleanup(): void {
  if (installed) return;
  installed = true;
  const clean = () => {
    killAll();
    for (const d of [...dirs]) removeDir(d);
  };
  process.on("exit", clean);
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      process.stderr.write(`\n${sig}: stopping every etcd member and daemon, removing the temporary directories\n`);
      clean();
      process.exit(130);
    });
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

/** A running etcd cluster: its client endpoints (host:port) and its member processes. */
export interface EtcdCluster {
  endpoints: string[];
  members: ChildProcess[];
}

/** A real etcd cluster of `n` members on loopback, `extraFlags` added to every member's command line. */
export async function startEtcd(dir: string, n: number, extraFlags: string[] = []): Promise<EtcdCluster> {
  const ms = await Promise.all(Array.from({ length: n }, async (_, i) => ({ name: `e${i}`, client: await freePort(), peer: await freePort() })));
  const initial = ms.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(",");
  const token = `bench-${randomBytes(4).toString("hex")}`;
  const members: ChildProcess[] = [];
  for (const m of ms) {
    const p = spawn(
      ETCD,
      [
        ...["--name", m.name, "--data-dir", join(dir, m.name)],
        ...["--listen-client-urls", `http://127.0.0.1:${m.client}`, "--advertise-client-urls", `http://127.0.0.1:${m.client}`],
        ...["--listen-peer-urls", `http://127.0.0.1:${m.peer}`, "--initial-advertise-peer-urls", `http://127.0.0.1:${m.peer}`],
        ...["--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token],
        ...["--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"],
        ...extraFlags,
      ],
      { stdio: "ignore" },
    );
    procs.push(p);
    members.push(p);
  }
  const endpoints = ms.map((m) => `127.0.0.1:${m.client}`);
  const c = new Etcd3({ hosts: endpoints.map((e) => `http://${e}`) });
  try {
    for (let i = 0; i < 200; i++) {
      try {
        await c.get("probe").string();
        return { endpoints, members };
      } catch {
        await sleep(100);
      }
    }
  } finally {
    c.close();
  }
  throw new Error("etcd did not start");
}

/** One hsmd member as the benchmarks run it. */
export interface Node {
  id: string;
  grpc: string;
  admin: string;
  dataDir: string;
  soPin: string;
  child: ChildProcess;
  config: string;
  env: NodeJS.ProcessEnv;
  out: string;
}

/** How the benchmarks configure each daemon. */
export interface NodeOptions {
  /** device.poolSize (default 8). */
  poolSize?: number;
  /** Merged into the `device` section of the config (e.g. an objectBudget). */
  device?: Record<string, unknown>;
}

/** One hsmd member: its own token, ports and data dir; `init`, `join` or `start`. */
export async function prepareNode(dir: string, id: string, etcd: string[], cluster: string, options: NodeOptions = {}): Promise<Node> {
  const root = join(dir, id);
  mkdirSync(join(root, "tokens"), { recursive: true });
  const conf = join(root, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${join(root, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const pin = randomBytes(12).toString("hex");
  const soPin = randomBytes(12).toString("hex");
  const env = { ...process.env, SOFTHSM2_CONF: conf, UV_THREADPOOL_SIZE: "12" };
  writeFileSync(join(root, "pin"), pin, { mode: 0o600 });
  writeFileSync(join(root, "so-pin"), soPin, { mode: 0o600 });
  initTokenFromFiles(env, id, join(root, "pin"), join(root, "so-pin"));
  const grpc = `127.0.0.1:${await freePort()}`;
  const admin = `127.0.0.1:${await freePort()}`;
  const config = join(root, "hsmd.json");
  writeFileSync(
    config,
    JSON.stringify({
      node: { id, dataDir: join(root, "data") },
      listen: { grpc, admin },
      devMode: true,
      device: { profile: "softhsm2", module: MODULE, tokenLabel: id, poolSize: options.poolSize ?? 8, pin: { file: join(root, "pin") }, ...options.device },
      cluster: { name: cluster, etcd: { endpoints: etcd } },
    }),
  );
  return { id, grpc, admin: `http://${admin}`, dataDir: join(root, "data"), soPin, child: undefined as unknown as ChildProcess, config, env, out: "" };
}

/** Spawns the daemon with a command; resolves once it printed "hsmd ready", rejects if it exits first. */
export function launch(n: Node, command: "init" | "join" | "start"): Promise<void> {
  n.out = "";
  n.child = spawn(process.execPath, [MAIN, command, "--config", n.config], { env: n.env, stdio: ["ignore", "pipe", "pipe"] });
  procs.push(n.child);
  let err = "";
  n.child.stderr!.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
    if (process.env.BENCH_VERBOSE) process.stderr.write(`[${n.id}] ${d.toString()}`);
  });
  return new Promise((res, rej) => {
    n.child.stdout!.on("data", (d: Buffer) => {
      // Only the start of the output matters (the join fingerprint, "hsmd ready"): keep it bounded.
      if (n.out.length < 64_000) n.out += d.toString();
      if (n.out.includes("hsmd ready")) res();
    });
    n.child.once("exit", (code) => rej(new Error(`${n.id} exited (${code}): ${err.slice(-2000)}`)));
  });
}

/** Stops a daemon with SIGTERM and waits for it to exit. */
export async function stopNode(n: Node): Promise<void> {
  if (n.child.exitCode !== null || n.child.signalCode !== null) return;
  const gone = new Promise((r) => n.child.once("exit", r));
  n.child.kill("SIGTERM");
  await gone;
}

async function fingerprintOf(n: Node): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const m = /transport key sha256 ([0-9a-f]{64})/.exec(n.out);
    if (m) return m[1]!;
    await sleep(50);
  }
  throw new Error(`${n.id} printed no join request`);
}

/** A started cluster: nodes, etcd, the officer and a crypto user (on all endpoints) with its password. */
export interface Cluster {
  name: string;
  nodes: Node[];
  etcd: EtcdCluster;
  user: HsmClient;
  officer: HsmClient;
  username: string;
  userPassword: string;
}

/** n nodes on an n-member etcd (extra etcd flags, daemon options): the first inits, the others join. */
export async function startCluster(dir: string, n: number, etcdFlags: string[] = [], options: NodeOptions = {}): Promise<Cluster> {
  const etcd = await startEtcd(join(dir, "etcd"), n, etcdFlags);
  const name = `bench${n}`;
  const nodes: Node[] = [];
  for (let i = 1; i <= n; i++) nodes.push(await prepareNode(dir, `n${i}`, etcd.endpoints, name, options));
  await launch(nodes[0]!, "init");
  const otp = readFileSync(join(nodes[0]!.dataDir, "first-officer-password"), "utf8").trim();
  const officerPassword = randomBytes(18).toString("base64url");
  const userPassword = randomBytes(18).toString("base64url");
  const officer = new HsmClient({ endpoint: nodes[0]!.grpc });
  await officer.login("admin", otp);
  await officer.changePassword(otp, officerPassword);
  for (const joiner of nodes.slice(1)) {
    const ready = launch(joiner, "join");
    await officer.approveJoin({ nodeId: joiner.id, transportKeySha256: await fingerprintOf(joiner), soPin: nodes[0]!.soPin });
    await ready;
  }
  await officer.createUser({ username: "bench", role: Role.ROLE_CRYPTO_USER, password: userPassword });
  const user = new HsmClient({ endpoints: nodes.map((x) => x.grpc), defaultDeadlineMs: 30_000 });
  await user.login("bench", userPassword);
  return { name, nodes, etcd, user, officer, username: "bench", userPassword };
}

/** The p-quantile (0..1) of a sample, nearest rank below; NaN when empty. */
export const q = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : Number.NaN;
};

/** A node's /v1/status figures the benchmarks read. */
export async function status(n: Node): Promise<{ storeRevision: number; applied: number; keys: number }> {
  const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { store: { revision: number; appliedRevision: number }; keys: number };
  return { storeRevision: s.store.revision, applied: s.store.appliedRevision, keys: s.keys };
}
