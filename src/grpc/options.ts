import type { AccessGuard, PeerRateLimiter } from "../access";
import type { AuditLog, TallyUse } from "../audit";
import type { Applier, Membership, Watermarks } from "../cluster";
import type { HsmError } from "../errors";
import type { KeyService } from "../keys";
import type { QuorumService, UserService } from "../users";

/** What the gRPC layer reports per call (metrics); never sees request bodies. */
export type RpcObserver = (method: string, code: string, seconds: number) => void;

/** What the hsm.v1 server is built over: the domain services, the guard, the audit log and the limits. */
export interface GrpcServerOptions {
  keys: KeyService;
  users: UserService;
  quorum: QuorumService;
  guard: AccessGuard;
  audit: AuditLog;
  /** Path of the audit log (QueryAuditLog, VerifyAuditLog read it). */
  auditFile: string;
  /** fdatasync every audit entry (`always`), or only those of changes (`changes`). */
  auditFsync: "always" | "changes";
  /**
   * Largest request, in bytes (`limits.maxMessageBytes`): checked before decoding with a message
   * naming the limit; the transport itself cuts off messages over this plus {@link TRANSPORT_SLACK_BYTES}.
   */
  maxMessageBytes: number;
  /** Most elements of a repeated field, batch items included (`limits.maxBatchItems`), counted before decoding. */
  maxBatchItems: number;
  observe?: RpcObserver;
  log?: (msg: string) => void;
  /** Cluster membership (absent on a single node). */
  membership?: Membership;
  /** The applier: the store revision this node's HSM is materialized up to (status). */
  applier: Applier;
  /** The nodes' applied-revision watermarks (GetKey's held_by in a cluster). */
  watermarks?: Watermarks;
  /** The cluster's name and the newest store revision this node knows (status). */
  clusterName?: string;
  storeRevision?: () => number;
  /** CKA_ID of the domain key (join approvals wrap it). */
  domainKeyId?: string;
  /** Checked before anything else on every call: an error here (e.g. a removed node) is the answer. */
  gate?: () => HsmError | undefined;
  /** Logins per client address (absent: unlimited). */
  loginLimiter?: PeerRateLimiter;
  /** Called after a user changed its own password (the daemon removes the first officer's one-time password file). */
  onPasswordChanged?: (user: string) => void;
  /** Per-connection bounds (the `connections` section). */
  connections: GrpcConnectionOptions;
  /** How crypto streams are served (the `grpc` section); absent: its defaults. */
  streams?: GrpcStreamOptions;
  /**
   * Where a crypto stream's successful operations are counted (the audit's tally: entries per
   * stream, key and window instead of one per operation); absent: one audit entry per operation.
   * Denials and errors are recorded one entry each either way.
   */
  tally?: StreamTally;
}

/** How crypto streams are served (from the `grpc` section of the config). */
export interface GrpcStreamOptions {
  /** Operations one stream may have in flight before the daemon stops reading it. */
  maxInFlight: number;
  /** Operations all streams together may have in flight. */
  maxInFlightTotal: number;
  /** How often an open stream's session is authenticated again, in ms. */
  authRecheckMs: number;
}

/** One successful operation of a crypto stream, as the tally counts it (the audit's own type). */
export type StreamUse = TallyUse;

/**
 * What the gRPC layer needs of the audit's tally (structural: the audit's `UseTally` fits): count
 * each successful stream operation, and flush a stream's counts when it ends.
 */
export interface StreamTally {
  /** True once the audit log could not take the tally's entries: successes then answer UNAVAILABLE, as unary calls do. */
  readonly failed?: boolean;
  count(use: StreamUse): void;
  endStream(stream: string): Promise<void>;
}

/** What one connection may make the server hold (from the `connections` section of the config). */
export interface GrpcConnectionOptions {
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. */
  maxConcurrentStreams: number;
  /** nghttp2's memory per session, in MiB: past it new streams are refused. */
  maxSessionMemoryMiB: number;
  /** A connection without a call for this long is closed. */
  idleTimeoutMs: number;
  /** Keepalive ping interval (an unanswered ping closes the connection). */
  keepaliveMs: number;
  /** Unread response bytes per connection before its calls answer RESOURCE_EXHAUSTED. */
  maxQueuedResponseBytes: number;
}
