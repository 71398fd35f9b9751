/**
 * The cluster state store on etcd (DESIGN.md: "or etcd (a cluster: Raft, quorum writes, watch)").
 *
 * Design:
 *
 * - **Mirror.** The store keeps a full copy of its cluster prefix in memory. At open it reads the whole
 *   prefix at one revision R (paginated, linearizable), then watches the prefix from R+1 and applies
 *   every event in order. `get`, `list` and `count` read the mirror: they are fast and keep answering
 *   (with what this node knows) while etcd is unreachable. `revision()` is the revision of the last
 *   event (or full read) applied to the mirror: every change at or below it is in the mirror. etcd's
 *   revision is global to the etcd cluster, so writes under other prefixes leave gaps in the revisions
 *   this store sees; they are still monotonic.
 *
 * - **Writes** go to etcd as one transaction (compares: `absent` → create revision = 0, `present` →
 *   create revision > 0, `modRevision` → mod revision equal) and resolve only once etcd committed them.
 *   A committed write is applied to the mirror at once as a per-key *overlay* (so this node reads its
 *   own writes); the overlay entry is dropped when the watch delivers that revision. The txn then waits
 *   briefly (`ownWriteWaitMs`, only while the watch is live) for the watch to pass its revision, so in
 *   the normal case `revision()` is at least the write's revision when the txn resolves. Subscribers
 *   are fed from the watch stream only: each event exactly once, in revision order.
 *
 * - **Watch replay.** `watch(prefix, from, cb)` replays from the mirror's own event log, which holds
 *   the events applied since open, bounded to the last `historyLimit` events. Asking for events older
 *   than that window throws {@link StoreCompactedError} (as the embedded store does after compaction):
 *   list the prefix and watch from `revision()` instead. `from` = 0 ("everything", for a subscriber
 *   that starts empty) is always served: one put per current key in modRevision order, then live.
 *
 * - **Reconnect and compaction.** When the watch stream fails (member down, member without a leader:
 *   every call carries etcd's require-leader metadata) it reconnects with backoff, preferring another
 *   member, and resumes from `revision() + 1`, so etcd replays exactly the missed events. When etcd
 *   answers that this revision was compacted, the store re-reads the whole prefix, diffs it against
 *   the mirror and emits synthetic put/delete events at the read revision for the differences (so
 *   subscribers converge on the same state), then watches from there.
 *
 * - **Errors.** Unreachable members, lost quorum and timeouts become `HsmError` UNAVAILABLE with a
 *   message that says why; every write is bounded by `requestTimeoutMs`. A write is re-sent to another
 *   member only when the first one certainly did not receive it (connection refused, or refused for
 *   lack of a leader); a write whose outcome is unknown is reported as such, never silently retried.
 */
import type { CallOptions, ChannelOptions, ClientDuplexStream, Metadata, ServiceError } from "@grpc/grpc-js";
import {
  CompareResult,
  CompareTarget,
  Etcd3,
  type ICompare,
  type IKeyValue,
  type IOptions,
  type IRangeResponse,
  type IRequestOp,
  type ITxnResponse,
  type IWatchRequest,
  type IWatchResponse,
} from "etcd3";
import { Code, HsmError, invalid, unavailable } from "../errors";
import { StoreCompactedError } from "./store-compacted-error";
import { SortedKeys } from "./sorted-keys";
import { checkTxnInput } from "./txn-input";
import type { Compare, ListOptions, Op, StateStore, StoreEntry, TxnResult, WatchEvent } from "./types";
import { WatchHub } from "./watch-hub";

/** Options of {@link openEtcdStore}. */
export interface EtcdStoreOptions {
  /** etcd client URLs (`http://host:port`, `https://host:port` or `host:port`) of the members */
  endpoints: string[];
  /** the cluster's prefix, e.g. `hsmd/<cluster>/`; every key of the store interface is relative to it */
  prefix: string;
  /** TLS to etcd: CA bundle, and a client certificate and key for mutual TLS */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** how long open() may take to reach etcd and read the prefix, and to wait for a watch to start (default 5000) */
  dialTimeoutMs?: number;
  /** deadline of one write (txn/put/delete), retries to other members included (default 5000) */
  requestTimeoutMs?: number;
  /** deadline of the round trip of healthy() (default 2000) */
  healthTimeoutMs?: number;
  /** how many past events the mirror keeps for watch replay (default 10000) */
  historyLimit?: number;
  /** how long a committed txn waits for the watch to deliver its revision (default 1000) */
  ownWriteWaitMs?: number;
  /** where operational messages go (reconnects, resyncs); default: a line on stderr */
  log?: (msg: string) => void;
}

