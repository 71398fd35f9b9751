import {
  QuorumServiceService,
  UserServiceService,
  ApproveQuorumRequestRequest,
  CreateUserRequest,
  DeleteUserRequest,
  GetQuorumRequestRequest,
  GetUserRequest,
  ListQuorumRequestsRequest,
  ListUsersRequest,
  LockUserRequest,
  RejectQuorumRequestRequest,
  ResetPasswordRequest,
  UnlockUserRequest,
  type ApproveQuorumRequestResponse,
  type DeleteUserResponse,
  type ListQuorumRequestsResponse,
  type ListUsersResponse,
  type QuorumRequest,
  type User,
} from "../gen/hsm/v1/users";
import { AuditServiceService, QueryAuditLogRequest, VerifyAuditLogRequest, type QueryAuditLogResponse, type VerifyAuditLogResponse } from "../gen/hsm/v1/audit";
import {
  ClusterServiceService,
  ApproveJoinRequest,
  GetClusterStatusRequest,
  ListJoinRequestsRequest,
  RejectJoinRequest,
  RemoveNodeRequest,
  type ClusterStatus,
  type JoinRequest,
  type ListJoinRequestsResponse,
  type RemoveNodeResponse,
} from "../gen/hsm/v1/cluster";
import { HsmCryptoCalls } from "./client-crypto";
import type { CallOptions } from "./client-types";

/** The types of the client's surface (they lived here first). */
export type { BatchRequestInit, CallOptions, CryptoStreamStats, ExportedSession, HsmClientStats, ListKeysFilter, SessionInfo } from "./client-types";

/**
 * The hsmd client: one promise-returning method per RPC of `hsm.v1.KeyService`,
 * `hsm.v1.CryptoService`, `hsm.v1.UserService`, `hsm.v1.QuorumService` and `hsm.v1.AuditService`,
 * carrying the session of {@link HsmClient.login}, over one or many daemons of a cluster.
 *
 * Requests are partial: omitted fields take their proto3 defaults. Every call has a deadline
 * ({@link HsmClientOptions.defaultDeadlineMs} unless {@link CallOptions.deadlineMs} says otherwise),
 * can be cancelled with an `AbortSignal`, and rejects only with {@link HsmClientError}.
 *
 * With many {@link HsmClientOptions.endpoints}, calls are spread round robin over the daemons that are
 * connected and healthy. An idempotent call (see `RPC_IDEMPOTENCY`) that fails with a transient
 * error is retried on another daemon with exponential backoff and full jitter
 * ({@link HsmClientOptions.retry}), all attempts within the call's one deadline. With
 * {@link HsmClientOptions.credentials}, a call that fails with UNAUTHENTICATED logs in again (once,
 * shared by concurrent calls) and is repeated once.
 *
 * The single crypto operations (sign, verify, encrypt, decrypt, random bytes, data keys) travel as
 * messages on one `CryptoStream` per endpoint ({@link HsmClientOptions.cryptoStream}, on by
 * default): the same answers and errors as their unary calls, with the same deadlines, cancellation,
 * retries and failover, per operation. Call {@link HsmClient.close} when done: it ends the streams.
 *
 * @example
 * const client = new HsmClient({
 *   endpoints: ["hsmd-1.internal:7443", "hsmd-2.internal:7443", "hsmd-3.internal:7443"],
 *   tls: { ca: readFileSync("ca.pem") },
 *   credentials: async () => ({ username: "app", password: await secrets.get("hsm-app") }),
 * });
 * const key = await client.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "signer", requestId: randomUUID() });
 * const { signature } = await client.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message });
 * client.close();
 */
export class HsmClient extends HsmCryptoCalls {
  // ---- UserService (crypto officers) ----

  /** Creates a user (`CreateUser`). */
  createUser(request: Partial<CreateUserRequest>, options?: CallOptions): Promise<User> {
    return this.call(UserServiceService.createUser, () => CreateUserRequest.fromPartial(request), options);
  }

  /** Reads one user (`GetUser`). */
  getUser(request: Partial<GetUserRequest>, options?: CallOptions): Promise<User> {
    return this.call(UserServiceService.getUser, () => GetUserRequest.fromPartial(request), options);
  }

  /** Every user (`ListUsers`). */
  listUsers(options?: CallOptions): Promise<ListUsersResponse> {
    return this.call(UserServiceService.listUsers, () => ListUsersRequest.fromPartial({}), options);
  }

  /** Deletes a user (`DeleteUser`); may need a quorum (see {@link HsmClientError.quorumRequestId}). */
  deleteUser(request: Partial<DeleteUserRequest>, options?: CallOptions): Promise<DeleteUserResponse> {
    return this.call(UserServiceService.deleteUser, () => DeleteUserRequest.fromPartial(request), options);
  }

