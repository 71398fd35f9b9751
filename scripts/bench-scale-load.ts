/**
 * The daemon side of `npm run bench:scale`: filling the cluster with keys spread over the nodes
 * (mostly AES-256 and P-256, 1 % RSA-2048), sign phases on hot and cold keys, the daemons' key-use
 * counters (/metrics) and RSS (/proc), and the catch-up of a node stopped while keys were created.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { EncryptionAlgorithm, HsmClient, KeySpec, SigningAlgorithm } from "../src/sdk";
import { launch, type Node, stopNode } from "./bench-cluster-kit";
import { measure } from "./bench-measure";
import type { CatchUpFigures, SignFigures } from "./bench-scale-stats";
import { hitRatio, promSum } from "./bench-scale-stats";

/** The key kinds the fill makes. */
export type Kind = "AES-256" | "P-256" | "RSA-2048";
const SPEC: Record<Kind, KeySpec> = { "AES-256": KeySpec.KEY_SPEC_AES_256, "P-256": KeySpec.KEY_SPEC_EC_P256, "RSA-2048": KeySpec.KEY_SPEC_RSA_2048 };
/** The kind of the i-th key: 1 in 100 RSA-2048, the rest alternately AES-256 and P-256. */
export const kindOf = (i: number): Kind => (i % 100 === 99 ? "RSA-2048" : i % 2 === 0 ? "AES-256" : "P-256");

/** A key the bench made: its id, kind and the node the create went through. */
export interface Made {
  id: string;
  kind: Kind;
  node: string;
}

/** How far a long phase got: read by the progress ticker. */
export interface Progress {
  phase: string;
  done: number;
  total: number;
  t0: number;
}

/** Names a phase without a count for the progress ticker. */
export function phase(p: Progress, name: string): void {
  p.phase = name;
  p.done = 0;
  p.total = 0;
  p.t0 = performance.now();
}

/** A client bound to one node's endpoint, logged in as the bench's crypto user. */
export async function nodeClient(n: Node, username: string, password: string): Promise<HsmClient> {
  const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 60_000 });
  await c.login(username, password);
  return c;
}

/**
 * Creates `count` keys, `inflight` at a time, worker w through `clients[w % clients.length]`; the
 * i-th key's kind is kindOf(from + i). A create that fails is retried with its request id (at most
 * 5 times), then counted as failed.
 */
export async function fill(
  clients: Array<{ node: string; client: HsmClient }>,
  count: number,
  inflight: number,
  from: number,
  progress: Progress,
): Promise<{ made: Made[]; failed: number; perSec: number }> {
  const made: Made[] = [];
  let next = 0;
  let failed = 0;
  progress.done = 0;
  progress.total = count;
  progress.t0 = performance.now();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async (_, w) => {
      const { node, client } = clients[w % clients.length]!;
      while (next < count) {
        const kind = kindOf(from + next++);
        const requestId = randomBytes(12).toString("hex");
        for (let attempt = 1; ; attempt++) {
          try {
            const k = await client.generateKey({ spec: SPEC[kind], label: "scale", requestId });
            made.push({ id: k.id, kind, node });
            progress.done++;
            break;
          } catch (e) {
            if (attempt >= 5) {
              failed++;
              process.stderr.write(`create failed 5 times: ${(e as Error).message}\n`);
              break;
            }
            await sleep(100 * attempt);
          }
        }
      }
    }),
  );
  return { made, failed, perSec: made.length / ((performance.now() - t0) / 1000) };
}

const MESSAGE = Buffer.from("bench:scale message to sign");
const PLAINTEXT = randomBytes(32);

/** One use of a key by kind: AES-GCM encrypt for AES, ECDSA P-256 or RSA PKCS#1 v1.5 sign for the others. */
export function useKey(client: HsmClient, k: Made): Promise<unknown> {
  if (k.kind === "AES-256") return client.encrypt({ keyId: k.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: PLAINTEXT });
  const algorithm = k.kind === "P-256" ? SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256 : SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256;
  return client.sign({ keyId: k.id, algorithm, message: MESSAGE });
}

/** Key-use counters summed over the nodes; a field is undefined when a daemon exports none of it. */
export interface UseCounters {
  hits?: number;
  misses?: number;
  evictions?: number;
}

const add = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? undefined : a + b);

/**
 * The key-use counters of every node, from /metrics (`hsmd_key_use_hits_total`, `…_misses_total`,
 * `hsmd_key_evictions_total`), else from /v1/status' `keyObjects` (the same counters).
 */
export async function useCounters(nodes: Node[]): Promise<UseCounters> {
  let sum: UseCounters = { hits: 0, misses: 0, evictions: 0 };
  for (const n of nodes) {
    const text = await (await fetch(`${n.admin}/metrics`)).text();
    let c: UseCounters = {
      hits: promSum(text, "hsmd_key_use_hits_total"),
      misses: promSum(text, "hsmd_key_use_misses_total"),
      evictions: promSum(text, "hsmd_key_evictions_total"),
    };
    if (c.hits === undefined || c.misses === undefined) {
      const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { keyObjects?: UseCounters };
      c = { hits: s.keyObjects?.hits, misses: s.keyObjects?.misses, evictions: s.keyObjects?.evictions };
    }
    sum = { hits: add(sum.hits, c.hits), misses: add(sum.misses, c.misses), evictions: add(sum.evictions, c.evictions) };
  }
  return sum;
}

