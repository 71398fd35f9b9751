/**
 * The cluster part of `npm run bench`: key creations per second (AES-256 and P-256, acknowledged
 * after the etcd commit) on 1 node (1 etcd member) and on 3 nodes (3 etcd members), replication lag
 * from commit to materialization on every node (p50/p99), and the time a node 10,000 records behind
 * takes to catch up. Everything runs on loopback: real etcd members, hsmd daemons as child processes
 * on their own SoftHSM2 tokens, joined through the real ceremony, called through the SDK.
 *
 *   node dist/scripts/bench-cluster.js [--seconds N] [--behind N] [--no-write]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { initTokenFromFiles } from "./init-token";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Etcd3 } from "etcd3";
import { HsmClient, KeySpec, Role } from "../src/sdk";

const MODULE = process.env.SOFTHSM2_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so";
const ETCD = process.env.ETCD_BIN ?? "/usr/bin/etcd";
const args = process.argv.slice(2);
const arg = (name: string, def: number) => (args.includes(name) && Number(args[args.indexOf(name) + 1]) > 0 ? Number(args[args.indexOf(name) + 1]) : def);
const SECONDS = arg("--seconds", 3);
const BEHIND = arg("--behind", 10_000);
const WRITE = !args.includes("--no-write");
const ROOT = resolve(__dirname, "../..");
const MAIN = join(ROOT, "dist/src/main.js");
const CONCURRENCY = 32;

const procs: ChildProcess[] = [];
const kill = () => procs.forEach((p) => p.exitCode === null && p.kill("SIGKILL"));
process.on("exit", kill);

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

/** A real etcd cluster of `n` members on loopback. */
async function startEtcd(dir: string, n: number): Promise<string[]> {
  const ms = await Promise.all(Array.from({ length: n }, async (_, i) => ({ name: `e${i}`, client: await freePort(), peer: await freePort() })));
  const initial = ms.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(",");
  const token = `bench-${randomBytes(4).toString("hex")}`;
  for (const m of ms) {
    const p = spawn(
      ETCD,
      [
        "--name",
        m.name,
        "--data-dir",
        join(dir, m.name),
        "--listen-client-urls",
        `http://127.0.0.1:${m.client}`,
        "--advertise-client-urls",
        `http://127.0.0.1:${m.client}`,
        "--listen-peer-urls",
        `http://127.0.0.1:${m.peer}`,
        "--initial-advertise-peer-urls",
        `http://127.0.0.1:${m.peer}`,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--log-level",
        "error",
      ],
      { stdio: "ignore" },
    );
    procs.push(p);
  }
  const endpoints = ms.map((m) => `127.0.0.1:${m.client}`);
  const c = new Etcd3({ hosts: endpoints.map((e) => `http://${e}`) });
  for (let i = 0; i < 200; i++) {
    try {
      await c.get("probe").string();
      c.close();
      return endpoints;
    } catch {
      await sleep(100);
    }
  }
  throw new Error("etcd did not start");
}

interface Node {
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

/** One hsmd member: its own token, ports and data dir; `init`, `join` or `start`. */
async function prepareNode(dir: string, id: string, etcd: string[], cluster: string): Promise<Node> {
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
      device: { profile: "softhsm2", module: MODULE, tokenLabel: id, poolSize: 8, pin: { file: join(root, "pin") } },
      cluster: { name: cluster, etcd: { endpoints: etcd } },
    }),
  );
  return { id, grpc, admin: `http://${admin}`, dataDir: join(root, "data"), soPin, child: undefined as unknown as ChildProcess, config, env, out: "" };
}

