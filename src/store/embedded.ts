/**
 * The single-node state store: an append-only, checksummed log in one directory, replayed into a
 * sorted in-memory map at open. A txn is acknowledged only after its frame is written and fsync'd
 * (group commit: txns that arrive while an fsync is in flight share the next one). See log-format.ts
 * for the file format.
 */
import { closeSync, fchmodSync, fsyncSync, ftruncateSync, mkdirSync, openSync, rmSync, statSync } from "node:fs";
import { open as openAsync, rename, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { Code, HsmError, invalid, unavailable } from "../errors";
import { DirLock } from "./lock";
import { FORMAT_VERSION, encodeFrame, scanLines, type Frame, type TxnOp } from "./log-format";
import { SortedKeys } from "./sorted-keys";
import { checkTxnInput } from "./txn-input";
import type { Compare, ListOptions, Op, StateStore, StoreEntry, TxnResult, WatchEvent } from "./types";

export const LOG_FILE = "store.log";
export const COMPACT_TMP_FILE = "store.log.compact.tmp";
const HEALTH_PROBE_FILE = ".health-probe";
export const DEFAULT_COMPACT_AFTER_BYTES = 64 * 1024 * 1024;
/** Upper bounds of one group-commit batch, so a burst does not become one giant write. */
const MAX_BATCH_TXNS = 4096;
const MAX_BATCH_BYTES = 16 * 1024 * 1024;

export interface EmbeddedStoreOptions {
  /** compact when the log is larger than this and at least twice its size after the last compaction */
  compactAfterBytes?: number;
  /** where warnings go (a discarded torn tail); default: a line on stderr */
  warn?: (message: string) => void;
}

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

/** Thrown by watch() when fromRevision is older than what the log still holds. */
export class StoreCompactedError extends HsmError {
  constructor(
    readonly fromRevision: number,
    readonly compactRevision: number,
  ) {
    super(
      Code.FailedPrecondition,
      `cannot watch from revision ${fromRevision}: the store was compacted at revision ${compactRevision}; ` +
        `list the prefix and watch from revision() instead`,
    );
  }
}

interface Pending {
  compares: Compare[];
  ops: Op[];
  resolve: (r: TxnResult) => void;
  reject: (e: unknown) => void;
}

interface Change {
  key: string;
  entry: StoreEntry | null; // null: deleted
}

interface Watcher {
  prefix: string;
  cb: (ev: WatchEvent) => void;
  queue: WatchEvent[];
  head: number;
  scheduled: boolean;
  active: boolean;
}

function copyEntry(e: StoreEntry): StoreEntry {
  return { ...e, value: Buffer.from(e.value) };
}

function eventOf(change: Change, revision: number): WatchEvent {
  return change.entry
    ? { type: "put", key: change.key, value: change.entry.value, revision }
    : { type: "delete", key: change.key, revision };
}

export class EmbeddedStore implements StateStore {
  /** entries, their sorted keys, and the events with revision > compactRev (for watch replay) */
  private readonly state: State;
  private rev = 0;
  private compactRev = 0;
  private readonly watchers = new Set<Watcher>();

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
      const state: State = { entries: new Map(), keys: new SortedKeys(), history: [] };
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
    const w: Watcher = { prefix, cb, queue: [], head: 0, scheduled: false, active: true };
    for (const h of this.state.history) {
      if (h.revision <= fromRevision) continue;
      for (const c of h.changes) if (c.key.startsWith(prefix)) w.queue.push(eventOf(c, h.revision));
    }
    this.watchers.add(w);
    this.schedule(w);
    return () => {
      w.active = false;
      this.watchers.delete(w);
    };
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
    for (const w of this.watchers) w.active = false;
    this.watchers.clear();
    await this.fh.close().catch(() => undefined);
    this.lock.release();
  }

  // ---- write path ----------------------------------------------------------------------------

  private checkWritable(): void {
    if (this.closed) throw unavailable("state store is closed");
    if (this.failed) {
      throw unavailable(
        `state store ${this.logPath} stopped accepting writes after an I/O error (${this.failed.message}); ` +
          `restart the daemon to recover from the log`,
        this.failed,
      );
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

  private lookup(overlay: Map<string, StoreEntry | null>, key: string): StoreEntry | undefined {
    const o = overlay.get(key);
    if (o !== undefined) return o ?? undefined;
    return this.state.entries.get(key);
  }

  private async commitBatch(batch: Pending[]): Promise<void> {
    if (this.failed) {
      for (const p of batch) p.reject(unavailable(`state store ${this.logPath} is failed`, this.failed));
      return;
    }
    const overlay = new Map<string, StoreEntry | null>();
    const firstRev = this.rev + 1;
    let rev = this.rev;
    const lines: string[] = [];
    const committed: { revision: number; changes: Change[] }[] = [];
    const results: TxnResult[] = [];
    for (const p of batch) {
      const holds = p.compares.every((c) => {
        const e = this.lookup(overlay, c.key);
        switch (c.op) {
          case "absent":
            return e === undefined;
          case "present":
            return e !== undefined;
          case "modRevision":
            return (e?.modRevision ?? 0) === c.equals;
        }
      });
      if (!holds) {
        results.push({ succeeded: false, revision: rev });
        continue;
      }
      const changes: Change[] = [];
      const frameOps: TxnOp[] = [];
      const next = rev + 1;
      for (const op of p.ops) {
        const prev = this.lookup(overlay, op.key);
        if (op.type === "put") {
          changes.push({
            key: op.key,
            entry: {
              key: op.key,
              value: op.value,
              modRevision: next,
              createRevision: prev ? prev.createRevision : next,
              version: prev ? prev.version + 1 : 1,
            },
          });
          frameOps.push(["p", op.key, op.value.toString("base64")]);
        } else if (prev) {
          changes.push({ key: op.key, entry: null });
          frameOps.push(["d", op.key]);
        }
      }
      if (changes.length === 0) {
        // Nothing to change (e.g. deleting an absent key): no new revision, as in etcd.
        results.push({ succeeded: true, revision: rev });
        continue;
      }
      rev = next;
      for (const c of changes) overlay.set(c.key, c.entry);
      committed.push({ revision: rev, changes });
      lines.push(encodeFrame({ t: "txn", r: rev, b: firstRev, ops: frameOps }));
      results.push({ succeeded: true, revision: rev });
    }

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

  private apply(c: { revision: number; changes: Change[] }): void {
    for (const ch of c.changes) setEntry(this.state, ch.key, ch.entry);
    this.state.history.push(c);
    for (const w of this.watchers) {
      let any = false;
      for (const ch of c.changes) {
        if (ch.key.startsWith(w.prefix)) {
          w.queue.push(eventOf(ch, c.revision));
          any = true;
        }
      }
      if (any) this.schedule(w);
    }
  }

  private schedule(w: Watcher): void {
    if (w.scheduled || w.head >= w.queue.length) return;
    w.scheduled = true;
    queueMicrotask(() => {
      w.scheduled = false;
      while (w.active && w.head < w.queue.length) {
        const ev = w.queue[w.head++]!;
        try {
          w.cb(ev.value ? { ...ev, value: Buffer.from(ev.value) } : { ...ev });
        } catch (err) {
          process.stderr.write(`hsmd store warning: a watch callback threw: ${(err as Error)?.stack ?? String(err)}\n`);
        }
      }
      w.queue = w.queue.slice(w.head);
      w.head = 0;
    });
  }

  private async compactNow(): Promise<void> {
    if (this.failed) throw unavailable(`state store ${this.logPath} is failed; not compacting`, this.failed);
    const tmpPath = join(this.dir, COMPACT_TMP_FILE);
    const rev = this.rev;
    const n = this.state.entries.size;
    const tmp = await openAsync(tmpPath, "w", 0o600);
    let size = 0;
    try {
      let chunk: string[] = [];
      let chunkLen = 0;
      const flush = async () => {
        if (chunk.length === 0) return;
        const buf = Buffer.from(chunk.join(""), "utf8");
        chunk = [];
        chunkLen = 0;
        let off = 0;
        while (off < buf.length) {
          const { bytesWritten } = await tmp.write(buf, off, buf.length - off, size + off);
          off += bytesWritten;
        }
        size += buf.length;
      };
      const push = async (f: Frame) => {
        const line = encodeFrame(f);
        chunk.push(line);
        chunkLen += line.length;
        if (chunkLen >= 4 << 20) await flush();
      };
      // The state cannot change meanwhile: compaction runs with the write path to itself.
      await push({ t: "snap", fmt: FORMAT_VERSION, r: rev, n });
      for (const k of this.state.keys.from("")) {
        const e = this.state.entries.get(k)!;
        await push({ t: "ent", k, v: e.value.toString("base64"), m: e.modRevision, c: e.createRevision, ver: e.version });
      }
      await push({ t: "end", r: rev, n });
      await flush();
      await tmp.sync();
    } finally {
      await tmp.close();
    }
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
    this.state.history = [];
    this.counters.compactions++;
  }
}

interface State {
  entries: Map<string, StoreEntry>;
  keys: SortedKeys;
  history: { revision: number; changes: Change[] }[];
}

function setEntry(state: State, key: string, entry: StoreEntry | null): void {
  if (entry) {
    if (!state.entries.has(key)) state.keys.insert(key);
    state.entries.set(key, entry);
  } else if (state.entries.delete(key)) {
    state.keys.delete(key);
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function corrupt(path: string, offset: number, why: string): HsmError {
  return new HsmError(
    Code.FailedPrecondition,
    `state store log ${path} is corrupt at byte offset ${offset}: ${why}. Refusing to open it: acknowledged ` +
      `writes may follow this point. Restore the directory from a backup, or move the file away to inspect it.`,
  );
}

/**
 * Replays the log into state. A bad final write (torn, or failing its checksum) is cut off with a
 * warning: it was never acknowledged. A bad frame followed by a good frame of a later write is
 * corruption, and so is any inconsistency in good frames (revision gaps, a broken snapshot).
 */
function replayLog(
  path: string,
  state: State,
  warn: (m: string) => void,
): { rev: number; compactRev: number; bytes: number; baseBytes: number } {
  let rev = 0;
  let compactRev = 0;
  let baseBytes = 0;
  let goodEnd = 0;
  /** "none": before any frame; "snap": inside a snapshot; "log": txn frames */
  let phase: "none" | "snap" | "log" = "none";
  let snapCount = 0;
  let snapExpected = 0;
  let bad: { offset: number; reason: string } | undefined;

  const set = (key: string, entry: StoreEntry | null) => setEntry(state, key, entry);

  for (const line of scanLines(path)) {
    const f = line.frame;
    if (bad) {
      // Past a bad frame only the rest of that same final write may follow (a power loss can persist
      // its pages out of order). A frame of a later write means the bad one had been fsync'd: corrupt.
      if (f && (f.t !== "txn" || f.b > rev + 1)) throw corrupt(path, bad.offset, bad.reason);
      continue;
    }
    if (!f) {
      if (phase === "snap") throw corrupt(path, line.offset, "damaged frame inside the snapshot");
      bad = {
        offset: line.offset,
        reason: line.complete ? "frame fails its checksum or is malformed" : "frame is incomplete (no end of line)",
      };
      continue;
    }
    switch (f.t) {
      case "snap":
        if (phase !== "none") throw corrupt(path, line.offset, "snapshot frame after the start of the log");
        if (f.fmt !== FORMAT_VERSION) throw corrupt(path, line.offset, `unknown snapshot format ${f.fmt}`);
        phase = "snap";
        rev = f.r;
        compactRev = f.r;
        snapExpected = f.n;
        break;
      case "ent":
        if (phase !== "snap") throw corrupt(path, line.offset, "snapshot entry outside a snapshot");
        if (f.m > rev || f.c > f.m || f.ver < 1) throw corrupt(path, line.offset, "snapshot entry with impossible revisions");
        set(f.k, { key: f.k, value: Buffer.from(f.v, "base64"), modRevision: f.m, createRevision: f.c, version: f.ver });
        snapCount++;
        break;
      case "end":
        if (phase !== "snap" || f.r !== rev || f.n !== snapExpected || snapCount !== snapExpected) {
          throw corrupt(path, line.offset, "snapshot end does not match its start");
        }
        phase = "log";
        baseBytes = line.offset + line.length;
        break;
      case "txn": {
        if (phase === "snap") throw corrupt(path, line.offset, "snapshot not closed before the log continues");
        phase = "log";
        if (f.r !== rev + 1) throw corrupt(path, line.offset, `revision ${f.r} follows revision ${rev}`);
        if (f.b > f.r) throw corrupt(path, line.offset, `frame of revision ${f.r} claims a batch starting at ${f.b}`);
        rev = f.r;
        const changes: Change[] = [];
        for (const op of f.ops) {
          const prev = state.entries.get(op[1]);
          if (op[0] === "p") {
            const entry: StoreEntry = {
              key: op[1],
              value: Buffer.from(op[2], "base64"),
              modRevision: rev,
              createRevision: prev ? prev.createRevision : rev,
              version: prev ? prev.version + 1 : 1,
            };
            set(op[1], entry);
            changes.push({ key: op[1], entry });
          } else {
            set(op[1], null);
            changes.push({ key: op[1], entry: null });
          }
        }
        state.history.push({ revision: rev, changes });
        break;
      }
    }
    goodEnd = line.offset + line.length;
  }
  if (phase === "snap") {
    // A snapshot is renamed into place only once complete and fsync'd: an unfinished one is damage.
    throw corrupt(path, goodEnd, "the log ends inside its snapshot");
  }
  const size = statSync(path).size;
  if (goodEnd < size) {
    warn(
      `discarding ${size - goodEnd} byte(s) of an incomplete final write at offset ${goodEnd} of ${path} ` +
        `(${bad?.reason ?? "torn frame"}); it was never acknowledged`,
    );
    const fd = openSync(path, "r+");
    try {
      ftruncateSync(fd, goodEnd);
      fchmodSync(fd, 0o600);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  return { rev, compactRev, bytes: goodEnd, baseBytes };
}

export function openEmbeddedStore(dir: string, opts?: EmbeddedStoreOptions): Promise<EmbeddedStore> {
  return EmbeddedStore.open(dir, opts);
}