/** Counters of an {@link EtcdStore}, for tests and /v1/status. */
export interface EtcdStoreStats {
  /** the mirror's revision (see {@link EtcdStore.revision}) */
  revision: number;
  /** keys in the mirror */
  keys: number;
  /** own committed writes not yet confirmed by the watch */
  pendingOwnWrites: number;
  /** the watch stream is established and applying events */
  watchLive: boolean;
  /** watch stream failures that led to a reconnect */
  reconnects: number;
  /** full re-reads of the prefix after the watch's revision was compacted */
  resyncs: number;
  /** the oldest revision watch() can start from */
  historyFloor: number;
  /** the member writes and the watch go to first */
  preferredEndpoint: string;
}

const DEFAULT_DIAL_TIMEOUT_MS = 5000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
const DEFAULT_HEALTH_TIMEOUT_MS = 2000;
const DEFAULT_HISTORY_LIMIT = 10_000;
const DEFAULT_OWN_WRITE_WAIT_MS = 1000;
/** keys per page of a full read of the prefix */
const RANGE_PAGE = 1000;
/** a member that failed is tried last for this long */
const SUSPECT_MS = 3000;
const MIN_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 2000;

const GRPC_OPTIONS: ChannelOptions = {
  "grpc.max_receive_message_length": -1,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000,
};

// ---- etcd transport ----------------------------------------------------------------------------

type FaultHandling = NonNullable<IOptions["faultHandling"]>;
type Policy = NonNullable<FaultHandling["global"]>;

/** A cockatiel-compatible policy that just runs the call: host choice and retries are done here. */
const PASS_THROUGH = {
  execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> =>
    fn({ signal: signal ?? new AbortController().signal }),
} as unknown as Policy;

type UnaryMethod = (
  req: unknown,
  md: Metadata,
  opts: CallOptions,
  cb: (err: ServiceError | null, res?: unknown) => void,
) => unknown;
type WatchMethod = (md: Metadata, opts: CallOptions) => ClientDuplexStream<IWatchRequest, IWatchResponse>;

/** Marks calls so that a member without a leader refuses them at once (etcd's WithRequireLeader). */
function requireLeader(md: Metadata): Metadata {
  const out = md.clone();
  out.set("hasleader", "true");
  return out;
}

/** One etcd member: an etcd3 client over that single host, whose grpc services we call directly. */
class Member extends Etcd3 {
  suspectUntil = 0;

  constructor(
    readonly endpoint: string,
    options: IOptions,
  ) {
    super(options);
  }

  unary<T>(service: "KV" | "Maintenance", method: string, req: unknown, deadline: number): Promise<T> {
    return this.pool.withConnection(
      service,
      ({ client, metadata }) =>
        new Promise<T>((resolve, reject) => {
          const fn = (client as unknown as Record<string, UnaryMethod>)[method]!;
          fn.call(client, req, requireLeader(metadata), { deadline }, (err, res) => {
            if (err) reject(new RpcFailure(this.endpoint, err));
            else resolve(res as T);
          });
        }),
    );
  }

  watchStream(): Promise<ClientDuplexStream<IWatchRequest, IWatchResponse>> {
    return this.pool.withConnection("Watch", ({ client, metadata }) =>
      (client as unknown as { watch: WatchMethod }).watch(requireLeader(metadata), {}),
    );
  }
}

/** A failed call to one member, with the grpc status kept (etcd3's own error casting drops it). */
class RpcFailure extends Error {
  readonly code: number;
  readonly details: string;

  constructor(
    readonly endpoint: string,
    err: Partial<ServiceError> & Error,
  ) {
    super(err.details || err.message);
    this.code = typeof err.code === "number" ? err.code : -1;
    this.details = err.details || err.message;
  }

  /** The member certainly did not execute the request, so another member may be asked. */
  get notSent(): boolean {
    // A deadline that passed while grpc-js was still waiting for a connection: nothing was sent.
    if (this.code === 4 && /Waiting for LB pick/i.test(this.details)) return true;
    if (this.code !== 14) return false;
    if (this.details.startsWith("etcdserver: no leader")) return true; // refused by the require-leader check
    if (this.details.startsWith("etcdserver:")) return false; // e.g. "request timed out": may still commit
    return /no connection established|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|name resolution|failed to connect/i.test(
      this.details,
    );
  }

