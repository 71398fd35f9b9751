import { Code, HsmError } from "../errors";
import type { KeyPlacement } from "../keys";
import type { Op, StateStore } from "../store";

/** Coverage entries written in one store txn (etcd allows 128 operations). */
const COVERAGE_BATCH = 100;

/** Store prefix of coverage entries: `coverage/<key id>/<node id>`. */
export const COVERAGE_PREFIX = "coverage/";
/** Store key of one coverage entry: node `node` holds key `id`. */
export const coverageKey = (id: string, node: string) => `${COVERAGE_PREFIX}${id}/${node}`;
/** How long a create waits for its key to reach `minNodes` nodes before answering. */
const COVERAGE_WAIT_MS = 10_000;

/** What {@link Coverage} is built from. */
export interface CoverageOptions {
  store: StateStore;
  /** In a cluster: this node's id (absent on a single node: nothing is recorded). */
  nodeId?: string;
  /** A new key may be used once this many nodes hold it. @default 1 (once committed) */
  minNodes?: number;
  log?: (msg: string) => void;
}

/**
 * Cluster coverage (as CloudHSM's): which nodes hold each key, `coverage/<key>/<node>` in the store,
 * written as this node's applier materializes records; with cluster.minNodes > 1 a key is used only
 * once enough nodes hold it. The key service sees it as its {@link KeyPlacement}.
 */
export class Coverage implements KeyPlacement {
  private coverQueue: Array<{ id: string; at: string; known: (id: string) => boolean; done: () => void }> = [];
  private coverTimer: NodeJS.Timeout | undefined;
  /** Keys known to be held by at least minNodes nodes. */
  private readonly usable = new Set<string>();

  constructor(private readonly opts: CoverageOptions) {}

  /** This node's id, when it records coverage. */
  get nodeId(): string | undefined {
    return this.opts.nodeId;
  }

  /** Whether this node's entry for a key is in the store. */
  async holds(id: string): Promise<boolean> {
    const node = this.opts.nodeId;
    return !!node && !!(await this.opts.store.get(coverageKey(id, node)));
  }

  /**
   * Records that this node holds a key (while `known(id)`, i.e. its record still exists). Entries are
   * written in batches (one store txn for up to COVERAGE_BATCH of them, every few milliseconds) rather
   * than one write each: with several nodes each materializing every key, per-key writes would
   * multiply the cluster's write load.
   */
  cover(id: string, known: (id: string) => boolean): Promise<void> {
    return new Promise((resolve) => {
      this.coverQueue.push({ id, at: new Date().toISOString(), known, done: resolve });
      this.coverTimer ??= setTimeout(() => void this.flushCoverage(), 5);
    });
  }

  private async flushCoverage(): Promise<void> {
    this.coverTimer = undefined;
    while (this.coverQueue.length) {
      const batch = this.coverQueue.splice(0, COVERAGE_BATCH);
      const ops = batch.filter((b) => b.known(b.id)).map((b) => ({ type: "put" as const, key: coverageKey(b.id, this.opts.nodeId!), value: Buffer.from(b.at) }));
      try {
        if (ops.length) await this.opts.store.txn([], ops);
      } catch (e) {
        this.opts.log?.(`coverage: ${ops.length} entries not recorded: ${e instanceof Error ? e.message : String(e)}`);
      }
      for (const b of batch) b.done();
    }
  }

  /** Nodes that hold a key (cluster coverage). */
  async coverage(id: string): Promise<string[]> {
    return (await this.opts.store.list(`${COVERAGE_PREFIX}${id}/`)).map((e) => e.key.slice(`${COVERAGE_PREFIX}${id}/`.length));
  }

  /** The key was deleted: it must reach minNodes again if it ever comes back. */
  forget(id: string): void {
    this.usable.delete(id);
  }

  /**
   * With minNodes > 1: UNAVAILABLE until the key is held by enough nodes (a retry soon succeeds);
   * once it is, remembered.
   */
  async checkUsable(id: string): Promise<void> {
    const min = this.opts.minNodes ?? 1;
    if (min <= 1 || this.usable.has(id)) return;
    const held = (await this.opts.store.count(`${COVERAGE_PREFIX}${id}/`)) || 0;
    if (held < min) throw new HsmError(Code.Unavailable, `key ${id} is held by ${held} of the ${min} nodes it needs before use (cluster.minNodes); retry shortly`, { transient: true });
    this.usable.add(id);
  }

  /** After a create: waits (bounded) until minNodes nodes hold the key, so that it is usable when the call answers. */
  async awaitCoverage(id: string): Promise<void> {
    const min = this.opts.minNodes ?? 1;
    if (min <= 1) return;
    const deadline = Date.now() + COVERAGE_WAIT_MS;
    while (Date.now() < deadline) {
      if ((await this.opts.store.count(`${COVERAGE_PREFIX}${id}/`)) >= min) {
        this.usable.add(id);
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this.opts.log?.(`key ${id}: not yet held by ${min} nodes after ${COVERAGE_WAIT_MS} ms`);
  }

  /** A create's own entry, in its txn: the node that made the key holds it. */
  createOps(id: string, at: string): Op[] {
    return this.opts.nodeId ? [{ type: "put", key: coverageKey(id, this.opts.nodeId), value: Buffer.from(at) }] : [];
  }

  /** A delete removes every node's entry in its txn. */
  async deleteOps(id: string): Promise<Op[]> {
    return (await this.opts.store.list(`${COVERAGE_PREFIX}${id}/`)).map((c) => ({ type: "delete" as const, key: c.key }));
  }
}
