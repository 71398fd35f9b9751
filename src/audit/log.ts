/**
 * The append-only, hash-chained audit log: one JSON object per line,
 * `{"seq":…,"prev":…,"hash":…,"time":…,"node":…,…}`. See {@link AuditLog}.
 */
import { mkdirSync, chmodSync, writeFileSync } from "node:fs";
import { open as openFile, type FileHandle } from "node:fs/promises";
import { dirname, join, relative, sep } from "node:path";
import { Code, HsmError } from "../errors";
import { GENESIS_HASH, makeRecord, normalizeEntry, parseRecordLine, type AuditEntry, type AuditRecord, type StoredAuditEntry } from "./entry";

/** Options of {@link AuditLog.open}. */
export interface AuditLogOptions {
  /** This node's name, written as `node` on entries that do not name one. */
  node: string;
  /**
   * `always`: every append is fdatasync'd before it resolves. `never`: only appends made with
   * `{ sync: true }` are (use that for key and user changes, so they are durable before the RPC answers).
   */
  fsync: "always" | "never";
  /** Called with each warning (also kept in {@link AuditLog.warnings}). */
  warn?: (message: string) => void;
  /** Clock for entries without `time` (tests). */
  now?: () => Date;
}

/**
 * Why the log file cannot be opened, naming the path and what to do (not Node's raw EISDIR or EACCES
 * with a stack): FAILED_PRECONDITION, since the daemon cannot start until the file system or
 * `audit.file` is fixed. Other errors are returned as they are.
 */
function openFailure(path: string, err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  const fix = "set audit.file to another path, or fix the file system";
  switch (code) {
    case "EISDIR":
      return new HsmError(
        Code.FailedPrecondition,
        `audit log ${path} is a directory: audit.file must name a file (for example ${join(path, "audit.log")}); change audit.file or move the directory away`,
        { cause: err },
      );
    case "ENOTDIR":
    case "EEXIST":
      return new HsmError(Code.FailedPrecondition, `audit log ${path}: a parent of it is a file, not a directory: ${fix}`, { cause: err });
    case "EACCES":
    case "EPERM":
      return new HsmError(Code.FailedPrecondition, `audit log ${path}: permission denied for the daemon's user: give it write access to the file and its directory, or ${fix}`, { cause: err });
    case "EROFS":
      return new HsmError(Code.FailedPrecondition, `audit log ${path} is on a read-only file system: ${fix}`, { cause: err });
    default:
      return err;
  }
}

/** Options of {@link AuditLog.append}. */
export interface AppendOptions {
  /** fdatasync before resolving, even when the log was opened with `fsync: "never"`. */
  sync?: boolean;
}

/** Bytes read from the end of the file at open; far above the longest line an entry can produce. */
const TAIL_WINDOW = 64 * 1024;
/** Appends written together in one write (and at most one fsync). */
const MAX_BATCH = 256;

interface Pending {
  entry: StoredAuditEntry;
  sync: boolean;
  resolve: (r: AuditRecord) => void;
  reject: (e: unknown) => void;
}

/**
 * The audit log writer. One instance per file and process: it is the only writer, so appends are
 * serialized in call order and concurrent appends get consecutive `seq`. Each line carries
 * `seq` (1, 2, …), `prev` (the previous line's `hash`, 64 zeros for the first) and `hash`
 * (sha256 hex of the canonical `{seq, prev, …entry}`, see `canonicalize`).
 *
 * Appends that arrive while a write is in flight are written together (one write, at most one
 * fdatasync). After a failed write or fsync the log refuses further appends (UNAVAILABLE): the file's
 * state is unknown, and reopening it repairs a torn last line.
 */
export class AuditLog {
  /** Warnings raised since open (a torn last line removed at open, …). */
  readonly warnings: string[] = [];
  private queue: Pending[] = [];
  private draining = false;
  private drained: Promise<void> = Promise.resolve();
  private closed = false;
  private failure: unknown = undefined;