function launch(n: Node, command: "init" | "join" | "start"): Promise<void> {
  n.out = "";
  n.child = spawn(process.execPath, [MAIN, command, "--config", n.config], { env: n.env, stdio: ["ignore", "pipe", "pipe"] });
  procs.push(n.child);
  let err = "";
  n.child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
    if (process.env.BENCH_VERBOSE) process.stderr.write(`[${n.id}] ${d.toString()}`);
  });
  return new Promise((res, rej) => {
    n.child.stdout!.on("data", (d: Buffer) => {
      n.out += d.toString();
      if (n.out.includes("hsmd ready")) res();
    });
    n.child.once("exit", (code) => rej(new Error(`${n.id} exited (${code}): ${err.slice(-2000)}`)));
  });
}

async function fingerprintOf(n: Node): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const m = /transport key sha256 ([0-9a-f]{64})/.exec(n.out);
    if (m) return m[1]!;
    await sleep(50);
  }
  throw new Error(`${n.id} printed no join request`);
}

/** n nodes on an n-member etcd: the first inits, the others join; returns the nodes, an officer and a crypto user on all endpoints. */
async function startCluster(dir: string, n: number): Promise<{ nodes: Node[]; etcd: string[]; user: HsmClient; officer: HsmClient }> {
  const etcd = await startEtcd(join(dir, "etcd"), n);
  const cluster = `bench${n}`;
  const nodes: Node[] = [];
  for (let i = 1; i <= n; i++) nodes.push(await prepareNode(dir, `n${i}`, etcd, cluster));
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
  return { nodes, etcd, user, officer };
}

/** Creations per second for `seconds`, `CONCURRENCY` in flight; returns the rate and each acknowledged key with its ack time. */
async function creations(user: HsmClient, spec: KeySpec, seconds: number): Promise<{ perSec: number; acks: Array<{ id: string; at: number }> }> {
  const acks: Array<{ id: string; at: number }> = [];
  const end = Date.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (Date.now() < end) {
        const k = await user.generateKey({ spec, label: "bench", requestId: randomBytes(8).toString("hex") });
        acks.push({ id: k.id, at: Date.now() });
      }
    }),
  );
  return { perSec: acks.length / ((performance.now() - t0) / 1000), acks };
}

/** Lag from acknowledgement to materialization on each node: coverage entries carry the node's time of materialization. */
async function lags(etcd: string[], cluster: string, acks: Array<{ id: string; at: number }>, nodes: number): Promise<number[]> {
  const c = new Etcd3({ hosts: etcd.map((e) => `http://${e}`) });
  const out: number[] = [];
  const deadline = Date.now() + 60_000;
  try {
    for (const a of acks) {
      for (;;) {
        const kv = await c.getAll().prefix(`hsmd/${cluster}/coverage/${a.id}/`).strings();
        if (Object.keys(kv).length >= nodes || Date.now() > deadline) {
          for (const v of Object.values(kv)) out.push(Math.max(0, Date.parse(v) - a.at));
          break;
        }
        await sleep(20);
      }
    }
  } finally {
    c.close();
  }
  return out;
}

const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : NaN;
};

async function status(n: Node): Promise<{ storeRevision: number; applied: number; keys: number }> {
  const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { store: { revision: number; appliedRevision: number }; keys: number };
  return { storeRevision: s.store.revision, applied: s.store.appliedRevision, keys: s.keys };
}

