/**
 * Which endpoint's stream an operation goes to, and what happens when it does not come back: the
 * unary call's retry policy applied per operation (transient errors and broken streams re-sent to
 * another endpoint with backoff, within the deadline and `retry.maxAttempts`), the session recovery
 * after UNAUTHENTICATED, and the unary path for an endpoint that does not serve the stream.
 */
import { status } from "@grpc/grpc-js";
import type { CryptoStreamResponse } from "../gen/hsm/v1/crypto";
import { closedError } from "./call-support";
import { HsmClientError } from "./client-error";
import type { HsmClientRetryOptions } from "./client-options";
import type { PendingOp } from "./pending-op";
import { backoffMs, isTransient } from "./retry";
import type { OpenStream, StreamLimits } from "./stream-conn";
import { StreamMux } from "./stream-mux";
import { answerOf } from "./stream-ops";

/** What the router needs from the client (the endpoint pool, the session, the unary path). */
export interface StreamRouterHooks<E> {
  /** The endpoint for an operation that already tried `tried` (the pool's round robin and tiers). */
  pick(tried: ReadonlySet<E>): E;
  /** How many endpoints there are. */
  readonly endpointCount: number;
  /** An endpoint answered UNAVAILABLE: out of rotation until its health check passes. */
  reportUnavailable(endpoint: E): void;
  /** Opens a crypto stream to `endpoint` under `token`. */
  open(endpoint: E): OpenStream;
  /** The session's token now. */
  token(): string | undefined;
  /** True when the client has credentials to log in again with. */
  readonly canRelogin: boolean;
  /** Logs in again after UNAUTHENTICATED (shared by concurrent callers; none when the token already changed). */
  relogin(staleToken: string | undefined, deadline: Date, signal: AbortSignal | undefined): Promise<void>;
  /** An operation is sent again (the client's `stats.retries`). */
  countRetry(): void;
  readonly retry: Readonly<Required<HsmClientRetryOptions>>;
  readonly limits: StreamLimits;
}

/**
 * Stream-level statuses after which the operations are re-sent on a stream: the stream broke (the
 * daemon went away, the connection dropped, it was cancelled or reset, or it ended with answers owed).
 */
const BROKEN = new Set<status>([status.OK, status.CANCELLED, status.UNKNOWN, status.DEADLINE_EXCEEDED, status.ABORTED, status.INTERNAL, status.UNAVAILABLE, status.DATA_LOSS]);

/** The streams of a client, one per endpoint, and the policy over the operations they carry. */
export class StreamRouter<E extends object> {
  private readonly muxes = new Map<E, StreamMux<E>>();
  /** Endpoints that refused the stream: for good (UNIMPLEMENTED, `null`) or for one session token. */
  private readonly refused = new Map<E, { token: string | undefined } | null>();
  /** Every operation not yet settled (in a stream, a queue, a backoff or a re-login). */
  private readonly active = new Set<PendingOp<E>>();
  private closed = false;
  /** Operations settled by an answer on a stream. */
  answeredCount = 0;
  /** Operations sent as their unary call instead. */
  fallbackCount = 0;

  constructor(private readonly hooks: StreamRouterHooks<E>) {}

  /** Operations not yet settled. */
  get activeCount(): number {
    return this.active.size;
  }

  /** Streams open now over every endpoint. */
  get openStreams(): number {
    let n = 0;
    for (const mux of this.muxes.values()) n += mux.openStreams;
    return n;
  }

  /** Takes `op` until it settles: routes it to an endpoint's stream. */
  run(op: PendingOp<E>): void {
    if (op.settled) return;
    if (this.closed) {
      op.reject(closedError());
      return;
    }
    this.active.add(op);
    op.whenSettled(() => this.active.delete(op));
    this.route(op);
  }

  /** The session's token changed: streams opened under the old one take nothing new and half-close when done. */
  tokenChanged(): void {
    for (const mux of this.muxes.values()) mux.retireStale();
  }

  /** Rejects every operation not yet settled (FAILED_PRECONDITION, as later calls) and half-closes every stream. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const op of [...this.active]) op.reject(closedError());
    for (const mux of this.muxes.values()) mux.close();
    this.muxes.clear();
  }

  private route(op: PendingOp<E>): void {
    if (op.settled) return;
    if (this.closed) {
      op.reject(closedError());
      return;
    }
    const endpoint = this.hooks.pick(op.tried);
    const refusal = this.refused.get(endpoint);
    if (refusal === null || (refusal !== undefined && refusal.token === this.hooks.token())) {
      this.viaUnary(op, endpoint);
      return;
    }
    let mux = this.muxes.get(endpoint);
    if (mux === undefined) {
      mux = new StreamMux<E>(this.hooks.open(endpoint), () => this.hooks.token(), this.hooks.limits, {
        answered: (o, response, token) => this.answered(endpoint, o, response, token),
        broken: (unanswered, queued, err, token) => this.broken(endpoint, unanswered, queued, err, token),
      });
      this.muxes.set(endpoint, mux);
    }
    mux.submit(op);
  }

  private answered(endpoint: E, op: PendingOp<E>, response: CryptoStreamResponse, token: string | undefined): void {
    const answer = answerOf(op.op, response);
    if (answer.ok) op.resolve(answer.value);
    else this.failed(endpoint, op, answer.error, token);
    if (op.settled) this.answeredCount += 1;
  }

  /** One operation's error, as the unary call's loop treats its attempt's error. */
  private failed(endpoint: E, op: PendingOp<E>, err: HsmClientError, token: string | undefined): void {
    if (op.settled) return;
    if (err.code === status.UNAVAILABLE) this.hooks.reportUnavailable(endpoint);
    if (err.code === status.UNAUTHENTICATED) {
      this.unauthenticated(op, err, token);
      return;
    }
    op.attempts += 1;
    op.tried.add(endpoint);
    if (!isTransient(err)) op.reject(err);
    else this.again(op, err);
  }

