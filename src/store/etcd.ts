/**
 * The cluster state store on etcd (DESIGN.md: "or etcd (a cluster: Raft, quorum writes, watch)").
 *
 * Design:
 *
 * - **Mirror.** The store keeps a copy of its cluster prefix in memory, less the *unmirrored*
 *   prefixes (option `unmirrored`: records that are many and large, e.g. `keys/`). At open it reads
 *   the mirrored ranges at one revision R (paginated, linearizable; the unmirrored ranges are not
 *   read), then watches the whole prefix from R+1 and applies every event in order (an event under an
 *   unmirrored prefix is delivered to subscribers, then dropped). Mirrored `get`, `list` and `count`
 *   read the mirror: they are fast and keep answering (with what this node knows) while etcd is
 *   unreachable. Reads that take in unmirrored keys go to etcd (EtcdReads: linearizable, so a node
 *   reads its own committed writes, bounded by `requestTimeoutMs`): they do NOT answer while etcd is
 *   unreachable (UNAVAILABLE, saying why). `revision()` is the revision of the last event (or full
 *   read) applied: every change at or below it is in the mirror or was delivered. etcd's revision is
 *   global to the etcd cluster, so writes under other prefixes leave gaps in the revisions this store
 *   sees; they are still monotonic.
 *
 * - **Writes** go to etcd as one transaction (compares: `absent` → create revision = 0, `present` →
 *   create revision > 0, `modRevision` → mod revision equal) and resolve only once etcd committed them.
 *   A committed write of a mirrored key is applied to the mirror at once as a per-key *overlay* (so this
 *   node reads its own writes); the overlay entry is dropped when the watch delivers that revision. The
 *   txn then waits briefly (`ownWriteWaitMs`, only while the watch is live) for the watch to pass its
 *   revision, so in the normal case `revision()` is at least the write's revision when the txn
 *   resolves. Subscribers are fed from the watch stream only: each event exactly once, in revision order.
 *
 * - **Watch replay.** `watch(prefix, from, cb)` replays from the store's own event log, which holds the
 *   events applied since open (values included, unmirrored ones too), bounded to the last
 *   `historyLimit` events. From a revision older than that log, the events are replayed from etcd's
 *   own history (etcd-replay.ts); a revision etcd is known to have compacted (hasHistorySince said so)
 *   throws {@link StoreCompactedError}. `from` = 0 ("everything", for a subscriber that starts empty)
 *   is always served: one put per current key in modRevision order (from the mirror, or read from etcd
 *   when the prefix takes in unmirrored keys), then live.
 *
 * - **Reconnect and compaction.** When the watch stream fails (member down, member without a leader:
 *   every call carries etcd's require-leader metadata) it reconnects with backoff, preferring another
 *   member, and resumes from `revision() + 1`, so etcd replays exactly the missed events. When etcd
 *   answers that this revision was compacted, the store re-reads the mirrored ranges, diffs them against
 *   the mirror and emits synthetic put/delete events at the read revision for the differences (so
 *   subscribers converge on the same state), plus a put for every unmirrored key modified since (the
 *   mirror holds nothing to tell an unmirrored deletion by: such a gap is logged), then watches from there.
 *
 * - **Errors.** Unreachable members, lost quorum and timeouts become `HsmError` UNAVAILABLE with a
 *   message that says why; every write is bounded by `requestTimeoutMs`. A write is re-sent to another
 *   member only when the first one certainly did not receive it (connection refused, or refused for
 *   lack of a leader); a write whose outcome is unknown is reported as such, never silently retried.
 */
import type { IRangeResponse, ITxnResponse, IWatchResponse } from "etcd3";
import { HsmError, invalid, unavailable } from "../errors";
import { EtcdClient, closedError, type Snapshot } from "./etcd-client";
import { EtcdReads } from "./etcd-reads";
import { EventHistory } from "./event-history";
import { EtcdMirror } from "./etcd-mirror";
import {
  DEFAULT_DIAL_TIMEOUT_MS,
  DEFAULT_HEALTH_TIMEOUT_MS,
  DEFAULT_HISTORY_LIMIT,
  DEFAULT_OWN_WRITE_WAIT_MS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type EtcdStoreOptions,
  type EtcdStoreStats,
  positiveInt,
} from "./etcd-options";
import { replayHistory, replayState } from "./etcd-replay";
import { toEtcdTxn, txnChanged } from "./etcd-txn";
import { WatchFollower } from "./etcd-watch";
import { StoreCompactedError } from "./store-compacted-error";
import { checkTxnInput } from "./txn-input";
import type { Compare, ListOptions, Op, StateStore, StoreEntry, TxnResult, WatchEvent } from "./types";
import { WatchHub } from "./watch-hub";

