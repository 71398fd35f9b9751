/**
 * `npm run bench:scale` (not in CI; targets, not tests): fills a 3-node cluster on this machine to N
 * keys and prints, in the same run, the raw etcd ceiling, the fill rate, replication lag p50/p99,
 * etcd's DB size, each daemon's RSS, bytes per record by kind, sign p50/p99 on hot and on cold keys
 * with the hit ratio, and the catch-up of a node stopped during `--behind` creations; then the same
 * at `--compare` keys, and the targets next to the results.
 *
 *   node dist/scripts/bench-scale.js [--keys N] [--compare N] [--behind N] [--inflight N]
 *                                    [--sign-seconds S] [--sign-inflight N] [--budget N] [--write]
 *
 * --keys (default 1,000,000), --compare (default 10,000; 0 skips it), --behind (default 100,000,
 * capped at N/2), --inflight (default 32: creations and raw etcd txns in flight), --sign-seconds
 * (default 5), --sign-inflight (default 4), --budget (each daemon's device.objectBudget; default the
 * profile's), --write (replace the Scale section of docs/BENCHMARKS.md).
 * Progress goes to stderr every 5 s; every process and temporary directory goes on exit or Ctrl-C.
 */
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { installCleanup, killAll, MAIN, ROOT, removeDir, startCluster, status, stopNode, tempDir } from "./bench-cluster-kit";
import { scaleSection, scaleTables, writeScaleSection } from "./bench-scale-doc";
import { dbStatus, maxKeyRevision, ReplicationWatch, rawCeiling, recordBytes, SCALE_ETCD_FLAGS, watermarkOf } from "./bench-scale-etcd";
import { catchUp, deviceObjects, fill, type Made, nodeClient, type Progress, phase, rssOf, signPhase } from "./bench-scale-load";
import { replicationLags, type ScaleRun } from "./bench-scale-stats";