  /** A read at a revision that etcd has compacted away. */
  get compacted(): boolean {
    return this.code === 11 || /required revision has been compacted/.test(this.details);
  }

  /** The call ran into its deadline, or etcd's own proposal timeout. */
  get timedOut(): boolean {
    return this.code === 4 || /request timed out|leader changed/.test(this.details);
  }

  describe(): string {
    return `${this.endpoint}: ${this.details}`;
  }
}

function asFailure(err: unknown, endpoint: string): RpcFailure {
  if (err instanceof RpcFailure) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  return new RpcFailure(endpoint, e);
}

function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // no upper bound: every key from the start
}

// ---- the store ---------------------------------------------------------------------------------

interface Snapshot {
  revision: number;
  entries: StoreEntry[];
}

interface Waiter {
  revision: number;
  done: () => void;
}

function copyEntry(e: StoreEntry): StoreEntry {
  return { ...e, value: Buffer.from(e.value) };
}

function positiveInt(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v <= 0) throw invalid(`etcd store option ${name} must be a positive integer, got ${String(v)}`);
  return v;
}

function closedError(): HsmError {
  return unavailable("state store is closed");
}

/**
 * The etcd implementation of {@link StateStore}: a local mirror of one cluster prefix kept current by
 * a watch, with writes committed by the etcd quorum. Open it with {@link openEtcdStore}; see the module
 * comment for the design.
 */
export class EtcdStore implements StateStore {
  private readonly members: Member[];
  private preferred: Member;
  private readonly prefixBuf: Buffer;
  private readonly rangeStart: Buffer;
  private readonly rangeEnd: Buffer;
  private readonly dialTimeoutMs: number;
  private readonly requestTimeoutMs: number;
  private readonly healthTimeoutMs: number;
  private readonly historyLimit: number;
  private readonly ownWriteWaitMs: number;
  private readonly log: (msg: string) => void;

  /** the state as of `applied`, from the watch and full reads only: what subscribers have been told */
  private readonly base = new Map<string, StoreEntry>();
  private readonly keys = new SortedKeys();
  /** own committed writes above `applied`, until the watch delivers them (null: deleted) */
  private readonly overlay = new Map<string, { entry: StoreEntry | null; revision: number }>();
  private applied = 0;

  private history: WatchEvent[] = [];
  private historyHead = 0;
  private historyFloor = 0;
  private readonly hub: WatchHub;
  private waiters: Waiter[] = [];

  private closed = false;
  private readonly stopSignal = new AbortController();
  /** bumped whenever the current watch stream is abandoned; callbacks of older streams are ignored */
  private watchGen = 0;
  private stream: ClientDuplexStream<IWatchRequest, IWatchResponse> | undefined;
  private watchLive = false;
  private watchTimer: NodeJS.Timeout | undefined;
  private backoffMs = MIN_BACKOFF_MS;
  private failStreak = 0;
  private readonly counters = { reconnects: 0, resyncs: 0 };