export type { EtcdStoreOptions, EtcdStoreStats } from "./etcd-options";

interface Waiter {
  revision: number;
  done: () => void;
}

/**
 * The etcd implementation of {@link StateStore}: a local mirror of one cluster prefix kept current by
 * a watch, with writes committed by the etcd quorum. Open it with {@link openEtcdStore}; see the module
 * comment for the design.
 */
export class EtcdStore implements StateStore {
  /** @internal the calls to etcd (the replays use them) */
  readonly client: EtcdClient;
  private readonly dialTimeoutMs: number;
  /** @internal deadline of one write or etcd read (the replays read it) */
  readonly requestTimeoutMs: number;
  private readonly healthTimeoutMs: number;
  private readonly ownWriteWaitMs: number;
  /** @internal where operational messages go */
  readonly log: (msg: string) => void;

  private readonly mirror: EtcdMirror;
  /** @internal reads straight from etcd (the replays use them) */
  readonly reads: EtcdReads;
  private readonly history: EventHistory;
  private readonly hub: WatchHub;
  private readonly follower: WatchFollower;
  private waiters: Waiter[] = [];
  private etcdReplays = 0;
  private unmirroredGaps = 0;

  /** @internal use {@link openEtcdStore} */
  constructor(
    readonly prefix: string,
    opts: EtcdStoreOptions,
  ) {
    this.dialTimeoutMs = positiveInt("dialTimeoutMs", opts.dialTimeoutMs, DEFAULT_DIAL_TIMEOUT_MS);
    this.requestTimeoutMs = positiveInt("requestTimeoutMs", opts.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS);
    this.healthTimeoutMs = positiveInt("healthTimeoutMs", opts.healthTimeoutMs, DEFAULT_HEALTH_TIMEOUT_MS);
    this.history = new EventHistory(positiveInt("historyLimit", opts.historyLimit, DEFAULT_HISTORY_LIMIT));
    this.ownWriteWaitMs = positiveInt("ownWriteWaitMs", opts.ownWriteWaitMs, DEFAULT_OWN_WRITE_WAIT_MS);
    this.log = opts.log ?? ((m: string) => process.stderr.write(`hsmd store (etcd): ${m}\n`));
    this.hub = new WatchHub(this.log);
    this.client = new EtcdClient(prefix, opts);
    this.mirror = new EtcdMirror(this.client);
    this.reads = new EtcdReads(this.client);
    this.follower = new WatchFollower({
      client: this.client,
      applied: () => this.mirror.applied,
      onEvents: (events) => this.applyEvents(events),
      onSnapshot: (snap) => this.applySnapshot(snap),
      onCompacted: (rev) => {
        this.reads.knownCompactRevision = Math.max(this.reads.knownCompactRevision, rev);
      },
      log: (m) => this.log(m),
      dialTimeoutMs: this.dialTimeoutMs,
      requestTimeoutMs: this.requestTimeoutMs,
    });
  }

