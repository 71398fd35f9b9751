/**
 * The cluster part of `npm run bench`: key creations per second (AES-256 and P-256, acknowledged
 * after the etcd commit) on 1 node (1 etcd member) and on 3 nodes (3 etcd members), replication lag
 * from commit to materialization on every node (p50/p99), and the time a node 10,000 records behind
 * takes to catch up. Everything runs on loopback: real etcd members, hsmd daemons as child processes
 * on their own SoftHSM2 tokens, joined through the real ceremony, called through the SDK.
 *
 *   node dist/scripts/bench-cluster.js [--seconds N] [--behind N] [--no-write]
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HsmClient, KeySpec, Role } from "../src/sdk";
import { maxKeyRevision, ReplicationWatch } from "./bench-scale-etcd";
import { replicationLags } from "./bench-scale-stats";
import { installCleanup, killAll, launch, MAIN, q, ROOT, removeDir, startCluster, status, tempDir } from "./bench-cluster-kit";

const args = process.argv.slice(2);
const arg = (name: string, def: number) => (args.includes(name) && Number(args[args.indexOf(name) + 1]) > 0 ? Number(args[args.indexOf(name) + 1]) : def);
const SECONDS = arg("--seconds", 3);
const BEHIND = arg("--behind", 10_000);
const WRITE = !args.includes("--no-write");
const CONCURRENCY = 32;
installCleanup();

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

/**
 * Lag from acknowledgement to each node's watermark passing the key's commit revision (the bench's
 * watch saw both): a node's watermark is the revision up to which it has applied every key event.
 */
async function lags(etcd: string[], cluster: string, watch: ReplicationWatch, acks: Array<{ id: string; at: number }>, nodes: string[]): Promise<number[]> {
  const target = await maxKeyRevision(
    etcd,
    cluster,
    acks.slice(-4 * CONCURRENCY).map((a) => a.id),
  );
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && nodes.some((n) => (watch.high().get(n) ?? 0) < target)) await sleep(20);
  const revision = new Map(watch.keys.map((k) => [k.id, k.revision]));
  const keys = acks.flatMap((a) => (revision.has(a.id) ? [{ id: a.id, revision: revision.get(a.id)!, at: a.at }] : []));
  return replicationLags(keys, watch.marks, nodes).lags;
}

async function main(): Promise<void> {
  if (!existsSync(MAIN)) throw new Error("build first (npm run build)");
  const rows: string[][] = [];
  const notes: string[] = [];
  for (const n of [1, 3]) {
    const dir = tempDir(mkdtempSync(join(tmpdir(), `hsmd-bench-cluster${n}-`)));
    try {
      const { nodes, etcd: etcdCluster, user, officer } = await startCluster(dir, n);
      const etcd = etcdCluster.endpoints;
      const watch = new ReplicationWatch(etcd, `bench${n}`, 1);
      await watch.start();
      const aes = await creations(user, KeySpec.KEY_SPEC_AES_256, SECONDS);
      const p256 = await creations(user, KeySpec.KEY_SPEC_EC_P256, SECONDS);
      let lagCell = ["", ""];
      if (n === 3) {
        const l = await lags(
          etcd,
          `bench${n}`,
          watch,
          aes.acks.slice(-300),
          nodes.map((x) => x.id),
        );
        lagCell = [q(l, 0.5).toFixed(1), q(l, 0.99).toFixed(1)];
      }
      await watch.stop();
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
          `Catch-up: node n3 stopped while ${BEHIND} keys were created through n1 and n2, then started: serving after ${(ready / 1000).toFixed(1)} s, applied to the store's revision after ${(caught / 1000).toFixed(1)} s; it then knew ${s3.keys} keys.`,
        );
        process.stdout.write(`${notes[notes.length - 1]}\n`);
        writer.close();
      }
      user.close();
      officer.close();
      for (const node of nodes) node.child.kill("SIGTERM");
      await sleep(500);
    } finally {
      killAll();
      removeDir(dir);
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

Measured by \`npm run bench\` (scripts/bench-cluster.ts) on ${new Date().toISOString().slice(0, 10)}, on the same machine: etcd members and hsmd daemons on loopback, each daemon on its own SoftHSM2 token (pool 8), created by a crypto user through the SDK over all endpoints, ${CONCURRENCY} creations in flight for ${SECONDS} s per cell. A creation is acknowledged after the etcd commit. Replication lag: from the acknowledgement to the first time the bench saw each node's watermark (\`watermarks/<node>\`, the revision up to which it applied every key event) at or past the key's commit revision, over the last 300 AES-256 keys created, every node counted (the creating node too), a watermark seen before the client read the answer counting 0. On one 2-core machine every etcd member, daemon and the client share the cores, so the 3-node figures measure contention as much as replication.

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
    process.exit(1);
  },
);