async function main(): Promise<void> {
  if (!existsSync(MAIN)) throw new Error("build first (npm run build)");
  const rows: string[][] = [];
  const notes: string[] = [];
  for (const n of [1, 3]) {
    const dir = mkdtempSync(join(tmpdir(), `hsmd-bench-cluster${n}-`));
    try {
      const { nodes, etcd, user, officer } = await startCluster(dir, n);
      const aes = await creations(user, KeySpec.KEY_SPEC_AES_256, SECONDS);
      const p256 = await creations(user, KeySpec.KEY_SPEC_EC_P256, SECONDS);
      let lagCell = ["", ""];
      if (n === 3) {
        const l = await lags(etcd, `bench${n}`, aes.acks.slice(-300), n);
        lagCell = [q(l, 0.5).toFixed(1), q(l, 0.99).toFixed(1)];
      }
      rows.push([`${n} node${n > 1 ? "s" : ""} (${n} etcd member${n > 1 ? "s" : ""})`, aes.perSec.toFixed(0), p256.perSec.toFixed(0), ...lagCell]);
      process.stdout.write(`${rows[rows.length - 1]!.join("\t")}\n`);

      if (n === 3) {
        // Catch-up: stop n3, create BEHIND keys through n1 and n2, start n3 and time until it applied them.
        const n3 = nodes[2]!;
        n3.child.kill("SIGTERM");
        await new Promise((r) => n3.child.once("exit", r));
        const writer = new HsmClient({ endpoints: [nodes[0]!.grpc, nodes[1]!.grpc], defaultDeadlineMs: 30_000 });
        const pw = randomBytes(12).toString("hex");
        await officer.createUser({ username: "catchup", role: Role.ROLE_CRYPTO_USER, password: pw });
        await writer.login("catchup", pw);
        let made = 0;
        await Promise.all(
          Array.from({ length: 64 }, async () => {
            while (made < BEHIND) {
              made++;
              await writer.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "behind" });
            }
          }),
        );
        const target = (await status(nodes[0]!)).storeRevision;
        const t0 = performance.now();
        await launch(n3, "start");
        const ready = performance.now() - t0;
        for (;;) {
          const s = await status(n3);
          if (s.applied >= target) break;
          await sleep(100);
        }
        const caught = performance.now() - t0;
        const s3 = await status(n3);
        notes.push(
          `Catch-up: node n3 stopped while ${BEHIND} keys were created through n1 and n2, then started: serving after ${(ready / 1000).toFixed(1)} s (it checks every record against its HSM and unwraps the missing ones before it serves), applied to the store's revision after ${(caught / 1000).toFixed(1)} s; it then knew ${s3.keys} keys.`,
        );
        process.stdout.write(`${notes[notes.length - 1]}\n`);
        writer.close();
      }
      user.close();
      officer.close();
      for (const node of nodes) node.child.kill("SIGTERM");
      await sleep(500);
    } finally {
      kill();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const header = ["cluster", "AES-256 creations/s", "P-256 creations/s", "replication lag p50 ms", "replication lag p99 ms"];
  const table = [`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
  process.stdout.write(`\n${table}\n`);
  if (WRITE) {
    const file = join(ROOT, "docs/BENCHMARKS.md");
    const doc = existsSync(file) ? readFileSync(file, "utf8") : "# Benchmarks\n";
    const section = `<!-- cluster:start -->
## Cluster

Measured by \`npm run bench\` (scripts/bench-cluster.ts) on ${new Date().toISOString().slice(0, 10)}, on the same machine: etcd members and hsmd daemons on loopback, each daemon on its own SoftHSM2 token (pool 8), created by a crypto user through the SDK over all endpoints, ${CONCURRENCY} creations in flight for ${SECONDS} s per cell. A creation is acknowledged after the etcd commit. Replication lag: from the acknowledgement to each node's materialization of the key in its HSM (its coverage entry), over the last 300 AES-256 keys created, every node counted: the creating node's own entry is written with the commit (lag 0), and a node that materializes a key before the client has read the answer also counts 0. On one 2-core machine every etcd member, daemon and the client share the cores, so the 3-node figures measure contention as much as replication.

Targets (not tests): ≥ 500 creations/s on 3 nodes, lag p99 ≤ 50 ms, catch-up ≤ 10 s.

${table}

${notes.join("\n\n")}
<!-- cluster:end -->`;
    const next = doc.includes("<!-- cluster:start -->") ? doc.replace(/<!-- cluster:start -->[\s\S]*<!-- cluster:end -->/, section) : `${doc.trimEnd()}\n\n${section}\n`;
    writeFileSync(file, next);
    process.stdout.write("wrote the cluster section of docs/BENCHMARKS.md\n");
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`bench-cluster failed: ${e?.stack ?? e}\n`);
    kill();
    process.exit(1);
  },
);
