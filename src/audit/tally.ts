/**
 * Audit at stream speed: the successful operations of a crypto stream are counted in memory per
 * stream, key and window, and each window becomes ONE entry in the same hash chain as every other
 * entry (operation `CryptoStream`, status `OK`, the caller, the key, and in `detail` the counts per
 * operation and the window's span, see tally-detail.ts). Denials and errors are not counted here:
 * the caller records each of them on its own. Imitates {@link AuditThrottle}'s windows.
 */
import { Code, HsmError } from "../errors";
import type { AuditEntry } from "./entry";
import type { AuditLog } from "./log";
import { tallyDetails, tallyMethod } from "./tally-detail";

/** One successful operation on a stream: who, from where, on which key, which operation. */
export interface TallyUse {
  /** The stream's id (written as the entries' `requestId`, as the stream's own open and end entries carry it). */
  stream: string;
  user: string;
  role: string;
  /** The client's address (`client`). */
  peer: string;
  /** The key used; `""` for an operation without a key (GenerateRandom). */
  keyId: string;
  /** The operation (`Sign`, `Encrypt`, …). */
  method: string;
}

/** Options of {@link UseTally}. */
export interface UseTallyOptions {
  /** Length of a window, in ms: a window's entry is written at most this long after its first operation. @default 1000 */
  windowMs?: number;
  /** Clock in ms since the epoch (tests). @default Date.now */
  now?: () => number;
  /**
   * Most windows open at once (streams × keys). Opening one more first writes the oldest open window
   * early, so memory stays bounded however many streams and keys are in use. @default 4096
   */
  maxWindows?: number;
  /** Called when an entry cannot be written (after that, {@link UseTally.failed} is true). */
  onError?: (e: unknown) => void;
}

/** The `operation` of every tally entry: the RPC the counted operations arrived on. */
export const TALLY_OPERATION = "CryptoStream";

interface Window {
  stream: string;
  keyId: string;
  user: string;
  role: string;
  peer: string;
  start: number;
  counts: Map<string, number>;
  timer?: NodeJS.Timeout;
}

const ROLE = /^[A-Za-z][A-Za-z0-9_-]*$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/g;
/** A field as the log accepts it: control characters dropped, cut to the field's length, `""` as absent. */
const clip = (s: string, max: number): string | undefined => {
  const v = s.replace(CONTROL, "").slice(0, max);
  return v === "" ? undefined : v;
};

/**
 * Counts successful stream operations and writes one audit entry per (stream, key, window). The
 * entries take the log's ordinary write path (not fdatasync'd each, unless the log syncs every
 * entry): they reach the file within about `windowMs` of the first operation counted, or at
 * {@link endStream} / {@link close}. What a crash can lose is the counts of windows still open.
 *
 * A write that fails never throws out of here (the daemon keeps running): it is reported to
 * `onError` and {@link failed} turns true, which the stream checks so that it stops answering OK
 * (as the unary path answers UNAVAILABLE when its entry cannot be written).
 */
export class UseTally {
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly maxWindows: number;
  /** stream → key → open window, for counting. */
  private readonly byStream = new Map<string, Map<string, Window>>();
  /** Every open window, oldest first (insertion order), for the cap. */
  private readonly open = new Set<Window>();
  /** Writes not yet settled, per stream. */
  private readonly pending = new Map<string, Set<Promise<void>>>();
  private failure: unknown = undefined;
  private closed = false;

  constructor(
    private readonly log: AuditLog,
    private readonly opts: UseTallyOptions = {},
  ) {
    this.windowMs = opts.windowMs ?? 1000;
    this.now = opts.now ?? Date.now;
    this.maxWindows = Math.max(1, opts.maxWindows ?? 4096);
    if (!(this.windowMs > 0)) throw new HsmError(Code.InvalidArgument, "tally windowMs must be a positive number of milliseconds");
  }

