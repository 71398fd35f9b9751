/**
 * Replication acknowledged by watermark: each node publishes, under `watermarks/<node id>`, the store
 * revision up to which it has applied every key event (`{"revision": n, "at": ISO}`): one row per
 * node, none per key. Whether a key has reached cluster.minNodes nodes, GetKey's held_by and the
 * status pages' lag derive from these rows, which every node follows through a watch of the prefix.
 * The rows of per-key coverage an older hsmd wrote (`coverage/<key>/<node>`) are removed at start.
 */
import { Code, HsmError } from "../errors";
import { type KeyPlacement, type KeyRecord, residencyOf } from "../keys";
import type { StateStore, WatchEvent } from "../store";

/** Store prefix of the watermark rows: `watermarks/<node id>`. */
export const WATERMARKS_PREFIX = "watermarks/";
/** Store key of one node's watermark row. */
export const watermarkKey = (node: string) => `${WATERMARKS_PREFIX}${node}`;
/** Store prefix of the per-key coverage rows older versions wrote (migrated away at start). */
export const LEGACY_COVERAGE_PREFIX = "coverage/";
/** How long a create waits for its key to reach `minNodes` nodes before answering. */
export const COVERAGE_WAIT_MS = 10_000;
/** Coverage rows deleted per store txn at start (etcd allows 128 operations in one). */
const MIGRATE_BATCH = 100;

/** One watermark row's value. */
export interface WatermarkRow {
  revision: number;
  at: string;
}

/** What {@link Watermarks} is built from. */
export interface WatermarksOptions {
  store: StateStore;
  /** This node's id (the row it publishes). */
  nodeId: string;
  /** A new key may be used once this many nodes have applied its create. @default 1 (once committed) */
  minNodes?: number;
  log?: (msg: string) => void;
}