  /** @internal use {@link openEtcdStore} */
  constructor(readonly prefix: string, opts: EtcdStoreOptions) {
    this.dialTimeoutMs = positiveInt("dialTimeoutMs", opts.dialTimeoutMs, DEFAULT_DIAL_TIMEOUT_MS);
    this.requestTimeoutMs = positiveInt("requestTimeoutMs", opts.requestTimeoutMs, DEFAULT_REQUEST_TIMEOUT_MS);
    this.healthTimeoutMs = positiveInt("healthTimeoutMs", opts.healthTimeoutMs, DEFAULT_HEALTH_TIMEOUT_MS);
    this.historyLimit = positiveInt("historyLimit", opts.historyLimit, DEFAULT_HISTORY_LIMIT);
    this.ownWriteWaitMs = positiveInt("ownWriteWaitMs", opts.ownWriteWaitMs, DEFAULT_OWN_WRITE_WAIT_MS);
    this.log = opts.log ?? ((m: string) => process.stderr.write(`hsmd store (etcd): ${m}\n`));
    this.hub = new WatchHub(this.log);
    this.prefixBuf = Buffer.from(prefix, "utf8");
    this.rangeStart = this.prefixBuf.length > 0 ? this.prefixBuf : Buffer.from([0]);
    this.rangeEnd = prefixEnd(this.prefixBuf);

    const tls = opts.tls;
    if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
      throw invalid("etcd store tls: cert and key go together (mutual TLS needs both)");
    }
    const credentials = tls
      ? { rootCertificate: tls.ca as Buffer, privateKey: tls.key, certChain: tls.cert }
      : undefined;
    this.members = opts.endpoints.map((endpoint) => {
      const options: IOptions = {
        hosts: endpoint,
        grpcOptions: GRPC_OPTIONS,
        faultHandling: { host: () => PASS_THROUGH, global: PASS_THROUGH },
      };
      if (credentials) options.credentials = credentials;
      return new Member(endpoint, options);
    });
    this.preferred = this.members[0]!;
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** @internal reads the prefix and starts the watch; called once by {@link openEtcdStore} */
  async start(): Promise<void> {
    const snap = await this.readAll(Date.now() + this.dialTimeoutMs, "open");
    for (const e of snap.entries) this.setBase(e.key, e);
    this.applied = snap.revision;
    this.historyFloor = snap.revision;
    this.startWatch();
  }

  /** Stops the watch and closes the connections. Later calls answer UNAVAILABLE. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopSignal.abort();
    this.abandonStream();
    this.watchLive = false;
    for (const w of this.waiters) w.done();
    this.waiters = [];
    this.hub.close();
    for (const m of this.members) m.close();
  }

  // ---- reads (from the mirror) -----------------------------------------------------------------

  /**
   * The mirror's revision: the revision of the last watch event or full read applied. Every change at
   * or below it is in the mirror (own writes above it are visible to get/list too).
   */
  revision(): number {
    return this.applied;
  }

  /** Counters for tests and status pages. */
  stats(): EtcdStoreStats {
    let keys = this.base.size;
    for (const [k, o] of this.overlay) {
      const inBase = this.base.has(k);
      if (o.entry && !inBase) keys++;
      else if (!o.entry && inBase) keys--;
    }
    return {
      revision: this.applied,
      keys,
      pendingOwnWrites: this.overlay.size,
      watchLive: this.watchLive,
      reconnects: this.counters.reconnects,
      resyncs: this.counters.resyncs,
      historyFloor: this.historyFloor,
      preferredEndpoint: this.preferred.endpoint,
    };
  }

  async get(key: string): Promise<StoreEntry | undefined> {
    const o = this.overlay.get(key);
    const e = o ? o.entry : this.base.get(key);
    return e ? copyEntry(e) : undefined;
  }

