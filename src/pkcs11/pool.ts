import { unavailable } from "../errors";
import type { PoolStats } from "./types";

/**
 * A fixed pool of open PKCS#11 sessions, one operation per session at a time (PKCS#11 allows one
 * active operation per session). Waiters are served first come, first served. The pool never opens
 * or closes sessions itself: the device does that once at start and on recovery, because SoftHSM2 is
 * fragile when sessions open and close concurrently.
 */
export class SessionPool {
  private idle: Buffer[] = [];
  private busyCount = 0;
  private waiters: Array<{ resolve: (s: Buffer) => void; reject: (e: Error) => void }> = [];
  private closed = false;
  private drainWaiters: Array<() => void> = [];

  /** Replaces the pool's sessions (at start and after recovery). */
  reset(sessions: Buffer[]): void {
    this.idle = [...sessions];
    this.busyCount = 0;
    this.closed = false;
    while (this.waiters.length > 0 && this.idle.length > 0) {
      this.busyCount++;
      this.waiters.shift()!.resolve(this.idle.pop()!);
    }
  }

  get size(): number {
    return this.idle.length + this.busyCount;
  }

  stats(): PoolStats {
    return { size: this.size, busy: this.busyCount, waiting: this.waiters.length };
  }

  acquire(): Promise<Buffer> {
    if (this.closed) return Promise.reject(unavailable("the device is closed"));
    const s = this.idle.pop();
    if (s) {
      this.busyCount++;
      return Promise.resolve(s);
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Returns a session. `stale` sessions (from before a recovery) are dropped, not reused. */
  release(session: Buffer, stale = false): void {
    if (stale) return;
    this.busyCount = Math.max(0, this.busyCount - 1);
    if (this.busyCount === 0) for (const d of this.drainWaiters.splice(0)) d();
    const w = this.waiters.shift();
    if (w) {
      this.busyCount++;
      w.resolve(session);
    } else {
      this.idle.push(session);
    }
  }

  /** Fails every waiter and refuses new acquisitions. */
  close(reason: string): void {
    this.closed = true;
    this.idle = [];
    for (const w of this.waiters.splice(0)) w.reject(unavailable(reason));
  }

  /**
   * Resolves true once no session is lent out (every call that holds one has settled), or false
   * after `timeoutMs`. Used after {@link close}: the device must not close sessions or finalize the
   * module under a call still running on the thread pool.
   */
  drained(timeoutMs: number): Promise<boolean> {
    if (this.busyCount === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        resolve(true);
      };
      const t = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((d) => d !== done);
        resolve(false);
      }, timeoutMs);
      this.drainWaiters.push(done);
    });
  }
}