  /** The stream opened under `token` ended with `err` (undefined: status OK) leaving `unanswered` in flight. */
  private broken(endpoint: E, unanswered: PendingOp<E>[], queued: PendingOp<E>[], err: HsmClientError | undefined, token: string | undefined): void {
    const code = err?.code ?? status.OK;
    // Waiting operations never reached the daemon: they only move on, away from this endpoint if they can.
    for (const op of queued) op.tried.add(endpoint);
    if (code === status.UNAUTHENTICATED) {
      for (const op of [...unanswered, ...queued]) this.unauthenticated(op, err!, token);
      return;
    }
    if (code === status.RESOURCE_EXHAUSTED) {
      // A message over a size limit ends the whole stream (grpc-js): each operation's own unary call
      // says which one it was, and the others go through.
      for (const op of [...unanswered, ...queued]) this.viaUnary(op, endpoint);
      return;
    }
    if (!BROKEN.has(code)) {
      // The daemon does not serve the stream to this session (UNIMPLEMENTED: not at all; a refusal such
      // as PERMISSION_DENIED: not to this token): its unary calls answer exactly what they answer.
      this.refused.set(endpoint, code === status.UNIMPLEMENTED ? null : { token });
      for (const op of [...unanswered, ...queued]) this.viaUnary(op, endpoint);
      return;
    }
    if (code === status.UNAVAILABLE) this.hooks.reportUnavailable(endpoint);
    const cause = err ?? new HsmClientError(status.UNAVAILABLE, `the crypto stream ended with ${unanswered.length} operation(s) unanswered`);
    for (const op of queued) this.route(op);
    for (const op of unanswered) {
      op.attempts += 1;
      op.tried.add(endpoint);
      this.again(op, cause);
    }
  }

  /** UNAUTHENTICATED for an operation sent under `token`: on with the newer token, a re-login, or final. */
  private unauthenticated(op: PendingOp<E>, err: HsmClientError, token: string | undefined): void {
    if (op.settled) return;
    const now = this.hooks.token();
    if (now !== undefined && now !== token) {
      // The session moved on (a refresh, a re-login) after this stream opened: resend under the new token.
      this.resend(op, 0);
      return;
    }
    if (!this.hooks.canRelogin || op.relogged) {
      op.reject(err);
      return;
    }
    op.relogged = true;
    this.hooks.relogin(token, new Date(op.deadline), op.signal).then(
      () => {
        op.tried.clear();
        this.resend(op, 0);
      },
      (e: unknown) => op.reject(HsmClientError.from(e, status.UNAUTHENTICATED)),
    );
  }

  /** A transient failure: again after the backoff, unless attempts or the deadline are used up. */
  private again(op: PendingOp<E>, err: HsmClientError): void {
    if (op.settled) return;
    if (op.attempts >= this.hooks.retry.maxAttempts) {
      op.reject(err);
      return;
    }
    const wait = backoffMs(op.attempts, this.hooks.retry);
    if (wait >= op.remainingMs()) {
      op.reject(err); // never retry past the deadline
      return;
    }
    if (op.tried.size >= this.hooks.endpointCount) op.tried.clear();
    this.resend(op, wait);
  }

  private resend(op: PendingOp<E>, waitMs: number): void {
    if (op.settled) return;
    this.hooks.countRetry();
    if (waitMs <= 0) {
      this.route(op);
      return;
    }
    const timer = setTimeout(() => this.route(op), waitMs);
    op.whenSettled(() => clearTimeout(timer));
  }

  private viaUnary(op: PendingOp<E>, endpoint: E): void {
    if (op.settled) return;
    this.fallbackCount += 1;
    const unary = op.unary ?? (() => Promise.reject(new HsmClientError(status.INTERNAL, `the daemon does not serve the crypto stream and ${op.op.$case} has no unary call here`)));
    unary(endpoint).then(
      (value) => op.resolve(value),
      (e: unknown) => op.reject(HsmClientError.from(e)),
    );
  }
}
