/**
 * The state store contract. It is deliberately etcd-shaped (one global revision, compare-and-put
 * transactions, watch from a revision) so that the single-node embedded store and the etcd store are
 * interchangeable: the rest of hsmd sees only this interface.
 */

export interface StoreEntry {
  key: string;
  value: Buffer;
  /** revision that last modified this key */
  modRevision: number;
  /** revision that created it */
  createRevision: number;
  /** number of puts since creation (1 after the first put) */
  version: number;
}

export type Compare = { key: string; op: "absent" } | { key: string; op: "modRevision"; equals: number } | { key: string; op: "present" };

export type Op = { type: "put"; key: string; value: Buffer } | { type: "delete"; key: string };

export interface TxnResult {
  succeeded: boolean;
  /** the revision this txn committed at (on success with writes), else the store revision it saw */
  revision: number;
}

export type WatchEvent = { type: "put" | "delete"; key: string; value?: Buffer; revision: number };

export interface ListOptions {
  /** return only keys strictly greater than this one (pagination cursor: the last key of the previous page) */
  startAfter?: string;
  /** at most this many entries */
  limit?: number;
}

export interface StateStore {
  /** current revision (monotonic, increases by 1 per committed txn that changed something) */
  revision(): number;
  get(key: string): Promise<StoreEntry | undefined>;
  /**
   * Like get, but straight from the replicated store when reads are otherwise served from a local
   * copy (etcd): a miss in the local copy may be a write another node just committed. Optional:
   * stores whose get is already current (the embedded one) do not have it.
   */
  getFresh?(key: string): Promise<StoreEntry | undefined>;
  /** entries whose key starts with prefix, sorted by key; startAfter for pagination, limit */
  list(prefix: string, opts?: ListOptions): Promise<StoreEntry[]>;
  count(prefix: string): Promise<number>;
  /**
   * Atomic: if every compare holds, apply all ops as one revision and resolve only once durable;
   * otherwise apply nothing and resolve `{ succeeded: false }`.
   */
  txn(compares: Compare[], ops: Op[]): Promise<TxnResult>;
  /** txn([], [put]); resolves to the revision of the write */
  put(key: string, value: Buffer): Promise<number>;
  /** txn([], [delete]); resolves to the revision of the write (the current one if the key was absent) */
  delete(key: string): Promise<number>;
  /** events with revision > fromRevision, in order, then live; returns unsubscribe */
  watch(prefix: string, fromRevision: number, cb: (ev: WatchEvent) => void): () => void;
  /**
   * True when every change after `revision` can still be told: a watch from `revision` replays them
   * (etcd: `revision` is at or above etcd's compact revision and not past its current one; the
   * embedded store: `revision` is one of its own since its last compaction). A node that was down
   * catches up from its applied revision when this holds, and runs the full check when it does not.
   * Optional: a store without it is treated as answering false.
   */
  hasHistorySince?(revision: number): Promise<boolean>;
  /** is the store writable right now (used by /readyz) */
  healthy(): Promise<boolean>;
  close(): Promise<void>;
}
