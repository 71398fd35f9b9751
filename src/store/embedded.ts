/**
 * The single-node state store: an append-only, checksummed log in one directory, replayed into a
 * sorted in-memory map at open. A txn is acknowledged only after its frame is written and fsync'd
 * (group commit: txns that arrive while an fsync is in flight share the next one). See log-format.ts
 * for the file format.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, rmSync, statSync } from "node:fs";
import { open as openAsync, rename, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { invalid, unavailable } from "../errors";
import { evaluateBatch } from "./embedded-batch";
import type { EmbeddedStoreOptions, EmbeddedStoreStats } from "./embedded-options";
import { type Commit, copyEntry, eventOf, setEntry, type State } from "./embedded-state";
import { fsyncDir } from "./fsync-dir";
import { EventHistory } from "./event-history";
import { DirLock } from "./lock";
import { writeSnapshot } from "./log-snapshot";
import { replayLog } from "./log-replay";
import { SortedKeys } from "./sorted-keys";
import { StoreCompactedError } from "./store-compacted-error";
import { checkTxnInput } from "./txn-input";
import type { Compare, ListOptions, Op, StateStore, StoreEntry, TxnResult, WatchEvent } from "./types";
import { WatchHub } from "./watch-hub";

export type { EmbeddedStoreOptions, EmbeddedStoreStats } from "./embedded-options";

/** The log file in the store directory (log-format.ts). */
export const LOG_FILE = "store.log";
/** Where compaction writes the snapshot before renaming it over the log; a leftover is removed at open. */
export const COMPACT_TMP_FILE = "store.log.compact.tmp";
const HEALTH_PROBE_FILE = ".health-probe";
/** Default of {@link EmbeddedStoreOptions.compactAfterBytes}: 64 MiB. */
export const DEFAULT_COMPACT_AFTER_BYTES = 64 * 1024 * 1024;
/** Upper bounds of one group-commit batch, so a burst does not become one giant write. */
const MAX_BATCH_TXNS = 4096;
const MAX_BATCH_BYTES = 16 * 1024 * 1024;

interface Pending {
  compares: Compare[];
  ops: Op[];
  resolve: (r: TxnResult) => void;
  reject: (e: unknown) => void;
}

/**
 * The single-node implementation of {@link StateStore}: one writer (a directory lock), group commit,
 * watch replay from the log since the last compaction. Open it with {@link openEmbeddedStore}.
 */
export class EmbeddedStore implements StateStore {
  /** entries, their sorted keys, and the events with revision > compactRev (for watch replay) */
  private readonly state: State;
  private rev = 0;
  private compactRev = 0;
  private readonly hub = new WatchHub((m) => process.stderr.write(`hsmd store warning: ${m}\n`));

  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private closed = false;
  /** set after an I/O failure that leaves the file in an unknown state: no more writes until reopen */
  private failed: Error | undefined;

  private logBytes: number;
  private baseBytes: number;
  private readonly counters = { fsyncs: 0, batches: 0, txns: 0, compactions: 0 };

  private constructor(
    readonly dir: string,
    private fh: FileHandle,
    private readonly lock: DirLock,
    private readonly compactAfterBytes: number,
    state: State,
    replay: { rev: number; compactRev: number; bytes: number; baseBytes: number },
  ) {
    this.state = state;
    this.rev = replay.rev;
    this.compactRev = replay.compactRev;
    this.logBytes = replay.bytes;
    this.baseBytes = replay.baseBytes;
  }

  get logPath(): string {
    return join(this.dir, LOG_FILE);
  }

