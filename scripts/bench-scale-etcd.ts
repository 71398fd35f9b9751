/**
 * The etcd side of `npm run bench:scale`: the member flags hsmd needs at a million keys, the raw
 * etcd ceiling (create-if-absent txn puts of the record size, same in-flight, through the etcd3
 * client), the members' DB size, the records' value sizes, and a watch that sees every key's commit
 * and every node's watermark (`watermarks/<node>` = {"revision": n, "at": iso}) as they happen.
 */
import { randomBytes } from "node:crypto";
import { Etcd3, type Watcher } from "etcd3";
import type { KeySeen, WatermarkEvent } from "./bench-scale-stats";

/**
 * etcd member flags for a cluster of a million keys (scripts/cluster.sh sets the same;
 * docs/OPERATIONS.md, "etcd at scale", says why):
 * - quota 8 GiB: 1M live records (0.6 KB for AES-256, 0.8 KB for P-256, 2.6 KB for RSA-2048) and
 *   their 1M idempotency entries are about 1 GB; the quota leaves room for the superseded versions the
 *   retention keeps and for bbolt's free pages (compaction frees pages for reuse, only a
 *   defragmentation returns them to the file system);
 * - revision compaction keeping the last 1,000,000 revisions: a create (its record and idempotency
 *   entry in one txn, several creates per txn when grouped) is one revision, so a node that was down
 *   catches up from history as long as fewer than a million revisions were written meanwhile (minutes
 *   at etcd's ceiling, hours at any steady rate); bounding history by revisions bounds its space,
 *   where a time retention at a high write rate can overrun the quota.
 * Grouped creates (TxnGroup) stay within etcd's default limits of 128 operations and 1.5 MiB per txn.
 */
export const SCALE_ETCD_FLAGS = [...["--quota-backend-bytes", String(8 * 1024 ** 3)], ...["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000000"]];

const client = (endpoints: string[]) => new Etcd3({ hosts: endpoints.map((e) => `http://${e}`) });

/** The raw ceiling: create-if-absent txn puts of `bytes`, `inflight` at a time, for `seconds`, under a prefix removed after. */
export async function rawCeiling(endpoints: string[], bytes: number, inflight: number, seconds: number): Promise<number> {
  const c = client(endpoints);
  const prefix = `bench-raw/${randomBytes(4).toString("hex")}/`;
  const value = randomBytes(Math.ceil((bytes * 3) / 4))
    .toString("base64")
    .slice(0, bytes);
  let n = 0;
  let next = 0;
  try {
    // warm-up: the connections to every member
    await Promise.all(Array.from({ length: inflight }, (_, i) => c.put(`${prefix}warm/${i}`).value(value)));
    const end = performance.now() + seconds * 1000;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: inflight }, async () => {
        while (performance.now() < end) {
          const key = `${prefix}${next++}`;
          const r = await c.if(key, "Create", "==", 0).then(c.put(key).value(value)).commit();
          if (r.succeeded) n++;
        }
      }),
    );
    const rate = n / ((performance.now() - t0) / 1000);
    await c.delete().prefix(prefix);
    return rate;
  } finally {
    c.close();
  }
}

/** The largest member's DB size (allocated, in use) and the cluster's current revision. */
export async function dbStatus(endpoints: string[]): Promise<{ dbSize: number; dbSizeInUse: number; revision: number }> {
  let dbSize = 0;
  let dbSizeInUse = 0;
  let revision = 0;
  for (const e of endpoints) {
    const c = client([e]);
    try {
      const s = await c.maintenance.status();
      dbSize = Math.max(dbSize, Number(s.dbSize));
      dbSizeInUse = Math.max(dbSizeInUse, Number(s.dbSizeInUse ?? s.dbSize));
      revision = Math.max(revision, Number(s.header.revision));
    } finally {
      c.close();
    }
  }
  return { dbSize, dbSizeInUse, revision };
}

