import type { AccessGuard } from "../../access";
import { Code, HsmError } from "../../errors";

/** Told once, when the session a stream was opened with can no longer authenticate. */
export type SessionEnded = (why: HsmError) => void;

interface Watched {
  /** The `authorization` value the streams were opened with. */
  readonly authorization: string;
  readonly listeners: Set<SessionEnded>;
  readonly interval: NodeJS.Timeout;
  expiry?: NodeJS.Timeout;
  checking: boolean;
}

/** setTimeout's longest delay (about 24.8 days); a later expiry is left to the interval's re-check. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Keeps the sessions of open crypto streams honest. A stream authenticates once, when it opens; from
 * then on this re-authenticates its session every `recheckMs` through the same
 * {@link AccessGuard.authenticate} a unary call passes (reads of this node's copy of the store, which
 * follows every node's writes), plus once at the session's expiry, and tells the stream's listener
 * the refusal (UNAUTHENTICATED "session revoked", "session expired", "invalid session token" after
 * a logout) so that it ends. Streams opened with the same token share one re-check: one read per
 * session and interval however many streams it has. A re-check that fails otherwise (the store
 * cannot be read) leaves the stream open and is tried again at the next interval.
 */
export class SessionWatch {
  private readonly watched = new Map<string, Watched>();

  constructor(
    private readonly guard: Pick<AccessGuard, "authenticate">,
    private readonly recheckMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Sessions being watched (for tests and metrics). */
  get size(): number {
    return this.watched.size;
  }

  /**
   * Watches the session of `authorization` (already authenticated, expiring at `expiresAt`) for one
   * stream; answers the function that stops watching it for that stream (idempotent).
   */
  watch(authorization: string, expiresAt: number, ended: SessionEnded): () => void {
    let w = this.watched.get(authorization);
    if (!w) {
      const interval = setInterval(() => void this.check(authorization), this.recheckMs);
      interval.unref();
      w = { authorization, listeners: new Set(), interval, checking: false };
      const untilExpiry = expiresAt - this.now();
      if (untilExpiry < MAX_TIMER_MS) {
        w.expiry = setTimeout(() => void this.check(authorization), Math.max(0, untilExpiry));
        w.expiry.unref();
      }
      this.watched.set(authorization, w);
    }
    const entry = w;
    entry.listeners.add(ended);
    return () => {
      if (!entry.listeners.delete(ended) || entry.listeners.size > 0) return;
      this.forget(entry);
    };
  }

  /** Stops every watch (daemon stop): no listener is told anything. */
  close(): void {
    for (const w of [...this.watched.values()]) this.forget(w);
  }

  private forget(w: Watched): void {
    clearInterval(w.interval);
    if (w.expiry) clearTimeout(w.expiry);
    if (this.watched.get(w.authorization) === w) this.watched.delete(w.authorization);
  }

  private async check(authorization: string): Promise<void> {
    const w = this.watched.get(authorization);
    if (!w || w.checking) return;
    w.checking = true;
    try {
      await this.guard.authenticate(authorization);
    } catch (e) {
      if (e instanceof HsmError && e.code === Code.Unauthenticated) {
        this.forget(w);
        for (const ended of [...w.listeners]) ended(e);
        w.listeners.clear();
      }
    } finally {
      w.checking = false;
    }
  }
}