  private get closed(): boolean {
    return this.client.closed;
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** @internal reads the prefix and starts the watch; called once by {@link openEtcdStore} */
  async start(): Promise<void> {
    const snap = await this.client.readAll(Date.now() + this.dialTimeoutMs, "open");
    this.mirror.load(snap);
    this.history.floor = snap.revision;
    this.follower.start();
  }

  /** Stops the watch and closes the connections. Later calls answer UNAVAILABLE. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.client.stop();
    this.follower.stop();
    for (const w of this.waiters) w.done();
    this.waiters = [];
    this.hub.close();
    this.client.closeMembers();
  }

  // ---- reads (from the mirror) -----------------------------------------------------------------

  /**
   * The mirror's revision: the revision of the last watch event or full read applied. Every change at
   * or below it is in the mirror (own writes above it are visible to get/list too).
   */
  revision(): number {
    return this.mirror.applied;
  }

  /** Counters for tests and status pages. */
  stats(): EtcdStoreStats {
    return {
      revision: this.mirror.applied,
      keys: this.mirror.keyCount(),
      pendingOwnWrites: this.mirror.pendingOwnWrites,
      watchLive: this.follower.live,
      reconnects: this.follower.counters.reconnects,
      resyncs: this.follower.counters.resyncs,
      etcdReplays: this.etcdReplays,
      unmirroredGaps: this.unmirroredGaps,
      historyFloor: this.history.floor,
      preferredEndpoint: this.client.preferredEndpoint,
    };
  }

  /** From the mirror; a key under an unmirrored prefix from etcd (linearizable, UNAVAILABLE offline). */
  async get(key: string): Promise<StoreEntry | undefined> {
    if (this.client.isUnmirrored(key)) {
      if (this.closed) throw closedError();
      return this.reads.get(key, Date.now() + this.requestTimeoutMs);
    }
    return this.mirror.get(key);
  }

  /**
   * A linearizable read of one key from etcd itself (not the mirror): for a record another node has
   * just committed and this node's watch has not delivered yet (a key created on node A and used on
   * node B a moment later). Falls back to the mirror when etcd cannot answer in time.
   */
  async getFresh(key: string): Promise<StoreEntry | undefined> {
    if (this.closed) throw closedError();
    if (this.client.isUnmirrored(key)) return this.get(key); // already from etcd, with no mirror to fall back on
    try {
      const res = await this.client.call<IRangeResponse>("fresh read", "KV", "range", { key: this.client.etcdKey(key) }, Date.now() + this.healthTimeoutMs, true);
      const kv = res.kvs[0];
      return kv ? this.client.entryOf(key, kv) : undefined;
    } catch {
      return this.get(key);
    }
  }

  /** From the mirror; when the prefix takes in unmirrored keys, from etcd, page by page at one revision. */
  async list(prefix: string, opts: ListOptions = {}): Promise<StoreEntry[]> {
    if (this.client.touchesUnmirrored(prefix)) {
      if (this.closed) throw closedError();
      return this.reads.list(prefix, opts, Date.now() + this.requestTimeoutMs);
    }
    return this.mirror.list(prefix, opts);
  }

  /** From the mirror; when the prefix takes in unmirrored keys, an etcd count range. */
  async count(prefix: string): Promise<number> {
    if (this.client.touchesUnmirrored(prefix)) {
      if (this.closed) throw closedError();
      return this.reads.count(prefix, Date.now() + this.requestTimeoutMs);
    }
    return this.mirror.count(prefix);
  }

  // ---- writes (to etcd) ------------------------------------------------------------------------

  async txn(compares: Compare[], ops: Op[]): Promise<TxnResult> {
    if (this.closed) throw closedError();
    const input = checkTxnInput(compares, ops);
    const owned = input.ops;
    const request = toEtcdTxn((k) => this.client.etcdKey(k), input.compares, owned);

    const deadline = Date.now() + this.requestTimeoutMs;
    const res = await this.client.call<ITxnResponse>("write", "KV", "txn", request, deadline, false);
    const revision = Number(res.header.revision);
    if (!res.succeeded) return { succeeded: false, revision };
    if (!txnChanged(owned, res)) return { succeeded: true, revision }; // e.g. deleting an absent key: no new revision
    if (!this.closed) {
      this.mirror.applyOwnWrite(owned, res, revision);
      if (this.follower.live && this.mirror.applied < revision) {
        await this.waitApplied(revision, Math.min(this.ownWriteWaitMs, Math.max(0, deadline - Date.now())));
      }
    }
    return { succeeded: true, revision };
  }

  async put(key: string, value: Buffer): Promise<number> {
    return (await this.txn([], [{ type: "put", key, value }])).revision;
  }

  async delete(key: string): Promise<number> {
    return (await this.txn([], [{ type: "delete", key }])).revision;
  }

  /**
   * True when etcd can still tell every change after `revision` (it has not compacted past it, and
   * it is not a revision etcd has not reached): a watch from there replays what changed. UNAVAILABLE
   * when no member answers within `requestTimeoutMs`.
   */
  async hasHistorySince(revision: number): Promise<boolean> {
    if (this.closed) throw closedError();
    return this.reads.hasHistorySince(revision, Date.now() + this.requestTimeoutMs);
  }

  /** True when a linearizable read (a round trip through the etcd leader and quorum) succeeds now. */
  async healthy(): Promise<boolean> {
    if (this.closed) return false;
    try {
      await this.client.call<IRangeResponse>("health check", "KV", "range", { key: this.client.rangeStart, count_only: true }, Date.now() + this.healthTimeoutMs, true);
      return true;
    } catch {
      return false;
    }
  }

  // ---- watch (subscribers) ---------------------------------------------------------------------

  watch(prefix: string, fromRevision: number, cb: (ev: WatchEvent) => void): () => void {
    if (this.closed) throw closedError();
    if (!Number.isSafeInteger(fromRevision) || fromRevision < 0) {
      throw invalid(`watch fromRevision must be a non-negative integer, got ${String(fromRevision)}`);
    }
    let backlog: WatchEvent[] = [];
    let after = fromRevision;
    if (fromRevision === 0 && this.history.floor > 0) {
      // "Everything": a subscriber that knows nothing converges from the current state, one put per key
      // in modRevision order (deleted keys do not matter to it), then live events.
      if (this.client.touchesUnmirrored(prefix)) {
        const sub = this.hub.subscribePending(prefix, cb);
        void replayState(this, prefix, sub);
        return sub.stop;
      }
      backlog = this.mirror.currentAsEvents(prefix);
      after = this.mirror.applied;
    } else if (fromRevision < this.history.floor) {
      // Older than the own log: from etcd's history, unless etcd is known to have compacted past it.
      if (fromRevision < this.reads.knownCompactRevision) throw new StoreCompactedError(fromRevision, this.reads.knownCompactRevision);
      this.etcdReplays++;
      const sub = this.hub.subscribePending(prefix, cb);
      void replayHistory(this, prefix, fromRevision, this.mirror.applied, sub);
      return sub.stop;
    } else if (fromRevision < this.mirror.applied) {
      backlog = this.history.since(fromRevision, prefix);
    }
    return this.hub.subscribe(prefix, after, backlog, cb);
  }

  // ---- internals: applying changes -------------------------------------------------------------

  private applyEvents(events: IWatchResponse["events"]): void {
    this.publish(this.mirror.applyEvents(events));
    this.wakeWaiters();
  }

  private applySnapshot(snap: Snapshot): void {
    const behind = this.mirror.applied;
    const out = this.mirror.applySnapshot(snap);
    this.log(`resync at revision ${snap.revision}: ${out.length} key(s) changed while the watch was behind`);
    if (this.client.unmirrored.length > 0) {
      this.unmirroredGaps++;
      this.log(
        `deletions under ${this.client.unmirrored.join(", ")} between revisions ${behind} and ${snap.revision} cannot be told (etcd compacted them); ` +
          "subscribers of those prefixes got the keys changed meanwhile and should run their full check",
      );
    }
    this.publish(out);
    this.wakeWaiters();
  }

  private waitApplied(revision: number, ms: number): Promise<void> {
    if (this.mirror.applied >= revision || ms <= 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const w: Waiter = {
        revision,
        done: () => {
          clearTimeout(t);
          resolve();
        },
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve();
      }, ms);
      this.waiters.push(w);
    });
  }

  private wakeWaiters(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.revision <= this.mirror.applied) w.done();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  /** Appends to the replay log and queues for subscribers: the only path by which they get events. */
  private publish(events: WatchEvent[]): void {
    if (events.length === 0) return;
    this.history.append(events);
    this.hub.publish(events);
  }
}

/**
 * Opens the etcd state store for one cluster prefix: reads the prefix into the local mirror and starts
 * following it. Fails with UNAVAILABLE if no etcd quorum answers within `dialTimeoutMs`.
 */
export async function openEtcdStore(opts: EtcdStoreOptions): Promise<EtcdStore> {
  if (!opts || !Array.isArray(opts.endpoints) || opts.endpoints.length === 0) {
    throw invalid("etcd store: endpoints must list at least one etcd client URL");
  }
  for (const ep of opts.endpoints) {
    if (typeof ep !== "string" || ep.trim() === "") throw invalid(`etcd store: bad endpoint ${JSON.stringify(ep)}`);
  }
  if (typeof opts.prefix !== "string") throw invalid("etcd store: prefix must be a string");
  const store = new EtcdStore(opts.prefix, opts);
  try {
    await store.start();
  } catch (err) {
    await store.close();
    throw err instanceof HsmError ? err : unavailable(`state store unavailable: ${(err as Error).message}`, err);
  }
  return store;
}
