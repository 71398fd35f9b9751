/** Options and counters of the embedded store. */

/** Options of {@link openEmbeddedStore}. */
export interface EmbeddedStoreOptions {
  /** compact when the log is larger than this and at least twice its size after the last compaction */
  compactAfterBytes?: number;
  /** where warnings go (a discarded torn tail); default: a line on stderr */
  warn?: (message: string) => void;
}

/** Counters of an {@link EmbeddedStore}, for tests and /v1/status. */
export interface EmbeddedStoreStats {
  revision: number;
  keys: number;
  /** fsync calls on the log for commits (group commit keeps this far below `txns`) */
  fsyncs: number;
  /** write batches (each one write + one fsync) */
  batches: number;
  /** txns that committed a revision */
  txns: number;
  logBytes: number;
  compactions: number;
  /** the oldest revision a watch can start from (revisions <= this were compacted away) */
  compactRevision: number;
}
