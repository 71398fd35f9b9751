/**
 * The types of the {@link HsmClient} surface: per-call options, what the client knows of its session,
 * its counters, and the request shapes its methods take.
 */
import type { Role } from "../gen/hsm/v1/users";
import type { ListKeysRequest } from "../gen/hsm/v1/keys";

/** Per-call settings, the last argument of every {@link HsmClient} method. */
export interface CallOptions {
  /**
   * Deadline of this call in milliseconds from now; past it the call fails with DEADLINE_EXCEEDED.
   * @default the client's {@link HsmClientOptions.defaultDeadlineMs} (30_000)
   */
  deadlineMs?: number;
  /**
   * Cancels the call when aborted: it rejects with CANCELLED (DEADLINE_EXCEEDED when the reason is a
   * `TimeoutError`, as from `AbortSignal.timeout()`), and the server sees the cancellation.
   * @default none
   */
  signal?: AbortSignal;
  /**
   * Request headers (gRPC metadata), e.g. `{ "x-request-id": "…" }`. Keys are case-insensitive ASCII;
   * values are text, so binary (`-bin`) keys are refused.
   * @default {}
   */
  metadata?: Record<string, string>;
}

/** What the client knows of its session (never the token itself). */
export interface SessionInfo {
  username: string;
  role: Role;
  /** When the token stops working (the client refreshes it before, see {@link HsmClient.login}). */
  expiresAt: Date;
  mustChangePassword: boolean;
}

/**
 * A session with its bearer token ({@link HsmClient.exportSession}), for a program that keeps the
 * session beyond one client, as hsmctl saves it for its later processes. The token is a secret.
 */
export interface ExportedSession extends SessionInfo {
  /** The bearer token: hand it back with {@link HsmClient.useToken}; store it like a password. */
  token: string;
}

/** Filter of {@link HsmClient.listAllKeys}: a `ListKeysRequest` without the page token. */
export type ListKeysFilter = Omit<Partial<ListKeysRequest>, "pageToken">;

/** A batch request whose items may themselves be partial (defaults filled per item). */
export interface BatchRequestInit<T> {
  items?: Partial<T>[];
}

/** Counters of an {@link HsmClient} since it was made, for tests and operations ({@link HsmClient.stats}). */
export interface HsmClientStats {
  /** RPCs made through the client, each counted once however many attempts it took (the logins and token refreshes the client makes itself included). */
  calls: number;
  /** Attempts sent again: after a transient error (to another endpoint when there is one), or after a re-login. */
  retries: number;
  /** Calls that finally rejected, whatever the error. */
  failures: number;
  /** Re-logins made with {@link HsmClientOptions.credentials} after UNAUTHENTICATED (one per shared re-login). */
  relogins: number;
}

/** What the crypto stream of an {@link HsmClient} has carried ({@link HsmClient.streamStats}), for tests and operations. */
export interface CryptoStreamStats {
  /** Streams open now, over every endpoint (a stream finishing under an old session token included). */
  open: number;
  /** Operations whose final answer (result or error) came over a stream. */
  answered: number;
  /** Operations sent as their unary call because the daemon did not serve the stream (to this session). */
  fallbacks: number;
}

/** The parts of a generated method definition a unary call needs. */
export interface UnaryMethod<Req, Res> {
  readonly path: string;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}