const args = process.argv.slice(2);
/** A non-negative integer option, or its default. */
function intArg(name: string, def: number): number {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = Number(args[i + 1]);
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name} takes a non-negative integer (got ${args[i + 1]})`);
  return v;
}
const KEYS = intArg("--keys", 1_000_000);
const COMPARE = intArg("--compare", 10_000);
const BEHIND = intArg("--behind", 100_000);
const INFLIGHT = Math.max(1, intArg("--inflight", 32));
const SIGN_SECONDS = Math.max(1, intArg("--sign-seconds", 5));
const SIGN_INFLIGHT = Math.max(1, intArg("--sign-inflight", 4));
const BUDGET = intArg("--budget", 0);
const WRITE = args.includes("--write");
const CEILING_SECONDS = 5;
const HOT_KEYS = 8;
/** Every SAMPLE-th create is followed for the lag. */
const SAMPLE = 100;

const log = (s: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

/** One run at `n` keys: a fresh etcd cluster and 3 daemons, measured, then all of it removed. */
async function run(n: number): Promise<ScaleRun> {
  const dir = tempDir(mkdtempSync(join(tmpdir(), "hsmd-bench-scale-")));
  const progress: Progress = { phase: "starting", done: 0, total: 0, t0: performance.now() };
  const ticker = setInterval(() => {
    const s = (performance.now() - progress.t0) / 1000;
    const count = progress.total > 0 ? ` ${progress.done}/${progress.total} (${(progress.done / Math.max(s, 0.001)).toFixed(0)}/s)` : "";
    log(`[N=${n}] ${progress.phase}:${count} ${s.toFixed(0)} s`);
  }, 5000);
  ticker.unref();
  try {
    log(`[N=${n}] starting 3 etcd members and 3 daemons`);
    const cl = await startCluster(dir, 3, SCALE_ETCD_FLAGS, BUDGET > 0 ? { device: { objectBudget: BUDGET } } : {});
    const endpoints = cl.etcd.endpoints;
    const clients = await Promise.all(cl.nodes.map(async (x) => ({ node: x.id, client: await nodeClient(x, cl.username, cl.userPassword) })));

    // The record size of each kind, for the raw ceiling's puts.
    phase(progress, "probe keys");
    const probe = await fill(clients, 100, Math.min(INFLIGHT, 100), 0, progress);
    const sizes = await recordBytes(endpoints, cl.name, byKind(probe.made, 5));
    const mean = Math.round(0.495 * (sizes["AES-256"] ?? 0) + 0.495 * (sizes["P-256"] ?? 0) + 0.01 * (sizes["RSA-2048"] ?? 0));
    phase(progress, "raw etcd ceiling");
    const ceiling = await rawCeiling(endpoints, mean, INFLIGHT, CEILING_SECONDS);
    log(`[N=${n}] raw etcd ceiling: ${ceiling.toFixed(0)} txn puts/s of ${mean} B, ${INFLIGHT} in flight`);

    const watch = new ReplicationWatch(endpoints, cl.name, SAMPLE);
    await watch.start();
    phase(progress, "fill");
    const filled = await fill(clients, Math.max(0, n - probe.made.length), INFLIGHT, probe.made.length, progress);
    const made = [...probe.made, ...filled.made];
    log(`[N=${n}] filled ${made.length} keys at ${filled.perSec.toFixed(0)}/s (${filled.failed} failed)`);

    // Lag, and a quiet cluster for the sign phases: wait (bounded) until every node applied the store's revision.
    phase(progress, "replication: every node applying the fill");
    const applied = async (x: (typeof cl.nodes)[number]) => (await watermarkOf(endpoints, cl.name, x.id)) ?? (await status(x)).applied;
    const filledAt = await maxKeyRevision(
      endpoints,
      cl.name,
      made.slice(-4 * INFLIGHT).map((m) => m.id),
    );
    const until = performance.now() + 300_000;
    const behindNodes = async () => (await Promise.all(cl.nodes.map(async (x) => ((await applied(x)) < filledAt ? x.id : undefined)))).filter(Boolean);
    for (let late = await behindNodes(); late.length > 0; late = await behindNodes()) {
      if (performance.now() > until) {
        log(`[N=${n}] ${late.join(", ")} had not applied revision ${filledAt} within 300 s: measuring anyway`);
        break;
      }
      await sleep(100);
    }
    await watch.stop();
    const creator = new Map(made.map((m) => [m.id, m.node]));
    const lag = replicationLags(
      watch.keys.map((k) => ({ ...k, createdOn: creator.get(k.id) })),
      watch.marks,
      cl.nodes.map((x) => x.id),
    );
    if (watch.marks.length === 0) log(`[N=${n}] no watermark rows under hsmd/${cl.name}/watermarks/: lag n/a`);

    const db = await dbStatus(endpoints);
    const bytes = await recordBytes(endpoints, cl.name, byKind(made, 5));

    // Sign: hot keys in turn, then cold keys uniformly from all N.
    const usable = made.filter((m) => m.kind !== "RSA-2048");
    const hotSet = [...usable.filter((m) => m.kind === "AES-256").slice(0, HOT_KEYS / 2), ...usable.filter((m) => m.kind === "P-256").slice(0, HOT_KEYS / 2)];
    let turn = 0;
    phase(progress, "hot sign");
    const hot = await signPhase(cl.user, cl.nodes, () => hotSet[turn++ % hotSet.length]!, SIGN_SECONDS, SIGN_INFLIGHT);
    phase(progress, "cold sign");
    const cold = await signPhase(cl.user, cl.nodes, () => made[Math.floor(Math.random() * made.length)]!, SIGN_SECONDS, SIGN_INFLIGHT);
    const objects = await deviceObjects(cl.nodes);
    const rss = Object.fromEntries(cl.nodes.map((x) => [x.id, rssOf(x)]));
    for (const c of clients) c.client.close();

    const behind = Math.min(BEHIND, Math.floor(n / 2));
    let catchUpFigures: ScaleRun["catchUp"];
    if (behind > 0) {
      const r = await catchUp({
        nodes: cl.nodes,
        username: cl.username,
        password: cl.userPassword,
        inflight: INFLIGHT,
        behind,
        from: made.length,
        progress,
        lastRevision: (ids) => maxKeyRevision(endpoints, cl.name, ids),
        appliedRevision: applied,
      });
      catchUpFigures = r.figures;
      log(`[N=${n}] catch-up of ${behind}: ready ${(r.figures.readyMs / 1000).toFixed(1)} s, sign ${(r.figures.signMs / 1000).toFixed(1)} s`);
    }
    cl.user.close();
    cl.officer.close();
    await Promise.all(cl.nodes.map((x) => stopNode(x)));
    return {
      keys: n,
      inflight: INFLIGHT,
      ceiling,
      ceilingRecordBytes: mean,
      fillRate: filled.perSec,
      fillFailed: probe.failed + filled.failed,
      lag,
      dbSize: db.dbSize,
      dbSizeInUse: db.dbSizeInUse,
      rss,
      recordBytes: bytes,
      hot,
      cold,
      objects,
      catchUp: catchUpFigures,
    };
  } finally {
    clearInterval(ticker);
    killAll();
    removeDir(dir);
  }
}

/** Up to `per` ids of each kind. */
function byKind(made: Made[], per: number): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const m of made) {
    const l = (out[m.kind] ??= []);
    if (l.length < per) l.push(m.id);
  }
  return out;
}

async function main(): Promise<void> {
  if (!existsSync(MAIN)) throw new Error("build first (npm run build)");
  if (KEYS < 200) throw new Error("--keys must be at least 200");
  installCleanup();
  const sizes = COMPARE > 0 && COMPARE !== KEYS ? [COMPARE, KEYS] : [KEYS];
  const byN = new Map<number, ScaleRun>();
  for (const n of sizes) byN.set(n, await run(n));
  const runs = [byN.get(KEYS)!, ...(sizes.length > 1 ? [byN.get(COMPARE)!] : [])];
  const { results, targets } = scaleTables(runs);
  process.stdout.write(`\n${results}\n\n${targets}\n`);
  if (WRITE) {
    writeScaleSection(join(ROOT, "docs/BENCHMARKS.md"), scaleSection(runs, { signSeconds: SIGN_SECONDS, signInflight: SIGN_INFLIGHT, hotKeys: HOT_KEYS, sample: SAMPLE, etcdFlags: SCALE_ETCD_FLAGS }));
    process.stdout.write("wrote the Scale section of docs/BENCHMARKS.md\n");
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`bench-scale failed: ${e?.stack ?? e}\n`);
    process.exit(1);
  },
);
