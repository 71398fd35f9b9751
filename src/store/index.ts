/**
 * The state store: the replicated record that is hsmd's source of truth (DESIGN.md principle 2), and
 * the single-node embedded implementation that acknowledges a write only once it is fsync'd
 * (principle 3). An etcd implementation implements the same {@link StateStore}.
 *
 * Files: `types.ts` (the contract), `watch-hub.ts` (the watch delivery both stores share),
 * `txn-input.ts` (the input checks both apply); `embedded*.ts`, `log-*.ts`, `lock.ts` (the embedded
 * store: state, batch evaluation, log format, replay, snapshot); `etcd*.ts` (the etcd store: options,
 * members, client, mirror, txn mapping, watch follower, replay history).
 */
export type { Compare, ListOptions, Op, StateStore, StoreEntry, TxnResult, WatchEvent } from "./types";
export {
  COMPACT_TMP_FILE,
  DEFAULT_COMPACT_AFTER_BYTES,
  EmbeddedStore,
  LOG_FILE,
  openEmbeddedStore,
  type EmbeddedStoreOptions,
  type EmbeddedStoreStats,
} from "./embedded";
export { StoreCompactedError } from "./store-compacted-error";
export { SortedKeys } from "./sorted-keys";
export { TxnGroup, type TxnGroupOptions, type TxnGroupStats } from "./txn-group";
export { DirLock, LOCK_FILE } from "./lock";
export { getJson, getJsonFresh, getJsonLatest, jsonCodec, putJson, type Codec, type JsonEntry } from "./json";
export { EtcdStore, openEtcdStore, type EtcdStoreOptions, type EtcdStoreStats } from "./etcd";