  /** Opens (creating if needed) the store in dir: lock, replay, repair a torn tail. */
  static async open(dir: string, opts: EmbeddedStoreOptions = {}): Promise<EmbeddedStore> {
    const compactAfterBytes = opts.compactAfterBytes ?? DEFAULT_COMPACT_AFTER_BYTES;
    if (!Number.isSafeInteger(compactAfterBytes) || compactAfterBytes <= 0) {
      throw invalid(`compactAfterBytes must be a positive integer, got ${String(opts.compactAfterBytes)}`);
    }
    const warn = opts.warn ?? ((m: string) => process.stderr.write(`hsmd store warning: ${m}\n`));
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw unavailable(`cannot create state store directory ${dir}: ${(err as Error).message}`, err);
    }
    const lock = DirLock.acquire(dir);
    let fh: FileHandle | undefined;
    try {
      // A leftover of a compaction that crashed before its rename: the log itself is intact.
      rmSync(join(dir, COMPACT_TMP_FILE), { force: true });
      const logPath = join(dir, LOG_FILE);
      let created = false;
      try {
        statSync(logPath);
      } catch {
        const fd = openSync(logPath, "wx", 0o600);
        fsyncSync(fd);
        closeSync(fd);
        fsyncDir(dir);
        created = true;
      }
      const state: State = { entries: new Map(), keys: new SortedKeys(), history: new EventHistory(Infinity) };
      const replay = created ? { rev: 0, compactRev: 0, bytes: 0, baseBytes: 0 } : replayLog(logPath, state, warn);
      fh = await openAsync(logPath, "r+");
      await fh.chmod(0o600);
      return new EmbeddedStore(dir, fh, lock, compactAfterBytes, state, replay);
    } catch (err) {
      await fh?.close().catch(() => undefined);
      lock.release();
      throw err;
    }
  }

  revision(): number {
    return this.rev;
  }

  stats(): EmbeddedStoreStats {
    return {
      revision: this.rev,
      keys: this.state.entries.size,
      ...this.counters,
      logBytes: this.logBytes,
      compactRevision: this.compactRev,
    };
  }

  async get(key: string): Promise<StoreEntry | undefined> {
    const e = this.state.entries.get(key);
    return e ? copyEntry(e) : undefined;
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<StoreEntry[]> {
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 0)) throw invalid(`list limit must be >= 0, got ${String(opts.limit)}`);
    const out: StoreEntry[] = [];
    if (limit === 0) return out;
    const after = opts.startAfter;
    const iter = after !== undefined && after >= prefix ? this.state.keys.from(after, true) : this.state.keys.from(prefix);
    for (const k of iter) {
      if (!k.startsWith(prefix)) break;
      out.push(copyEntry(this.state.entries.get(k)!));
      if (out.length >= limit) break;
    }
    return out;
  }

  async count(prefix: string): Promise<number> {
    if (prefix === "") return this.state.entries.size;
    let n = 0;
    for (const k of this.state.keys.from(prefix)) {
      if (!k.startsWith(prefix)) break;
      n++;
    }
    return n;
  }

  txn(compares: Compare[], ops: Op[]): Promise<TxnResult> {
    try {
      this.checkWritable();
      const input = checkTxnInput(compares, ops);
      return new Promise<TxnResult>((resolve, reject) => {
        this.queue.push({ ...input, resolve, reject });
        this.kick();
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  async put(key: string, value: Buffer): Promise<number> {
    return (await this.txn([], [{ type: "put", key, value }])).revision;
  }

  async delete(key: string): Promise<number> {
    return (await this.txn([], [{ type: "delete", key }])).revision;
  }

  watch(prefix: string, fromRevision: number, cb: (ev: WatchEvent) => void): () => void {
    if (this.closed) throw unavailable("state store is closed");
    if (!Number.isSafeInteger(fromRevision) || fromRevision < 0) {
      throw invalid(`watch fromRevision must be a non-negative integer, got ${String(fromRevision)}`);
    }
    if (fromRevision < this.compactRev) throw new StoreCompactedError(fromRevision, this.compactRev);
    const backlog = this.state.history.since(fromRevision, prefix);
    // Every later commit has a revision above the current one: the backlog ends where live events start.
    return this.hub.subscribe(prefix, this.rev, backlog, cb);
  }

  /**
   * True for a revision this store has and still replays from: at or above its last compaction and
   * not past its current revision (a revision above it is not one of this store's).
   */
  async hasHistorySince(revision: number): Promise<boolean> {
    if (this.closed) throw unavailable("state store is closed");
    if (!Number.isSafeInteger(revision) || revision < 0) throw invalid(`hasHistorySince revision must be a non-negative integer, got ${String(revision)}`);
    return revision >= this.compactRev && revision <= this.rev;
  }

  /** Not closed, not failed, and a small file can be written and fsync'd in the store directory now. */
  async healthy(): Promise<boolean> {
    if (this.closed || this.failed) return false;
    const probe = join(this.dir, HEALTH_PROBE_FILE);
    try {
      const fh = await openAsync(probe, "w", 0o600);
      try {
        await fh.write(Buffer.from(`${process.pid}\n`));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await unlink(probe);
    } catch {
      return false;
    }
    return !this.failed;
  }

  /** Writes a snapshot of the current state and atomically replaces the log with it. */
  compact(): Promise<void> {
    return this.exclusive(() => this.compactNow());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Txns accepted before close are still committed (or rejected) before the file closes.
    while (this.flushing) await this.flushing;
    this.hub.close();
    await this.fh.close().catch(() => undefined);
    this.lock.release();
  }

  // ---- write path ----------------------------------------------------------------------------

  private checkWritable(): void {
    if (this.closed) throw unavailable("state store is closed");
    if (this.failed) {
      throw unavailable(`state store ${this.logPath} stopped accepting writes after an I/O error (${this.failed.message}); ` + `restart the daemon to recover from the log`, this.failed);
    }
  }

  private kick(): void {
    if (this.flushing) return;
    // Start on the next tick so that txns issued in the same tick share the first fsync too.
    this.flushing = new Promise<void>((resolve) => process.nextTick(resolve)).then(() => this.flushLoop());
  }

  /** Runs fn with the write path to itself (no batch in flight). */
  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    for (;;) {
      if (!this.flushing) break;
      await this.flushing;
    }
    if (this.closed) throw unavailable("state store is closed");
    let release!: () => void;
    this.flushing = new Promise<void>((r) => (release = r));
    try {
      return await fn();
    } finally {
      this.flushing = undefined;
      release();
      if (this.queue.length > 0) this.kick();
    }
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        let bytes = 0;
        let n = 0;
        while (n < this.queue.length && n < MAX_BATCH_TXNS && bytes < MAX_BATCH_BYTES) {
          for (const op of this.queue[n]!.ops) bytes += op.type === "put" ? op.value.length * 1.34 + op.key.length : op.key.length;
          n++;
        }
        const batch = this.queue.splice(0, n);
        await this.commitBatch(batch);
        if (!this.failed && !this.closed && this.logBytes > this.compactAfterBytes && this.logBytes >= 2 * this.baseBytes) {
          try {
            await this.compactNow();
          } catch (err) {
            // The log is intact; compaction is retried after the next batch.
            process.stderr.write(`hsmd store warning: compaction of ${this.logPath} failed: ${(err as Error).message}\n`);
          }
        }
      }
    } finally {
      this.flushing = undefined;
    }
  }

  private async commitBatch(batch: Pending[]): Promise<void> {
    if (this.failed) {
      for (const p of batch) p.reject(unavailable(`state store ${this.logPath} is failed`, this.failed));
      return;
    }
    const { rev, lines, committed, results } = evaluateBatch(this.state.entries, this.rev, batch);

    if (lines.length > 0) {
      const buf = Buffer.from(lines.join(""), "utf8");
      try {
        await this.writeDurably(buf);
      } catch (err) {
        const e = unavailable(`state store write to ${this.logPath} failed: ${(err as Error).message}`, err);
        for (const p of batch) p.reject(e);
        return;
      }
      this.rev = rev;
      this.counters.txns += committed.length;
      for (const c of committed) this.apply(c);
    }
    batch.forEach((p, i) => p.resolve(results[i]!));
  }

  /** Appends buf at the end of the log and fsyncs it; on failure leaves the log as it was, or marks the store failed. */
  private async writeDurably(buf: Buffer): Promise<void> {
    const at = this.logBytes;
    try {
      let off = 0;
      while (off < buf.length) {
        const { bytesWritten } = await this.fh.write(buf, off, buf.length - off, at + off);
        off += bytesWritten;
      }
    } catch (err) {
      // Remove whatever part of the batch reached the file, so the log ends at the last acknowledged frame.
      try {
        await this.fh.truncate(at);
        await this.fh.sync();
      } catch (err2) {
        this.failed = err2 as Error;
      }
      throw err;
    }
    try {
      this.counters.fsyncs++;
      await this.fh.sync();
    } catch (err) {
      // After a failed fsync the page cache no longer tells what is on disk: stop writing until reopen.
      this.failed = err as Error;
      throw err;
    }
    this.counters.batches++;
    this.logBytes = at + buf.length;
  }

  private apply(c: Commit): void {
    for (const ch of c.changes) setEntry(this.state, ch.key, ch.entry);
    const events = c.changes.map((ch) => eventOf(ch, c.revision));
    this.state.history.append(events);
    this.hub.publish(events);
  }

  private async compactNow(): Promise<void> {
    if (this.failed) throw unavailable(`state store ${this.logPath} is failed; not compacting`, this.failed);
    const tmpPath = join(this.dir, COMPACT_TMP_FILE);
    const rev = this.rev;
    const size = await writeSnapshot(tmpPath, this.state, rev);
    // Crash before the rename: the old log is intact and the tmp file is removed at open. After it:
    // the new log holds the same state and revision.
    await rename(tmpPath, this.logPath);
    fsyncDir(this.dir);
    const fresh = await openAsync(this.logPath, "r+");
    const old = this.fh;
    this.fh = fresh;
    await old.close().catch(() => undefined);
    this.logBytes = size;
    this.baseBytes = size;
    this.compactRev = rev;
    this.state.history = new EventHistory(Infinity);
    this.counters.compactions++;
  }
}

/** Opens the single-node store in `dir` (see {@link EmbeddedStore.open}): the daemon's default store. */
export function openEmbeddedStore(dir: string, opts?: EmbeddedStoreOptions): Promise<EmbeddedStore> {
  return EmbeddedStore.open(dir, opts);
}