/** Uses keys from `pick` for `seconds`, `inflight` at a time, through `client`; latency and the hit ratio over the phase. */
export async function signPhase(client: HsmClient, nodes: Node[], pick: () => Made, seconds: number, inflight: number): Promise<SignFigures> {
  const before = await useCounters(nodes);
  let errors = 0;
  const r = await measure(seconds, inflight, () =>
    useKey(client, pick()).then(
      () => true,
      (e) => {
        if (errors++ < 3) process.stderr.write(`use failed: ${(e as Error).message}\n`);
        return false;
      },
    ),
  );
  const after = await useCounters(nodes);
  const evictions = before.evictions === undefined || after.evictions === undefined ? undefined : after.evictions - before.evictions;
  return { ops: r.ops, failed: r.failed, p50: r.p50, p99: r.p99, hitRatio: hitRatio(before, after), evictions };
}

/** Each node's device objects for keys: its budget and how many are resident (/v1/status' keyObjects; undefined before it existed). */
export async function deviceObjects(nodes: Node[]): Promise<Record<string, { budget: number; resident: number }> | undefined> {
  const out: Record<string, { budget: number; resident: number }> = {};
  for (const n of nodes) {
    const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { keyObjects?: { budget: number; resident: number } };
    if (!s.keyObjects) return undefined;
    out[n.id] = { budget: s.keyObjects.budget, resident: s.keyObjects.resident };
  }
  return out;
}

/** VmRSS of a daemon's process, bytes (NaN when it is not running). */
export function rssOf(n: Node): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${n.child.pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Retries `f` until it resolves or `ms` passed (then throws its last error). */
async function until<T>(ms: number, f: () => Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) throw new Error(`no success within ${ms / 1000} s: ${last instanceof Error ? last.message : String(last ?? "condition not met")}`);
    await sleep(20);
  }
}

/** What the catch-up needs from the run: the writers, the user, and how to read the store's and the node's progress. */
export interface CatchUpContext {
  nodes: Node[];
  username: string;
  password: string;
  inflight: number;
  behind: number;
  /** Index of the next key (kinds continue the fill's mix). */
  from: number;
  progress: Progress;
  /** The highest commit revision of these keys' records. */
  lastRevision: (ids: string[]) => Promise<number>;
  /** The stopped node's applied revision (its watermark row; its /v1/status without one). */
  appliedRevision: (n: Node) => Promise<number | undefined>;
}

/**
 * Stops the last node (SIGTERM), creates `behind` keys through the others, starts it, and times
 * (from the start) its /readyz, a use through it alone of the last key created meanwhile, and its
 * applied revision (watermark) reaching the last creation's commit revision.
 */
export async function catchUp(ctx: CatchUpContext): Promise<{ figures: CatchUpFigures; made: Made[] }> {
  const down = ctx.nodes[ctx.nodes.length - 1]!;
  await stopNode(down);
  const writers = await Promise.all(ctx.nodes.slice(0, -1).map(async (n) => ({ node: n.id, client: await nodeClient(n, ctx.username, ctx.password) })));
  ctx.progress.phase = `catch-up: creations while ${down.id} is down`;
  const { made } = await fill(writers, ctx.behind, ctx.inflight, ctx.from, ctx.progress);
  for (const w of writers) w.client.close();
  const target = await ctx.lastRevision(made.slice(-4 * ctx.inflight).map((m) => m.id));
  const last = made[made.length - 1]!;
  phase(ctx.progress, `catch-up: ${down.id} starting, until it serves`);
  const t0 = performance.now();
  const started = launch(down, "start");
  started.catch(() => undefined);
  const readyMs = await until(600_000, async () => ((await fetch(`${down.admin}/readyz`)).status === 200 ? performance.now() - t0 : undefined));
  const alone = new HsmClient({ endpoint: down.grpc, defaultDeadlineMs: 10_000 });
  let signMs: number;
  try {
    await until(600_000, () => alone.login(ctx.username, ctx.password));
    signMs = await until(600_000, async () => {
      await useKey(alone, last);
      return performance.now() - t0;
    });
  } finally {
    alone.close();
  }
  let appliedMs: number | undefined;
  try {
    appliedMs = await until(600_000, async () => (((await ctx.appliedRevision(down)) ?? -1) >= target ? performance.now() - t0 : undefined));
  } catch (e) {
    process.stderr.write(`catch-up: ${down.id} did not reach revision ${target}: ${(e as Error).message}\n`);
  }
  return { figures: { behind: ctx.behind, readyMs, signMs, appliedMs }, made };
}