/** Mean value bytes of the given records (`keys/<id>`) by kind, and of a few idempotency entries (`requests/`). */
export async function recordBytes(endpoints: string[], cluster: string, byKind: Record<string, string[]>): Promise<Record<string, number>> {
  const c = client(endpoints);
  const out: Record<string, number> = {};
  try {
    for (const [kind, ids] of Object.entries(byKind)) {
      const sizes: number[] = [];
      for (const id of ids) {
        const v = await c.get(`hsmd/${cluster}/keys/${id}`).buffer();
        if (v) sizes.push(v.length);
      }
      if (sizes.length) out[kind] = sizes.reduce((a, b) => a + b, 0) / sizes.length;
    }
    const reqs = await c.getAll().prefix(`hsmd/${cluster}/requests/`).limit(20).buffers();
    const sizes = Object.entries(reqs).map(([k, v]) => k.length + v.length);
    if (sizes.length) out["idempotency entry (key + value)"] = sizes.reduce((a, b) => a + b, 0) / sizes.length;
  } finally {
    c.close();
  }
  return out;
}

/**
 * The highest commit revision of the given keys' records (pass the last few dozen made: with many in
 * flight the last acknowledged is not always the last committed). A node whose watermark reached it
 * has applied them all.
 */
export async function maxKeyRevision(endpoints: string[], cluster: string, ids: string[]): Promise<number> {
  const c = client(endpoints);
  let max = 0;
  try {
    for (const id of ids) {
      const r = await c.get(`hsmd/${cluster}/keys/${id}`).exec();
      for (const kv of r.kvs) max = Math.max(max, Number(kv.mod_revision));
    }
  } finally {
    c.close();
  }
  return max;
}

/** The latest watermark revision of one node, undefined when it has no row. */
export async function watermarkOf(endpoints: string[], cluster: string, node: string): Promise<number | undefined> {
  const c = client(endpoints);
  try {
    const v = await c.get(`hsmd/${cluster}/watermarks/${node}`).string();
    return v ? Number((JSON.parse(v) as { revision: number }).revision) : undefined;
  } finally {
    c.close();
  }
}

/**
 * Watches `keys/` (every `sample`-th create: its commit revision and when it was seen) and
 * `watermarks/` (every change), from the moment it is started; `stop()` ends both.
 */
export class ReplicationWatch {
  readonly keys: KeySeen[] = [];
  readonly marks: WatermarkEvent[] = [];
  private creates = 0;
  private readonly c: Etcd3;
  private watchers: Watcher[] = [];

  constructor(
    endpoints: string[],
    private readonly cluster: string,
    private readonly sample: number,
  ) {
    this.c = client(endpoints);
  }

  /** Starts both watches and reads the watermarks' current rows. */
  async start(): Promise<void> {
    const keys = `hsmd/${this.cluster}/keys/`;
    const marks = `hsmd/${this.cluster}/watermarks/`;
    const kw = await this.c.watch().prefix(keys).create();
    kw.on("put", (kv) => {
      if (kv.version !== "1") return; // an update, not a create
      if (this.creates++ % this.sample !== 0) return;
      this.keys.push({ id: kv.key.toString().slice(keys.length), revision: Number(kv.mod_revision), at: Date.now() });
    });
    const mw = await this.c.watch().prefix(marks).create();
    mw.on("put", (kv) => this.mark(kv.key.toString().slice(marks.length), kv.value.toString()));
    this.watchers = [kw, mw];
    const now = await this.c.getAll().prefix(marks).strings();
    for (const [k, v] of Object.entries(now)) this.mark(k.slice(marks.length), v);
  }

  private mark(node: string, value: string): void {
    try {
      const revision = Number((JSON.parse(value) as { revision: unknown }).revision);
      if (Number.isFinite(revision)) this.marks.push({ node, revision, at: Date.now() });
    } catch {
      // not a watermark row: ignored
    }
  }

  /** The highest watermark seen per node. */
  high(): Map<string, number> {
    const m = new Map<string, number>();
    for (const e of this.marks) m.set(e.node, Math.max(m.get(e.node) ?? 0, e.revision));
    return m;
  }

  /** Cancels the watches and closes the client. */
  async stop(): Promise<void> {
    await Promise.all(this.watchers.map((w) => w.cancel()));
    this.c.close();
  }
}