  private constructor(
    /** Path of the log file. */
    readonly path: string,
    /** This node's name. */
    readonly node: string,
    private readonly handle: FileHandle,
    private seq: number,
    private hash: string,
    private readonly fsyncMode: "always" | "never",
    private readonly warnFn: ((m: string) => void) | undefined,
    private readonly now: () => Date,
  ) {}

  /**
   * Opens (creating if needed: file 0600, missing directories 0700) the log at `path` and continues
   * its chain from the last line. A last line that has no newline or is not JSON is a write that was
   * cut short (never acknowledged): it is truncated away, its bytes kept in `<path>.torn-<ms>`, and a
   * warning recorded.
   *
   * @throws HsmError INVALID_ARGUMENT for a bad `node` or `fsync`; FAILED_PRECONDITION when the last
   *   complete entry fails its own checks (edited, unknown fields): run `hsmd audit verify` and repair
   *   by hand rather than chaining onto it.
   */
  static async open(path: string, options: AuditLogOptions): Promise<AuditLog> {
    normalizeEntry({ operation: "open", status: "OK" }, options.node); // validates node
    if (options.fsync !== "always" && options.fsync !== "never") {
      throw new HsmError(Code.InvalidArgument, 'audit log fsync must be "always" or "never"');
    }
    const dir = dirname(path);
    let created: string | undefined;
    let handle: FileHandle;
    try {
      created = mkdirSync(dir, { recursive: true, mode: 0o700 });
      handle = await openFile(path, "a+", 0o600);
    } catch (err) {
      throw openFailure(path, err);
    }
    if (created !== undefined) {
      // Only the directories created here are tightened (never an existing /tmp or /var/lib).
      let d = created;
      chmodSync(d, 0o700);
      for (const part of relative(created, dir).split(sep).filter(Boolean)) {
        d = join(d, part);
        chmodSync(d, 0o700);
      }
    }
    try {
      await handle.chmod(0o600);
      const warnings: string[] = [];
      const { seq, hash } = await readTail(path, handle, warnings);
      const log = new AuditLog(path, options.node, handle, seq, hash, options.fsync, options.warn, options.now ?? (() => new Date()));
      for (const w of warnings) log.warn(w);
      return log;
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
  }

  /** `seq` of the last line written (0 for an empty log). */
  get lastSeq(): number {
    return this.seq;
  }

  /**
   * True once a write or fsync failed: every later append is refused (UNAVAILABLE). Writers that
   * answer before their entry is written (the stream tally) check it to stop answering OK.
   */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** `hash` of the last line written (64 zeros for an empty log): an anchor to save elsewhere. */
  get lastHash(): string {
    return this.hash;
  }

  /**
   * Appends one entry. Only the allow-listed fields of `entry` are copied (see {@link AuditEntry});
   * they are validated before anything is queued. Resolves with the written record once the line is
   * written, and fdatasync'd when `options.sync` or the log's `fsync` is `always`.
   *
   * @throws HsmError INVALID_ARGUMENT for a bad entry, FAILED_PRECONDITION after {@link close},
   *   UNAVAILABLE when the write or fsync fails (and for every append after that).
   */
  append(entry: AuditEntry, options: AppendOptions = {}): Promise<AuditRecord> {
    if (this.closed) return Promise.reject(new HsmError(Code.FailedPrecondition, "audit log is closed"));
    if (this.failure !== undefined) return Promise.reject(this.failedError());
    let stored: StoredAuditEntry;
    try {
      stored = normalizeEntry(entry, this.node, this.now);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<AuditRecord>((resolve, reject) => {
      this.queue.push({ entry: stored, sync: options.sync === true, resolve, reject });
      if (!this.draining) {
        this.draining = true;
        this.drained = this.drain();
      }
    });
  }

  /** Waits for queued appends, then closes the file. Later appends are refused. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) {
      await this.drained;
      return;
    }
    this.closed = true;
    await this.drained;
    await this.handle.close();
  }

  private warn(message: string): void {
    this.warnings.push(message);
    this.warnFn?.(message);
  }

  private failedError(): HsmError {
    return new HsmError(Code.Unavailable, `audit log ${this.path} failed an earlier write; reopen it`, {
      cause: this.failure,
      transient: false,
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH);
      if (this.failure !== undefined) {
        for (const p of batch) p.reject(this.failedError());
        continue;
      }
      let seq = this.seq;
      let prev = this.hash;
      const records: AuditRecord[] = [];
      const lines: string[] = [];
      for (const p of batch) {
        const { record, line } = makeRecord(seq + 1, prev, p.entry);
        seq = record.seq;
        prev = record.hash;
        records.push(record);
        lines.push(line);
      }
      try {
        const buf = Buffer.from(lines.join("\n") + "\n", "utf8");
        let off = 0;
        while (off < buf.length) {
          const { bytesWritten } = await this.handle.write(buf, off, buf.length - off);
          off += bytesWritten;
        }
        // The lines are in the file: the chain continues from them even if the fsync below fails.
        this.seq = seq;
        this.hash = prev;
        if (this.fsyncMode === "always" || batch.some((p) => p.sync)) await this.handle.datasync();
      } catch (err) {
        this.failure = err;
        this.warn(`audit log ${this.path}: write failed: ${(err as Error).message}`);
        for (const p of batch) p.reject(this.failedError());
        continue;
      }
      batch.forEach((p, i) => p.resolve(records[i]));
    }
    this.draining = false;
  }
}

/**
 * Finds where the chain continues: removes a torn last line (no newline, or not JSON) and checks the
 * last complete one.
 */
async function readTail(path: string, handle: FileHandle, warnings: string[]): Promise<{ seq: number; hash: string }> {
  let removedGarbage = false;
  for (;;) {
    const { size } = await handle.stat();
    if (size === 0) return { seq: 0, hash: GENESIS_HASH };
    const start = Math.max(0, size - TAIL_WINDOW);
    const buf = Buffer.alloc(size - start);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await handle.read(buf, got, buf.length - got, start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const tooLong = () => new HsmError(Code.FailedPrecondition, `audit log ${path}: last line is longer than ${TAIL_WINDOW} bytes; run hsmd audit verify`);

    if (buf[buf.length - 1] !== 0x0a) {
      const nl = buf.lastIndexOf(0x0a);
      if (nl === -1 && start > 0) throw tooLong();
      const cut = nl === -1 ? 0 : start + nl + 1;
      keepTorn(path, buf.subarray(cut - start), warnings, "has no trailing newline");
      await handle.truncate(cut);
      continue;
    }
    const body = buf.subarray(0, buf.length - 1);
    const nl = body.lastIndexOf(0x0a);
    if (nl === -1 && start > 0) throw tooLong();
    const text = body.subarray(nl + 1).toString("utf8");
    let json = true;
    try {
      JSON.parse(text);
    } catch {
      json = false;
    }
    if (!json && !removedGarbage) {
      // A write cut short can leave a line of zeros; only one such line is ever removed, so a
      // damaged log is never eaten away line by line.
      removedGarbage = true;
      const cut = nl === -1 ? 0 : start + nl + 1;
      keepTorn(path, buf.subarray(cut - start), warnings, "is not JSON");
      await handle.truncate(cut);
      continue;
    }
    const parsed = parseRecordLine(text);
    if (!parsed.ok) {
      throw new HsmError(Code.FailedPrecondition, `audit log ${path}: the last entry cannot be chained onto (${parsed.kind}: ${parsed.message}); run hsmd audit verify`);
    }
    return { seq: parsed.record.seq, hash: parsed.record.hash };
  }
}

/** Keeps the removed bytes next to the log (they are evidence if this was not a crash) and warns. */
function keepTorn(path: string, bytes: Buffer, warnings: string[], why: string): void {
  const side = `${path}.torn-${Date.now()}`;
  let kept = "";
  try {
    writeFileSync(side, bytes, { mode: 0o600, flag: "wx" });
    kept = `, kept in ${side}`;
  } catch {
    kept = "";
  }
  warnings.push(`audit log ${path}: removed a torn last line (${bytes.length} bytes) that ${why}: an append cut short, never acknowledged${kept}`);
}
