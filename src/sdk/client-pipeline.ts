/**
 * The call pipeline under every {@link HsmClient} method: the channels to the endpoints, one deadline
 * over every attempt, metadata and abort wiring, failover and backoff for idempotent calls, and the
 * hooks through which the session layer refreshes the token and logs in again.
 */
import * as grpc from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";
import { compileHsmClientOptions, type CompiledHsmClientOptions, type HsmClientOptions } from "./client-options";
import { EndpointPool, type Endpoint } from "./endpoints";
import { backoffMs, isIdempotent, isTransient } from "./retry";
import { abortErrorOf, closedError, metadataOf, sleep } from "./call-support";
import type { CallOptions, HsmClientStats, UnaryMethod } from "./client-types";

/** The channels and the call pipeline of an {@link HsmClient}; the session layer fills in the token. */
export abstract class HsmClientPipeline {
  protected readonly options: CompiledHsmClientOptions;
  protected readonly pool: EndpointPool;
  private closed = false;
  private currentToken: string | undefined;
  protected readonly counters: HsmClientStats = { calls: 0, retries: 0, failures: 0, relogins: 0 };

  /** @throws {HsmClientError} INVALID_ARGUMENT listing every problem in `options` */
  constructor(options: HsmClientOptions) {
    this.options = compileHsmClientOptions(options);
    const { endpoints, credentials, channelOptions } = this.options;
    this.pool = new EndpointPool(endpoints, credentials, channelOptions);
  }

  /** The bearer token of the current session (sent as `authorization`); setting it tells {@link tokenChanged}. */
  protected get token(): string | undefined {
    return this.currentToken;
  }

  protected set token(value: string | undefined) {
    if (value === this.currentToken) return;
    this.currentToken = value;
    this.tokenChanged();
  }

  /** True once {@link close} was called. */
  protected get isClosed(): boolean {
    return this.closed;
  }

  /** The first of {@link endpoints} (the only one when the client was given `endpoint`). */
  get endpoint(): string {
    return this.options.endpoints[0]!;
  }

  /** Every `"host:port"` this client talks to, in the order given. */
  get endpoints(): string[] {
    return [...this.options.endpoints];
  }

  /** What the client has done since it was made (a snapshot). */
  get stats(): HsmClientStats {
    return { ...this.counters };
  }

  /**
   * Closes the channel. Calls in flight fail; later calls reject with FAILED_PRECONDITION.
   * Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pool.close();
  }

  /**
   * Runs one RPC: the session's token (refreshed first when due, unless `session` is false: login,
   * logout and refresh themselves), one deadline over every attempt, metadata and abort wiring;
   * retries transient failures of idempotent calls on another endpoint, and logs in again after
   * UNAUTHENTICATED when it can. Rejects only with HsmClientError.
   */
  protected async call<Req, Res>(method: UnaryMethod<Req, Res>, build: () => Req, options: CallOptions = {}, session = true): Promise<Res> {
    this.counters.calls += 1;
    try {
      return await this.run(method, build, options, session);
    } catch (err) {
      this.counters.failures += 1;
      throw err;
    }
  }

  /** {@link call} without the counting: the crypto stream's operations fall back to it. */
  protected async run<Req, Res>(method: UnaryMethod<Req, Res>, build: () => Req, options: CallOptions, session: boolean, first?: Endpoint): Promise<Res> {
    if (session) await this.freshToken();
    const { signal } = options;
    if (this.closed) throw closedError();
    if (signal?.aborted) throw abortErrorOf(signal);
    let request: Req;
    let headers: grpc.Metadata;
    let deadline: Date;
    try {
      request = build();
      headers = metadataOf(options.metadata);
      deadline = this.deadlineOf(options.deadlineMs);
    } catch (err) {
      throw HsmClientError.from(err, grpc.status.INVALID_ARGUMENT);
    }

    const login = method.path.endsWith("/Login");
    const retryable = isIdempotent(method.path, request);
    const { retry, credentialsProvider } = this.options;
    let relogged = false;
    const tried = new Set<Endpoint>();
    for (let attempt = 1; ; attempt++) {
      const endpoint = attempt === 1 && first !== undefined ? first : this.pool.pick(tried);
      tried.add(endpoint);
      // The session's token as it is now: a refresh or re-login between attempts replaces it.
      const token = login ? undefined : this.token;
      const metadata = headers.clone();
      if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
      let err: HsmClientError;
      try {
        return await this.unary(endpoint, method, request, metadata, deadline, signal);
      } catch (e) {
        err = e as HsmClientError;
      }
      if (err.code === grpc.status.UNAVAILABLE) this.pool.reportUnavailable(endpoint);
      if (signal?.aborted) throw abortErrorOf(signal); // whatever the attempt's own error, the caller gave up

      // The server refused the credentials before doing anything, so even a non-idempotent call may be
      // repeated once with a fresh session.
      if (err.code === grpc.status.UNAUTHENTICATED && session && credentialsProvider !== undefined && !relogged) {
        relogged = true;
        await this.relogin(token, deadline, signal);
        tried.clear();
        this.counters.retries += 1;
        continue;
      }
      const transientAttempts = relogged ? attempt - 1 : attempt;
      if (!retryable || !isTransient(err) || transientAttempts >= retry.maxAttempts) throw err;
      const wait = backoffMs(transientAttempts, retry);
      if (Date.now() + wait >= deadline.getTime()) throw err; // never retry past the deadline
      await sleep(wait, signal);
      if (tried.size === this.pool.endpoints.length) tried.clear();
      this.counters.retries += 1;
    }
  }

  /** One attempt of a call on one endpoint; rejects only with HsmClientError. */
  private unary<Req, Res>(endpoint: Endpoint, method: UnaryMethod<Req, Res>, request: Req, metadata: grpc.Metadata, deadline: Date, signal: AbortSignal | undefined): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      if (this.closed) {
        reject(closedError());
        return;
      }
      if (signal?.aborted) {
        reject(abortErrorOf(signal));
        return;
      }
      let onAbort: (() => void) | undefined;
      const done = (): void => {
        if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
      };
      let call: grpc.ClientUnaryCall;
      try {
        call = endpoint.client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, request, metadata, { deadline }, (err, response) => {
          done();
          if (err) {
            reject(signal?.aborted && err.code === grpc.status.CANCELLED ? abortErrorOf(signal) : HsmClientError.from(err));
          } else if (response === undefined) {
            reject(new HsmClientError(grpc.status.INTERNAL, "the server sent no response message"));
          } else {
            resolve(response);
          }
        });
      } catch (err) {
        reject(HsmClientError.from(err, grpc.status.UNAVAILABLE));
        return;
      }
      if (signal !== undefined) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  /** The absolute deadline of a call given `deadlineMs` (the client's default when undefined); INVALID_ARGUMENT when not a positive number. */
  protected deadlineOf(deadlineMs: number | undefined): Date {
    const ms = deadlineMs ?? this.options.defaultDeadlineMs;
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms <= 0) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, "deadlineMs: must be a finite number greater than 0");
    }
    return new Date(Date.now() + ms);
  }

  /** The session's token changed (login, refresh, re-login, logout, useToken): the stream layer retires its streams. */
  protected tokenChanged(): void {}

  /** Refreshes the session's token first when it is due (the session layer). */
  protected abstract freshToken(): Promise<void>;

  /** Logs in again after UNAUTHENTICATED, once for concurrent calls (the session layer). */
  protected abstract relogin(staleToken: string | undefined, deadline: Date, signal: AbortSignal | undefined): Promise<void>;
}
