/** Options and counters of the etcd store, their defaults, and the limits of its calls to etcd. */
import { invalid } from "../errors";

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
  /**
   * Prefixes (relative to `prefix`) whose values the mirror does not hold: `get`, `list` and `count`
   * under them read etcd (linearizable; no answer while etcd is unreachable), and watch events under
   * them are delivered to subscribers, then dropped. For records that are many and large (the daemon:
   * `keys/`, `requests/`), so that the store's memory does not grow with them.
   */
  unmirrored?: string[];
  /** where operational messages go (reconnects, resyncs); default: a line on stderr */
  log?: (msg: string) => void;
}

/** Counters of an {@link EtcdStore}, for tests and /v1/status. */
export interface EtcdStoreStats {
  /** the mirror's revision (see {@link EtcdStore.revision}) */
  revision: number;
  /** keys in the mirror (keys under unmirrored prefixes are not) */
  keys: number;
  /** own committed writes not yet confirmed by the watch */
  pendingOwnWrites: number;
  /** the watch stream is established and applying events */
  watchLive: boolean;
  /** watch stream failures that led to a reconnect */
  reconnects: number;
  /** full re-reads of the prefix after the watch's revision was compacted */
  resyncs: number;
  /** resyncs after which deletions under unmirrored prefixes could not be told (see the log line) */
  unmirroredGaps: number;
  /** watches from before `historyFloor` served by replaying etcd's own history */
  etcdReplays: number;
  /** the oldest revision watch() replays from the mirror's own log (older ones: from etcd) */
  historyFloor: number;
  /** the member writes and the watch go to first */
  preferredEndpoint: string;
}

/** Defaults of the {@link EtcdStoreOptions} of the same names. */
export const DEFAULT_DIAL_TIMEOUT_MS = 5000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
export const DEFAULT_HEALTH_TIMEOUT_MS = 2000;
export const DEFAULT_HISTORY_LIMIT = 10_000;
export const DEFAULT_OWN_WRITE_WAIT_MS = 1000;
/** keys per page of a full read of the prefix */
export const RANGE_PAGE = 1000;
/** a member that failed is tried last for this long */
export const SUSPECT_MS = 3000;
/** Bounds of the backoff between retries and reconnects. */
export const MIN_BACKOFF_MS = 50;
export const MAX_BACKOFF_MS = 2000;

/**
 * The `unmirrored` option checked and reduced: non-empty strings, sorted, each not under another
 * (a prefix inside an unmirrored one adds nothing). INVALID_ARGUMENT names a bad entry.
 */
export function unmirroredPrefixes(v: string[] | undefined): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw invalid("etcd store option unmirrored must be an array of key prefixes");
  for (const p of v) {
    if (typeof p !== "string" || p === "") throw invalid(`etcd store option unmirrored: each entry must be a non-empty key prefix, got ${JSON.stringify(p)}`);
  }
  const sorted = [...new Set(v)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const out: string[] = [];
  for (const p of sorted) if (!out.some((q) => p.startsWith(q))) out.push(p);
  return out;
}

/** A positive integer option, or its default; INVALID_ARGUMENT names the option otherwise. */
export function positiveInt(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v <= 0) throw invalid(`etcd store option ${name} must be a positive integer, got ${String(v)}`);
  return v;
}