  /**
   * A linearizable read of one key from etcd itself (not the mirror): for a record another node has
   * just committed and this node's watch has not delivered yet (a key created on node A and used on
   * node B a moment later). Falls back to the mirror when etcd cannot answer in time.
   */
  async getFresh(key: string): Promise<StoreEntry | undefined> {
    if (this.closed) throw closedError();
    try {
      const res = await this.call<IRangeResponse>("fresh read", "KV", "range", { key: Buffer.concat([this.prefixBuf, Buffer.from(key, "utf8")]) }, Date.now() + this.healthTimeoutMs, true);
      const kv = res.kvs[0];
      return kv ? this.entryOf(key, kv) : undefined;
    } catch {
      return this.get(key);
    }
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<StoreEntry[]> {
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 0)) throw invalid(`list limit must be >= 0, got ${String(opts.limit)}`);
    const out: StoreEntry[] = [];
    if (limit === 0) return out;
    const after = opts.startAfter;
    const fromBase = after !== undefined && after >= prefix ? this.keys.from(after, true) : this.keys.from(prefix);
    const nextBase = (): string | undefined => {
      const r = fromBase.next();
      return r.done || !r.value.startsWith(prefix) ? undefined : r.value;
    };
    const own = [...this.overlay.keys()]
      .filter((k) => k.startsWith(prefix) && (after === undefined || k > after))
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    let b = nextBase();
    let i = 0;
    while (out.length < limit) {
      const ok = own[i];
      if (b === undefined && ok === undefined) break;
      if (ok !== undefined && (b === undefined || ok <= b)) {
        const e = this.overlay.get(ok)!.entry;
        if (e) out.push(copyEntry(e));
        i++;
        if (ok === b) b = nextBase();
      } else {
        const k = b!;
        if (!this.overlay.has(k)) out.push(copyEntry(this.base.get(k)!));
        b = nextBase();
      }
    }
    return out;
  }

  async count(prefix: string): Promise<number> {
    let n = 0;
    if (prefix === "") n = this.base.size;
    else {
      for (const k of this.keys.from(prefix)) {
        if (!k.startsWith(prefix)) break;
        n++;
      }
    }
    for (const [k, o] of this.overlay) {
      if (!k.startsWith(prefix)) continue;
      const inBase = this.base.has(k);
      if (o.entry && !inBase) n++;
      else if (!o.entry && inBase) n--;
    }
    return n;
  }

  // ---- writes (to etcd) ------------------------------------------------------------------------

  async txn(compares: Compare[], ops: Op[]): Promise<TxnResult> {
    if (this.closed) throw closedError();
    const input = checkTxnInput(compares, ops);
    const owned = input.ops;
    const etcdCompares: ICompare[] = input.compares.map((c) => {
      const key = this.etcdKey(c.key);
      switch (c.op) {
        case "absent":
          return { key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 };
        case "present":
          return { key, target: CompareTarget.Create, result: CompareResult.Greater, create_revision: 0 };
        case "modRevision":
          return { key, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: c.equals };
      }
    });
    const success: IRequestOp[] = owned.map((op) =>
      op.type === "put"
        ? { request_put: { key: this.etcdKey(op.key), value: op.value, prev_kv: true } }
        : { request_delete_range: { key: this.etcdKey(op.key) } },
    );

    const deadline = Date.now() + this.requestTimeoutMs;
    const res = await this.call<ITxnResponse>("write", "KV", "txn", { compare: etcdCompares, success }, deadline, false);
    const revision = Number(res.header.revision);
    if (!res.succeeded) return { succeeded: false, revision };
    let changed = false;
    owned.forEach((op, i) => {
      if (op.type === "put") changed = true;
      else if (Number(res.responses[i]?.response_delete_range?.deleted ?? 0) > 0) changed = true;
    });
    if (!changed) return { succeeded: true, revision }; // e.g. deleting an absent key: no new revision
    if (!this.closed) {
      this.applyOwnWrite(owned, res, revision);
      if (this.watchLive && this.applied < revision) {
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

  /** True when a linearizable read (a round trip through the etcd leader and quorum) succeeds now. */
  async healthy(): Promise<boolean> {
    if (this.closed) return false;
    try {
      await this.call<IRangeResponse>(
        "health check",
        "KV",
        "range",
        { key: this.rangeStart, count_only: true },
        Date.now() + this.healthTimeoutMs,
        true,
      );
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
    const backlog: WatchEvent[] = [];
    let after = fromRevision;
    if (fromRevision === 0 && this.historyFloor > 0) {
      // "Everything": a subscriber that knows nothing converges from the current state, one put per key
      // in modRevision order (deleted keys do not matter to it), then live events.
      for (const k of this.keys.from(prefix)) {
        if (!k.startsWith(prefix)) break;
        const e = this.base.get(k)!;
        backlog.push({ revision: e.modRevision, type: "put", key: k, value: e.value });
      }
      backlog.sort((a, b) => a.revision - b.revision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      after = this.applied;
    } else if (fromRevision < this.historyFloor) {
      throw new StoreCompactedError(fromRevision, this.historyFloor);
    } else if (fromRevision < this.applied) {
      for (let i = this.historyHead; i < this.history.length; i++) {
        const ev = this.history[i]!;
        if (ev.revision > fromRevision && ev.key.startsWith(prefix)) backlog.push(ev);
      }
    }
    return this.hub.subscribe(prefix, after, backlog, cb);
  }

  // ---- internals: etcd calls -------------------------------------------------------------------

  private etcdKey(key: string): Buffer {
    return Buffer.concat([this.prefixBuf, Buffer.from(key, "utf8")]);
  }

  private keyOf(etcdKey: Buffer): string | undefined {
    if (etcdKey.length < this.prefixBuf.length || !etcdKey.subarray(0, this.prefixBuf.length).equals(this.prefixBuf)) return undefined;
    return etcdKey.subarray(this.prefixBuf.length).toString("utf8");
  }

  private entryOf(key: string, kv: IKeyValue): StoreEntry {
    return {
      key,
      value: Buffer.from(kv.value ?? Buffer.alloc(0)),
      modRevision: Number(kv.mod_revision),
      createRevision: Number(kv.create_revision),
      version: Number(kv.version),
    };
  }

  /** Members in the order to try: the preferred one, the others, then those that failed recently. */
  private order(): Member[] {
    const now = Date.now();
    const start = this.members.indexOf(this.preferred);
    const rotated = [...this.members.slice(start), ...this.members.slice(0, start)];
    const good = rotated.filter((m) => m.suspectUntil <= now);
    const bad = rotated.filter((m) => m.suspectUntil > now).sort((a, b) => a.suspectUntil - b.suspectUntil);
    return [...good, ...bad];
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopSignal.signal.aborted) return resolve();
      const signal = this.stopSignal.signal;
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  /**
   * One request, to the first member that takes it before the deadline. `idempotent` requests (reads)
   * are retried on any failure; writes only when the member certainly did not receive them.
   */
  private async call<T>(
    what: string,
    service: "KV" | "Maintenance",
    method: string,
    req: unknown,
    deadline: number,
    idempotent: boolean,
  ): Promise<T> {
    const budget = Math.max(0, deadline - Date.now());
    const failures = new Map<string, string>();
    let backoff = MIN_BACKOFF_MS / 2;
    for (;;) {
      for (const m of this.order()) {
        if (this.closed) throw closedError();
        const now = Date.now();
        if (now >= deadline) break;
        // A read gives each member a share of the budget, so one that does not answer cannot use it all.
        const attemptDeadline = idempotent ? Math.min(deadline, now + Math.max(1000, (deadline - now) / 2)) : deadline;
        try {
          const res = await m.unary<T>(service, method, req, attemptDeadline);
          this.preferred = m;
          return res;
        } catch (err) {
          if (this.closed) throw closedError();
          const f = asFailure(err, m.endpoint);
          if (f.compacted) throw f; // the caller restarts its read
          failures.set(m.endpoint, f.details);
          m.suspectUntil = Date.now() + SUSPECT_MS;
          if (f.notSent || idempotent) continue;
          throw this.writeError(what, f, budget);
        }
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      await this.sleep(Math.min(backoff, left));
      backoff = Math.min(backoff * 2, 500);
    }
    const why = [...failures].map(([ep, d]) => `${ep}: ${d}`).join("; ") || "no member was tried";
    throw unavailable(`state store unavailable: no etcd quorum reachable (${what} got no answer within ${budget} ms; ${why})`);
  }

  /** A write that reached a member and failed there. */
  private writeError(what: string, f: RpcFailure, budget: number): HsmError {
    if (f.timedOut || f.code === 14 || f.code === 1) {
      return unavailable(
        `state store unavailable: no etcd quorum reachable (the ${what} was not confirmed within ${budget} ms by ${f.endpoint}: ` +
          `${f.details}; it may still be applied)`,
        f,
      );
    }
    if (f.code === 3) return invalid(`state store rejected the ${what}: ${f.details}`);
    if (f.code === 8) return new HsmError(Code.ResourceExhausted, `state store rejected the ${what}: ${f.details}`, { cause: f });
    if (f.code === 7 || f.code === 16) {
      return unavailable(`state store unavailable: etcd at ${f.endpoint} refused access (${f.details})`, f);
    }
    return unavailable(`state store unavailable: the ${what} failed at ${f.endpoint} (${f.details})`, f);
  }

  /** The whole prefix at one revision, page by page; restarts if that revision is compacted meanwhile. */
  private async readAll(deadline: number, what: string): Promise<Snapshot> {
    for (;;) {
      const entries: StoreEntry[] = [];
      let revision = 0;
      let start = this.rangeStart;
      try {
        for (;;) {
          const res = await this.call<IRangeResponse>(
            `${what} read`,
            "KV",
            "range",
            { key: start, range_end: this.rangeEnd, limit: RANGE_PAGE, revision },
            deadline,
            true,
          );
          if (revision === 0) revision = Number(res.header.revision);
          for (const kv of res.kvs) {
            const key = this.keyOf(kv.key);
            if (key !== undefined) entries.push(this.entryOf(key, kv));
          }
          if (!res.more || res.kvs.length === 0) break;
          start = Buffer.concat([res.kvs[res.kvs.length - 1]!.key, Buffer.from([0])]);
        }
        return { revision, entries };
      } catch (err) {
        if (err instanceof RpcFailure && err.compacted && Date.now() < deadline) continue;
        if (err instanceof RpcFailure) throw unavailable(`state store unavailable: ${what} read failed (${err.describe()})`, err);
        throw err;
      }
    }
  }

  // ---- internals: the watch stream -------------------------------------------------------------

  private abandonStream(): void {
    this.watchGen++;
    if (this.watchTimer) clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    const s = this.stream;
    this.stream = undefined;
    if (s) {
      try {
        s.cancel();
      } catch {
        // already gone
      }
    }
  }

  private startWatch(): void {
    if (this.closed) return;
    const gen = ++this.watchGen;
    const member = this.order()[0]!;
    const from = this.applied + 1;
    this.watchTimer = setTimeout(
      () => this.watchFailed(gen, member, new Error(`the watch was not confirmed within ${this.dialTimeoutMs} ms`)),
      this.dialTimeoutMs,
    );
    member.watchStream().then(
      (stream) => {
        if (gen !== this.watchGen || this.closed) {
          stream.cancel();
          return;
        }
        this.stream = stream;
        stream.on("data", (res: IWatchResponse) => this.onWatchResponse(gen, member, from, res));
        stream.on("error", (err: Error) => this.watchFailed(gen, member, err));
        stream.on("end", () => this.watchFailed(gen, member, new Error("the watch stream ended")));
        stream.write({
          create_request: {
            key: this.rangeStart,
            range_end: this.rangeEnd,
            start_revision: from,
            progress_notify: false,
            prev_kv: false,
          },
        });
      },
      (err: unknown) => this.watchFailed(gen, member, err),
    );
  }

  private onWatchResponse(gen: number, member: Member, from: number, res: IWatchResponse): void {
    if (gen !== this.watchGen || this.closed) return;
    if (res.canceled) {
      const compactRev = Number(res.compact_revision ?? 0);
      if (compactRev > 0) {
        void this.resync(`the watch from revision ${from} was refused: etcd compacted its history up to revision ${compactRev}`);
      } else {
        this.watchFailed(gen, member, new Error(`etcd canceled the watch (${res.cancel_reason || "no reason given"})`));
      }
      return;
    }
    if (res.created) {
      if (this.watchTimer) clearTimeout(this.watchTimer);
      this.watchTimer = undefined;
      this.watchLive = true;
      this.backoffMs = MIN_BACKOFF_MS;
      if (this.failStreak > 0) {
        this.log(`watch re-established on ${member.endpoint} from revision ${from} after ${this.failStreak} failed attempt(s)`);
      }
      this.failStreak = 0;
    }
    if (res.events && res.events.length > 0) this.applyEvents(res.events);
  }

  private watchFailed(gen: number, member: Member, err: unknown): void {
    if (gen !== this.watchGen || this.closed) return;
    this.abandonStream();
    this.watchLive = false;
    member.suspectUntil = Date.now() + SUSPECT_MS;
    this.counters.reconnects++;
    this.failStreak++;
    const why = asFailure(err, member.endpoint).details;
    if (this.failStreak === 1 || this.failStreak % 20 === 0) {
      this.log(
        `watch on ${member.endpoint} failed (${why}); serving reads from the mirror at revision ${this.applied} ` +
          `and reconnecting (attempt ${this.failStreak})`,
      );
    }
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    void this.sleep(delay).then(() => {
      if (!this.closed && this.stream === undefined && !this.watchLive) this.startWatch();
    });
  }

  /** The watch's revision is gone: re-read the prefix, emit the differences, then watch again. */
  private async resync(reason: string): Promise<void> {
    this.abandonStream();
    this.watchLive = false;
    this.counters.resyncs++;
    this.log(`${reason}; re-reading the prefix to converge`);
    let backoff = MIN_BACKOFF_MS;
    while (!this.closed) {
      try {
        const snap = await this.readAll(Date.now() + this.requestTimeoutMs, "resync");
        if (this.closed) return;
        if (snap.revision < this.applied) throw new Error(`read revision ${snap.revision} is behind the mirror (${this.applied})`);
        this.applySnapshot(snap);
        break;
      } catch (err) {
        this.log(`resync failed (${(err as Error).message}); retrying`);
        await this.sleep(backoff);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
    if (!this.closed) this.startWatch();
  }

  // ---- internals: applying changes -------------------------------------------------------------

  private setBase(key: string, entry: StoreEntry | null): void {
    if (entry) {
      if (!this.base.has(key)) this.keys.insert(key);
      this.base.set(key, entry);
    } else if (this.base.delete(key)) {
      this.keys.delete(key);
    }
  }

  private applyEvents(events: IWatchResponse["events"]): void {
    const floor = this.applied; // a revision is applied whole, so anything at or below it is a duplicate
    const out: WatchEvent[] = [];
    for (const ev of events) {
      const revision = Number(ev.kv.mod_revision);
      if (!(revision > floor)) continue;
      const key = this.keyOf(ev.kv.key);
      if (key === undefined) continue;
      if (String(ev.type).toUpperCase() === "DELETE") {
        this.setBase(key, null);
        out.push({ revision, type: "delete", key });
      } else {
        const entry = this.entryOf(key, ev.kv);
        this.setBase(key, entry);
        out.push({ revision, type: "put", key, value: entry.value });
      }
      const own = this.overlay.get(key);
      if (own && own.revision <= revision) this.overlay.delete(key);
      if (revision > this.applied) this.applied = revision;
    }
    this.publish(out);
    this.wakeWaiters();
  }

  private applySnapshot(snap: Snapshot): void {
    const R = snap.revision;
    const fresh = new Map<string, StoreEntry>();
    for (const e of snap.entries) fresh.set(e.key, e);
    const diff: { key: string; entry: StoreEntry | null }[] = [];
    for (const k of this.base.keys()) if (!fresh.has(k)) diff.push({ key: k, entry: null });
    for (const e of snap.entries) {
      const old = this.base.get(e.key);
      if (!old || old.modRevision !== e.modRevision || old.createRevision !== e.createRevision) diff.push({ key: e.key, entry: e });
    }
    diff.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const out: WatchEvent[] = [];
    for (const d of diff) {
      this.setBase(d.key, d.entry);
      out.push(d.entry ? { revision: R, type: "put", key: d.key, value: d.entry.value } : { revision: R, type: "delete", key: d.key });
    }
    for (const [k, o] of this.overlay) if (o.revision <= R) this.overlay.delete(k);
    if (R > this.applied) this.applied = R;
    this.log(`resync at revision ${R}: ${diff.length} key(s) changed while the watch was behind`);
    this.publish(out);
    this.wakeWaiters();
  }

  private applyOwnWrite(ops: Op[], res: ITxnResponse, revision: number): void {
    if (revision <= this.applied) return; // the watch was faster
    ops.forEach((op, i) => {
      const cur = this.overlay.get(op.key);
      if (cur && cur.revision >= revision) return;
      if (op.type === "put") {
        const prev = res.responses[i]?.response_put?.prev_kv;
        this.overlay.set(op.key, {
          revision,
          entry: {
            key: op.key,
            value: op.value,
            modRevision: revision,
            createRevision: prev ? Number(prev.create_revision) : revision,
            version: prev ? Number(prev.version) + 1 : 1,
          },
        });
      } else if (Number(res.responses[i]?.response_delete_range?.deleted ?? 0) > 0) {
        this.overlay.set(op.key, { revision, entry: null });
      }
    });
  }

  private waitApplied(revision: number, ms: number): Promise<void> {
    if (this.applied >= revision || ms <= 0 || this.closed) return Promise.resolve();
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
      if (w.revision <= this.applied) w.done();
      else keep.push(w);
    }
    this.waiters = keep;
  }

  /** Appends to the replay log and queues for subscribers: the only path by which they get events. */
  private publish(events: WatchEvent[]): void {
    if (events.length === 0) return;
    for (const ev of events) this.history.push(ev);
    this.trimHistory();
    this.hub.publish(events);
  }

  private trimHistory(): void {
    const h = this.history;
    if (h.length - this.historyHead <= this.historyLimit) return;
    let i = h.length - this.historyLimit;
    // Drop whole revisions only, so that the floor is exact.
    while (i < h.length && h[i]!.revision === h[i - 1]!.revision) i++;
    this.historyFloor = Math.max(this.historyFloor, h[i - 1]!.revision);
    this.historyHead = i;
    if (this.historyHead > 1024 && this.historyHead * 2 > h.length) {
      this.history = h.slice(this.historyHead);
      this.historyHead = 0;
    }
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