  /** Windows open now (streams × keys with counts not yet written). */
  get openWindows(): number {
    return this.open.size;
  }

  /**
   * True once an entry could not be written, or the log failed a write of its own: successes can no
   * longer be accounted for, so the stream must answer UNAVAILABLE instead of OK from then on.
   */
  get failed(): boolean {
    return this.failure !== undefined || this.log.failed;
  }

  /** Counts one successful operation (status OK). Cheap: a map lookup and an increment. */
  count(use: TallyUse): void {
    const keys = this.byStream.get(use.stream);
    let w = keys?.get(use.keyId);
    if (w && (w.user !== use.user || w.role !== use.role || w.peer !== use.peer)) {
      // Not seen on a real stream (one session each); never mix two callers in one entry.
      this.flush(w);
      w = undefined;
    }
    if (!w) w = this.openWindow(use);
    // Keyed by the name as given; made safe for the entry once, when the window is written.
    w.counts.set(use.method, (w.counts.get(use.method) ?? 0) + 1);
    if (this.closed) this.flush(w);
  }

  /** Writes the open windows of `stream` (it ended) and resolves when they are written or have failed. Never rejects. */
  async endStream(stream: string): Promise<void> {
    for (const w of [...(this.byStream.get(stream)?.values() ?? [])]) this.flush(w);
    await Promise.allSettled([...(this.pending.get(stream) ?? [])]);
  }

  /** Writes every open window (the daemon stops; before the log closes) and resolves when all is written. Never rejects. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of [...this.open]) this.flush(w);
    await Promise.allSettled([...this.pending.values()].flatMap((s) => [...s]));
  }

  private openWindow(use: TallyUse): Window {
    if (this.open.size >= this.maxWindows) this.flush(this.open.values().next().value as Window);
    const w: Window = { stream: use.stream, keyId: use.keyId, user: use.user, role: use.role, peer: use.peer, start: this.now(), counts: new Map() };
    let keys = this.byStream.get(use.stream);
    if (!keys) this.byStream.set(use.stream, (keys = new Map()));
    keys.set(use.keyId, w);
    this.open.add(w);
    if (!this.closed) {
      w.timer = setTimeout(() => this.flush(w), this.windowMs);
      w.timer.unref();
    }
    return w;
  }

  /** Closes `w` and appends its entry (or entries, see tallyDetails). */
  private flush(w: Window): void {
    if (!this.open.delete(w)) return;
    clearTimeout(w.timer);
    const keys = this.byStream.get(w.stream);
    if (keys?.get(w.keyId) === w) keys.delete(w.keyId);
    if (keys?.size === 0) this.byStream.delete(w.stream);
    const end = Math.max(w.start, this.now());
    const base: AuditEntry = {
      time: new Date(end).toISOString(),
      user: clip(w.user, 64),
      role: ROLE.test(w.role) ? w.role.slice(0, 32) : undefined,
      operation: TALLY_OPERATION,
      keyId: clip(w.keyId, 128),
      status: "OK",
      requestId: clip(w.stream, 128),
      client: clip(w.peer, 256),
    };
    const counts = new Map<string, number>();
    for (const [m, n] of w.counts) counts.set(tallyMethod(m), (counts.get(tallyMethod(m)) ?? 0) + n);
    for (const detail of tallyDetails(counts, w.start, end)) this.track(w.stream, this.log.append({ ...base, detail }));
  }

  private track(stream: string, append: Promise<unknown>): void {
    let set = this.pending.get(stream);
    if (!set) this.pending.set(stream, (set = new Set()));
    const p: Promise<void> = append.then(
      () => undefined,
      (e: unknown) => {
        this.failure ??= e;
        this.opts.onError?.(e);
      },
    );
    set.add(p);
    void p.finally(() => {
      set.delete(p);
      if (set.size === 0 && this.pending.get(stream) === set) this.pending.delete(stream);
    });
  }
}