  /** Locks a user and ends its sessions (`LockUser`). */
  lockUser(request: Partial<LockUserRequest>, options?: CallOptions): Promise<User> {
    return this.call(UserServiceService.lockUser, () => LockUserRequest.fromPartial(request), options);
  }

  /** Unlocks a user and clears its failed-login count (`UnlockUser`). */
  unlockUser(request: Partial<UnlockUserRequest>, options?: CallOptions): Promise<User> {
    return this.call(UserServiceService.unlockUser, () => UnlockUserRequest.fromPartial(request), options);
  }

  /** Sets another user's password, which it must change at its next login (`ResetPassword`); may need a quorum. */
  resetPassword(request: Partial<ResetPasswordRequest>, options?: CallOptions): Promise<User> {
    return this.call(UserServiceService.resetPassword, () => ResetPasswordRequest.fromPartial(request), options);
  }

  // ---- QuorumService ----

  /** Quorum requests, optionally of one status (`ListQuorumRequests`). */
  listQuorumRequests(request: Partial<ListQuorumRequestsRequest> = {}, options?: CallOptions): Promise<ListQuorumRequestsResponse> {
    return this.call(QuorumServiceService.listQuorumRequests, () => ListQuorumRequestsRequest.fromPartial(request), options);
  }

  /** One quorum request (`GetQuorumRequest`): crypto officers, and the user that made it. */
  getQuorumRequest(request: Partial<GetQuorumRequestRequest>, options?: CallOptions): Promise<QuorumRequest> {
    return this.call(QuorumServiceService.getQuorumRequest, () => GetQuorumRequestRequest.fromPartial(request), options);
  }

  /** Approves a quorum request as the logged-in crypto officer (`ApproveQuorumRequest`). */
  approveQuorumRequest(request: Partial<ApproveQuorumRequestRequest>, options?: CallOptions): Promise<ApproveQuorumRequestResponse> {
    return this.call(QuorumServiceService.approveQuorumRequest, () => ApproveQuorumRequestRequest.fromPartial(request), options);
  }

  /** Rejects a quorum request (`RejectQuorumRequest`). */
  rejectQuorumRequest(request: Partial<RejectQuorumRequestRequest>, options?: CallOptions): Promise<QuorumRequest> {
    return this.call(QuorumServiceService.rejectQuorumRequest, () => RejectQuorumRequestRequest.fromPartial(request), options);
  }

  // ---- ClusterService ----

  /** Every member with its applied revision, lag, HSM health and last contact (`GetClusterStatus`; COs and AUs). */
  getClusterStatus(options?: CallOptions): Promise<ClusterStatus> {
    return this.call(ClusterServiceService.getClusterStatus, () => GetClusterStatusRequest.fromPartial({}), options);
  }

  /** Join requests and their state (`ListJoinRequests`). */
  listJoinRequests(options?: CallOptions): Promise<ListJoinRequestsResponse> {
    return this.call(ClusterServiceService.listJoinRequests, () => ListJoinRequestsRequest.fromPartial({}), options);
  }

  /**
   * Approves a node's join (`ApproveJoin`): `transportKeySha256` is the fingerprint the joining
   * node printed, `soPin` the security-officer PIN of the token of the node this call reaches (used
   * for this ceremony only). May need a quorum.
   */
  approveJoin(request: Partial<ApproveJoinRequest>, options?: CallOptions): Promise<JoinRequest> {
    return this.call(ClusterServiceService.approveJoin, () => ApproveJoinRequest.fromPartial(request), options);
  }

  /** Rejects a pending join (`RejectJoin`). */
  rejectJoin(request: Partial<RejectJoinRequest>, options?: CallOptions): Promise<JoinRequest> {
    return this.call(ClusterServiceService.rejectJoin, () => RejectJoinRequest.fromPartial(request), options);
  }

  /** Removes a member (`RemoveNode`): it stops serving and destroys its copy of the domain key. */
  removeNode(request: Partial<RemoveNodeRequest>, options?: CallOptions): Promise<RemoveNodeResponse> {
    return this.call(ClusterServiceService.removeNode, () => RemoveNodeRequest.fromPartial(request), options);
  }

  // ---- AuditService (crypto officers) ----

  /** One page of audit entries matching a filter (`QueryAuditLog`). */
  queryAuditLog(request: Partial<QueryAuditLogRequest> = {}, options?: CallOptions): Promise<QueryAuditLogResponse> {
    return this.call(AuditServiceService.queryAuditLog, () => QueryAuditLogRequest.fromPartial(request), options);
  }

  /** Checks the audit log's hash chain on the daemon (`VerifyAuditLog`). */
  verifyAuditLog(options?: CallOptions): Promise<VerifyAuditLogResponse> {
    return this.call(AuditServiceService.verifyAuditLog, () => VerifyAuditLogRequest.fromPartial({}), options);
  }
}
