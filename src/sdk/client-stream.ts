/**
 * The crypto-stream layer of an {@link HsmClient}: the crypto methods hand their operation to
 * {@link HsmClientStreams.streamed}, which carries it on the endpoint's `CryptoStream` (see
 * `stream-router.ts`) or, with `cryptoStream: false` or per-call metadata, as the unary call.
 */
import * as grpc from "@grpc/grpc-js";
import { abortErrorOf, closedError } from "./call-support";
import { HsmClientError } from "./client-error";
import { HsmClientSessions } from "./client-session";
import type { CallOptions, CryptoStreamStats, UnaryMethod } from "./client-types";
import type { Endpoint } from "./endpoints";
import { grpcStreamOpener } from "./grpc-stream-transport";
import { PendingOp } from "./pending-op";
import type { StreamOpCase, StreamRequestOf, StreamResultOf } from "./stream-ops";
import { StreamRouter } from "./stream-router";

/** The layer that sends crypto operations over one stream per endpoint. */
export abstract class HsmClientStreams extends HsmClientSessions {
  private streams: StreamRouter<Endpoint> | undefined;

  /** What the crypto stream has carried so far, and how many streams are open (a snapshot). */
  get streamStats(): CryptoStreamStats {
    const s = this.streams;
    return { open: s?.openStreams ?? 0, answered: s?.answeredCount ?? 0, fallbacks: s?.fallbackCount ?? 0 };
  }

  /** Closes the streams (operations in flight on them reject with FAILED_PRECONDITION), then the channels. */
  override close(): void {
    this.streams?.close();
    super.close();
  }

  /**
   * Runs one crypto operation: on the stream when it is on and the call has no metadata of its own,
   * else as `method`'s unary call. Same answers, same errors (the unary call's HsmClientError, code
   * and message), the same deadline and signal semantics. Rejects only with HsmClientError.
   */
  protected streamed<C extends StreamOpCase>(
    kind: C,
    method: UnaryMethod<StreamRequestOf<C>, StreamResultOf<C>>,
    build: () => StreamRequestOf<C>,
    options: CallOptions = {},
  ): Promise<StreamResultOf<C>> {
    const router = this.router();
    if (router === undefined || (options.metadata !== undefined && Object.keys(options.metadata).length > 0)) return this.call(method, build, options);
    this.counters.calls += 1;
    return this.overStream(router, kind, method, build, options).catch((err: unknown) => {
      this.counters.failures += 1;
      throw err;
    });
  }

  protected override tokenChanged(): void {
    this.streams?.tokenChanged();
  }

  private async overStream<C extends StreamOpCase>(
    router: StreamRouter<Endpoint>,
    kind: C,
    method: UnaryMethod<StreamRequestOf<C>, StreamResultOf<C>>,
    build: () => StreamRequestOf<C>,
    options: CallOptions,
  ): Promise<StreamResultOf<C>> {
    await this.freshToken();
    const { signal } = options;
    if (this.isClosed) throw closedError();
    if (signal?.aborted) throw abortErrorOf(signal);
    let request: StreamRequestOf<C>;
    let deadline: Date;
    try {
      request = build();
      deadline = this.deadlineOf(options.deadlineMs);
    } catch (err) {
      throw HsmClientError.from(err, grpc.status.INVALID_ARGUMENT);
    }
    return new Promise<StreamResultOf<C>>((resolve, reject) => {
      const op = new PendingOp<Endpoint>({ $case: kind, value: request } as PendingOp["op"], deadline, signal, resolve as (v: unknown) => void, reject);
      // Within what is left of the deadline; the unary path does its own retries from there.
      op.unary = (endpoint) => this.run(method, () => request, { signal, deadlineMs: Math.max(1, op.remainingMs()) }, true, endpoint);
      router.run(op);
    });
  }

  private router(): StreamRouter<Endpoint> | undefined {
    const settings = this.options.cryptoStream;
    if (settings === false) return undefined;
    this.streams ??= new StreamRouter<Endpoint>({
      pick: (tried) => this.pool.pick(tried),
      endpointCount: this.pool.endpoints.length,
      reportUnavailable: (e) => this.pool.reportUnavailable(e),
      open: (e) => grpcStreamOpener(e),
      token: () => this.token,
      canRelogin: this.options.credentialsProvider !== undefined,
      relogin: (stale, deadline, signal) => this.relogin(stale, deadline, signal),
      countRetry: () => {
        this.counters.retries += 1;
      },
      retry: this.options.retry,
      limits: settings,
    });
    return this.streams;
  }
}
