/**
 * One crypto operation on its way over the stream: its promise, its deadline timer and abort signal
 * (both reject it here, whatever the daemon does later), and what failover needs to know of it.
 */
import { status } from "@grpc/grpc-js";
import { abortErrorOf } from "./call-support";
import { HsmClientError } from "./client-error";
import type { StreamOp } from "./stream-ops";

/**
 * An operation until it settles: resolved by its answer, rejected by an error, its deadline or its
 * signal. Settling is once; every later settle is ignored, and {@link onAbandon} tells whoever holds
 * the operation (a stream's in-flight table, a queue) to drop it and its late answer.
 */
export class PendingOp<E = unknown> {
  /** When it gives up, in `Date.now()` milliseconds. */
  readonly deadline: number;
  /** True once resolved or rejected. */
  settled = false;
  /** Times it reached a daemon without a final answer (a broken stream, a transient error); bounded by `retry.maxAttempts`. */
  attempts = 0;
  /** Endpoints it was sent to since it last cleared them (failover picks another first). */
  readonly tried = new Set<E>();
  /** True after a re-login on its behalf: a second UNAUTHENTICATED is final, as for a unary call. */
  relogged = false;
  /** The same operation as its unary call, first to `endpoint` (one that does not serve the stream). */
  unary: ((endpoint: E) => Promise<unknown>) | undefined;
  /** Called once when it settles while something still holds it (set by that holder). */
  onAbandon: (() => void) | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort: (() => void) | undefined;
  private readonly settledHooks: Array<() => void> = [];

  constructor(
    /** The operation as the stream carries it. */
    readonly op: StreamOp,
    deadline: Date,
    /** The caller's signal, if any. */
    readonly signal: AbortSignal | undefined,
    private readonly onResolve: (value: unknown) => void,
    private readonly onReject: (err: HsmClientError) => void,
  ) {
    this.deadline = deadline.getTime();
    const ms = Math.max(0, this.deadline - Date.now());
    this.timer = setTimeout(() => this.reject(new HsmClientError(status.DEADLINE_EXCEEDED, `Deadline exceeded: no answer to ${op.$case} within ${ms} ms`)), ms);
    if (signal !== undefined) {
      this.onAbort = () => this.reject(abortErrorOf(signal));
      signal.addEventListener("abort", this.onAbort, { once: true });
    }
  }

  /** Milliseconds left before its deadline (0 when past). */
  remainingMs(now = Date.now()): number {
    return Math.max(0, this.deadline - now);
  }

  /** Runs `hook` when it settles (at once if it has). */
  whenSettled(hook: () => void): void {
    if (this.settled) hook();
    else this.settledHooks.push(hook);
  }

  resolve(value: unknown): void {
    if (this.settle()) this.onResolve(value);
  }

  reject(err: HsmClientError): void {
    if (this.settle()) this.onReject(err);
  }

  private settle(): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearTimeout(this.timer);
    if (this.onAbort !== undefined) this.signal?.removeEventListener("abort", this.onAbort);
    const abandon = this.onAbandon;
    this.onAbandon = undefined;
    abandon?.();
    for (const hook of this.settledHooks.splice(0)) hook();
    return true;
  }
}