/** Decodes a watermark row (undefined for anything malformed: such a row counts for nothing). */
export function parseWatermark(value: Buffer | undefined): WatermarkRow | undefined {
  if (!value) return undefined;
  try {
    const v = JSON.parse(value.toString("utf8")) as Partial<WatermarkRow>;
    return typeof v.revision === "number" && Number.isFinite(v.revision) ? { revision: v.revision, at: String(v.at ?? "") } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The cluster's watermarks as this node sees them (kept current by a watch of `watermarks/`), its
 * own publication (at most one write in flight; newer values coalesce into the next write), and the
 * {@link KeyPlacement} the key service checks before using a key.
 */
export class Watermarks implements KeyPlacement {
  private readonly marks = new Map<string, WatermarkRow>();
  private readonly waiters = new Set<() => void>();
  private unwatch: (() => void) | undefined;
  /** The newest value asked to be published, the one last written, and whether a write is in flight. */
  private wanted = 0;
  private published = 0;
  private writing: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly opts: WatermarksOptions) {}

  /** This node's id (new records carry it as createdOn). */
  get nodeId(): string {
    return this.opts.nodeId;
  }

  /** cluster.minNodes. */
  get minNodes(): number {
    return this.opts.minNodes ?? 1;
  }

  /** Reads the rows and follows them (a watch of the prefix from the revision they were read at). */
  async start(): Promise<void> {
    const { store } = this.opts;
    const rev = store.revision();
    for (const e of await store.list(WATERMARKS_PREFIX)) this.take(e.key, parseWatermark(e.value));
    this.unwatch = store.watch(WATERMARKS_PREFIX, rev, (ev: WatchEvent) => this.take(ev.key, ev.type === "delete" ? undefined : parseWatermark(ev.value)));
  }

  /** Stops following the rows and publishing. */
  stop(): void {
    this.stopped = true;
    this.unwatch?.();
    for (const w of this.waiters) w();
  }

  private take(key: string, row: WatermarkRow | undefined): void {
    const node = key.slice(WATERMARKS_PREFIX.length);
    if (!node) return;
    if (row) this.marks.set(node, row);
    else this.marks.delete(node);
    if (node === this.opts.nodeId && row && row.revision > this.published) this.published = row.revision;
    for (const w of [...this.waiters]) w();
  }

  /** Every node's watermark (node id → revision), as last seen. */
  all(): Map<string, number> {
    return new Map([...this.marks].map(([n, r]) => [n, r.revision]));
  }

  /** One node's watermark, as last seen (undefined: it has never published). */
  of(node: string): number | undefined {
    return this.marks.get(node)?.revision;
  }

  /** This node's own row as the store holds it now (start-up: where it left off). */
  async ownFromStore(): Promise<number | undefined> {
    const e = await (this.opts.store.getFresh ?? this.opts.store.get).call(this.opts.store, watermarkKey(this.opts.nodeId));
    return parseWatermark(e?.value)?.revision;
  }

  /** Nodes whose watermark has passed `revision` (undefined: the revision is unknown, every node with a row). */
  nodesPast(revision: number | undefined): string[] {
    const out: string[] = [];
    for (const [n, r] of this.marks) if (revision === undefined || r.revision >= revision) out.push(n);
    return out.sort();
  }

  /**
   * GetKey's held_by: the nodes that have applied the key's create; a key that lives only in the
   * device that generated it (residency "device") is held by that node alone.
   */
  heldBy(r: KeyRecord, createRevision: number | undefined): string[] {
    if (residencyOf(r) === "device") return r.createdOn ? [r.createdOn] : [];
    return this.nodesPast(createRevision);
  }

  /** With minNodes > 1: UNAVAILABLE (transient) until that many nodes have applied the key's create. */
  async checkUsable(id: string, createRevision: number | undefined): Promise<void> {
    const min = this.minNodes;
    if (min <= 1) return;
    const held = this.nodesPast(createRevision).length;
    if (held < min) {
      throw new HsmError(
        Code.Unavailable,
        `key ${id} has been applied by ${held} of the ${min} nodes it needs before use (cluster.minNodes = ${min}); retry shortly, or bring the stopped nodes back`,
        { transient: true },
      );
    }
  }

  /** After a create committed at `revision`: waits (bounded by COVERAGE_WAIT_MS) until minNodes nodes have applied it. */
  async awaitCoverage(id: string, revision: number): Promise<void> {
    const min = this.minNodes;
    if (min <= 1) return;
    const ok = await this.waitFor(() => this.nodesPast(revision).length >= min, COVERAGE_WAIT_MS);
    if (!ok)
      this.opts.log?.(`key ${id}: applied by ${this.nodesPast(revision).length} of ${min} nodes after ${COVERAGE_WAIT_MS} ms (cluster.minNodes); it answers UNAVAILABLE until more nodes apply it`);
  }

  /** Resolves true once `cond()` holds (re-checked on every watermark change), false after `ms`. */
  private waitFor(cond: () => boolean, ms: number): Promise<boolean> {
    if (cond()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        resolve(false);
      }, ms);
      const check = () => {
        if (!cond() && !this.stopped) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(cond());
      };
      this.waiters.add(check);
    });
  }

  /**
   * Publishes this node's watermark (the applier calls it as it applies key events). At most one
   * write is in flight; values asked meanwhile coalesce into one next write of the newest. A value
   * at or below the one published writes nothing, so the node's own row (which is not a key event,
   * and never reaches the applier) cannot make it write again.
   */
  publish(revision: number): void {
    if (this.stopped || revision <= this.wanted) return;
    this.wanted = revision;
    this.writing ??= this.flush();
  }

  /** Resolves once every value asked so far is written (or its write failed). */
  async flushed(): Promise<void> {
    while (this.writing) await this.writing;
  }

  private async flush(): Promise<void> {
    try {
      while (!this.stopped && this.wanted > this.published) {
        const revision = this.wanted;
        const row: WatermarkRow = { revision, at: new Date().toISOString() };
        try {
          await this.opts.store.put(watermarkKey(this.opts.nodeId), Buffer.from(JSON.stringify(row)));
          if (revision > this.published) this.published = revision;
        } catch (e) {
          this.opts.log?.(`watermark: revision ${revision} not published: ${e instanceof Error ? e.message : String(e)}`);
          return; // the next publish (the applier's next event, or the report tick) tries again
        }
      }
    } finally {
      this.writing = undefined;
    }
  }

  /** The revision this node last published. */
  get publishedRevision(): number {
    return this.published;
  }

  /**
   * Deletes the per-key coverage rows an older hsmd wrote (`coverage/…`), in batches; idempotent, any
   * node may run it (rows already gone are simply not listed). Answers how many it deleted.
   */
  async removeLegacyCoverage(): Promise<number> {
    const { store } = this.opts;
    let removed = 0;
    let after: string | undefined;
    for (;;) {
      // A cursor, not "the first page again": a local copy may still list rows just deleted.
      const page = await store.list(LEGACY_COVERAGE_PREFIX, { limit: MIGRATE_BATCH, startAfter: after });
      if (!page.length) break;
      await store.txn(
        [],
        page.map((e) => ({ type: "delete" as const, key: e.key })),
      );
      removed += page.length;
      after = page[page.length - 1]!.key;
    }
    if (removed) this.opts.log?.(`watermarks: removed ${removed} per-key coverage rows an older hsmd wrote (replaced by one watermark row per node)`);
    return removed;
  }
}
