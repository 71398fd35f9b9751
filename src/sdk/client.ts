import * as grpc from "@grpc/grpc-js";
import {
  CryptoServiceService,
  BatchDecryptRequest,
  BatchEncryptRequest,
  BatchSignRequest,
  BatchVerifyRequest,
  DecryptRequest,
  DeriveKeyRequest,
  EncryptRequest,
  GenerateRandomRequest,
  SignRequest,
  UnwrapKeyRequest,
  VerifyRequest,
  WrapKeyRequest,
  GenerateDataKeyRequest,
  DecryptDataKeyRequest,
  type GenerateDataKeyResponse,
  type DecryptDataKeyResponse,
  type BatchDecryptResponse,
  type BatchEncryptResponse,
  type BatchSignResponse,
  type BatchVerifyResponse,
  type DecryptResponse,
  type EncryptResponse,
  type GenerateRandomResponse,
  type SignResponse,
  type VerifyResponse,
  type WrapKeyResponse,
} from "../gen/hsm/v1/crypto";
import {
  KeyServiceService,
  DeleteKeyRequest,
  GenerateKeyRequest,
  GetImportParametersRequest,
  GetKeyRequest,
  GetPublicKeyRequest,
  ImportKeyRequest,
  ImportPublicKeyRequest,
  ListKeysRequest,
  type DeleteKeyResponse,
  type GetImportParametersResponse,
  type GetPublicKeyResponse,
  type Key,
  type ListKeysResponse,
  ShareKeyRequest,
  UnshareKeyRequest,
} from "../gen/hsm/v1/keys";
import {
  QuorumServiceService,
  UserServiceService,
  ApproveQuorumRequestRequest,
  ChangePasswordRequest,
  CreateUserRequest,
  DeleteUserRequest,
  GetQuorumRequestRequest,
  GetUserRequest,
  ListQuorumRequestsRequest,
  ListUsersRequest,
  LockUserRequest,
  LoginRequest,
  LogoutRequest,
  RefreshSessionRequest,
  RejectQuorumRequestRequest,
  ResetPasswordRequest,
  UnlockUserRequest,
  type ApproveQuorumRequestResponse,
  type DeleteUserResponse,
  type ListQuorumRequestsResponse,
  type ListUsersResponse,
  type LogoutResponse,
  type QuorumRequest,
  type Role,
  type Session,
  type User,
} from "../gen/hsm/v1/users";
import {
  AuditServiceService,
  QueryAuditLogRequest,
  VerifyAuditLogRequest,
  type QueryAuditLogResponse,
  type VerifyAuditLogResponse,
} from "../gen/hsm/v1/audit";
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
import { HsmClientError } from "./client-error";
import { compileHsmClientOptions, type CompiledHsmClientOptions, type HsmClientOptions } from "./client-options";
import { EndpointPool, type Endpoint } from "./endpoints";
import { backoffMs, isIdempotent, isTransient } from "./retry";

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

/** The parts of a generated method definition a unary call needs. */
interface UnaryMethod<Req, Res> {
  readonly path: string;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}

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
export class HsmClient {
  private readonly options: CompiledHsmClientOptions;
  private readonly pool: EndpointPool;
  private closed = false;
  /** The bearer token of the current session (sent as `authorization`), its facts and lifetime. */
  private token: string | undefined;
  private sessionInfo: SessionInfo | undefined;
  private refreshAt = 0;
  private refreshing: Promise<unknown> | undefined;
  /** The re-login in flight, shared by every call that met UNAUTHENTICATED meanwhile. */
  private relogging: Promise<void> | undefined;
  private readonly counters: HsmClientStats = { calls: 0, retries: 0, failures: 0, relogins: 0 };

  /** @throws {HsmClientError} INVALID_ARGUMENT listing every problem in `options` */
  constructor(options: HsmClientOptions) {
    this.options = compileHsmClientOptions(options);
    const { endpoints, credentials, channelOptions } = this.options;
    this.pool = new EndpointPool(endpoints, credentials, channelOptions);
  }

  // ---- sessions ----

  /**
   * Logs in (`Login`) and keeps the session: every later call sends its token, and the client
   * refreshes it (`RefreshSession`) on the first call made in the last quarter of its lifetime, so a
   * long-lived client stays logged in without keeping the password. The password is not stored.
   * A first crypto officer (or a user whose password was reset) must {@link changePassword} first.
   */
  async login(username: string, password: string, options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.login, () => LoginRequest.fromPartial({ username, password }), options, false);
    return this.adopt(s);
  }

  /** Ends the session on the server (`Logout`) and forgets it here. */
  async logout(options?: CallOptions): Promise<LogoutResponse> {
    try {
      return await this.call(UserServiceService.logout, () => LogoutRequest.fromPartial({}), options, false);
    } finally {
      this.forget();
    }
  }

  /** Exchanges the session's token for a fresh one now (`RefreshSession`); the old one stops working. */
  async refreshSession(options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.refreshSession, () => RefreshSessionRequest.fromPartial({}), options, false);
    return this.adopt(s);
  }

  /** Changes the logged-in user's password (`ChangePassword`); every other session of the user ends, this one carries on with a new token. */
  async changePassword(oldPassword: string, newPassword: string, options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.changePassword, () => ChangePasswordRequest.fromPartial({ oldPassword, newPassword }), options);
    return this.adopt(s);
  }

  /** Uses a token obtained elsewhere (e.g. by another process's login); `undefined` forgets the session. */
  useToken(token: string | undefined, expiresAt?: Date): void {
    this.token = token;
    this.sessionInfo = undefined;
    this.refreshAt = expiresAt ? expiresAt.getTime() - 60_000 : Number.POSITIVE_INFINITY;
  }

  /** The current session (username, role, expiry), or undefined when not logged in. */
  get session(): SessionInfo | undefined {
    return this.sessionInfo ? { ...this.sessionInfo } : undefined;
  }

  private adopt(s: Session): SessionInfo {
    const expiresAt = new Date(s.expiresAt);
    const now = Date.now();
    this.token = s.token;
    this.sessionInfo = { username: s.username, role: s.role, expiresAt, mustChangePassword: s.mustChangePassword };
    this.refreshAt = expiresAt.getTime() - Math.max(0, expiresAt.getTime() - now) / 4;
    return { ...this.sessionInfo };
  }

  private forget(): void {
    this.token = undefined;
    this.sessionInfo = undefined;
    this.refreshAt = 0;
  }

  /** Refreshes the token once (shared by concurrent calls) when it is in the last quarter of its life. */
  private async freshToken(): Promise<void> {
    if (this.token === undefined || Date.now() < this.refreshAt) return;
    this.refreshing ??= this.refreshSession()
      .catch(() => undefined) // a failed refresh leaves the old token: the call itself then says why
      .finally(() => {
        this.refreshing = undefined;
      });
    await this.refreshing;
  }

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

  // ---- data keys (envelope encryption) ----

  /**
   * A fresh data key and the same key wrapped under `keyId` (`GenerateDataKey`), the encryption
   * context bound to the wrapped key. Use the plaintext, then zero it.
   */
  generateDataKey(request: Partial<GenerateDataKeyRequest>, options?: CallOptions): Promise<GenerateDataKeyResponse> {
    return this.call(CryptoServiceService.generateDataKey, () => GenerateDataKeyRequest.fromPartial(request), options);
  }

  /** Only the wrapped data key (`GenerateDataKeyWithoutPlaintext`). */
  generateDataKeyWithoutPlaintext(request: Partial<GenerateDataKeyRequest>, options?: CallOptions): Promise<GenerateDataKeyResponse> {
    return this.call(CryptoServiceService.generateDataKeyWithoutPlaintext, () => GenerateDataKeyRequest.fromPartial(request), options);
  }

  /** Unwraps a data key (`DecryptDataKey`); the encryption context must be exactly the one it was made with. */
  decryptDataKey(request: Partial<DecryptDataKeyRequest>, options?: CallOptions): Promise<DecryptDataKeyResponse> {
    return this.call(CryptoServiceService.decryptDataKey, () => DecryptDataKeyRequest.fromPartial(request), options);
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

  // ---- KeyService ----

  /** Lets another crypto user use a key you own (`ShareKey`); may need a quorum. */
  shareKey(request: Partial<ShareKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.shareKey, () => ShareKeyRequest.fromPartial(request), options);
  }

  /** Stops sharing a key you own with a crypto user (`UnshareKey`). */
  unshareKey(request: Partial<UnshareKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.unshareKey, () => UnshareKeyRequest.fromPartial(request), options);
  }

  /** Generates a key inside the HSM (`GenerateKey`). Retried after a transient error only when it carries a `requestId`. */
  generateKey(request: Partial<GenerateKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.generateKey, () => GenerateKeyRequest.fromPartial(request), options);
  }

  /** Reads one key's metadata (`GetKey`); NOT_FOUND when there is no such key. */
  getKey(request: Partial<GetKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.getKey, () => GetKeyRequest.fromPartial(request), options);
  }

  /** Lists one page of keys (`ListKeys`); see {@link listAllKeys} to walk every page. */
  listKeys(request: Partial<ListKeysRequest> = {}, options?: CallOptions): Promise<ListKeysResponse> {
    return this.call(KeyServiceService.listKeys, () => ListKeysRequest.fromPartial(request), options);
  }

  /**
   * Every key matching `filter`, fetching `ListKeys` pages lazily as the iteration proceeds (each
   * page is one call with its own deadline; `options.signal` covers them all). Stop early with `break`.
   */
  async *listAllKeys(filter: ListKeysFilter = {}, options?: CallOptions): AsyncGenerator<Key, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listKeys({ ...filter, pageToken }, options);
      for (const key of page.keys) yield key;
      if (page.nextPageToken !== "" && page.nextPageToken === pageToken) {
        throw new HsmClientError(grpc.status.INTERNAL, "ListKeys returned the page token it was given: paging would never end");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** Deletes a key and destroys its HSM objects (`DeleteKey`). */
  deleteKey(request: Partial<DeleteKeyRequest>, options?: CallOptions): Promise<DeleteKeyResponse> {
    return this.call(KeyServiceService.deleteKey, () => DeleteKeyRequest.fromPartial(request), options);
  }

  /** An asymmetric key's public key as SPKI DER, PEM and JWK (`GetPublicKey`). */
  getPublicKey(request: Partial<GetPublicKeyRequest>, options?: CallOptions): Promise<GetPublicKeyResponse> {
    return this.call(KeyServiceService.getPublicKey, () => GetPublicKeyRequest.fromPartial(request), options);
  }

  /** Imports a public key only (SPKI DER, PEM or JWK) for verify/encrypt/wrap (`ImportPublicKey`). Retried after a transient error only when it carries a `requestId`. */
  importPublicKey(request: Partial<ImportPublicKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.importPublicKey, () => ImportPublicKeyRequest.fromPartial(request), options);
  }

  /** The import wrapping key for BYOK (`GetImportParameters`); feed its `publicKeySpki` to {@link wrapForImport}. */
  getImportParameters(
    request: Partial<GetImportParametersRequest> = {},
    options?: CallOptions,
  ): Promise<GetImportParametersResponse> {
    return this.call(KeyServiceService.getImportParameters, () => GetImportParametersRequest.fromPartial(request), options);
  }

  /** Imports key material wrapped with {@link wrapForImport} (`ImportKey`, BYOK). Retried after a transient error only when it carries a `requestId`. */
  importKey(request: Partial<ImportKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.importKey, () => ImportKeyRequest.fromPartial(request), options);
  }

  // ---- CryptoService ----

  /** Encrypts in the HSM (`Encrypt`): AES-GCM/CBC-PAD/CTR or RSA-OAEP. */
  encrypt(request: Partial<EncryptRequest>, options?: CallOptions): Promise<EncryptResponse> {
    return this.call(CryptoServiceService.encrypt, () => EncryptRequest.fromPartial(request), options);
  }

  /** Decrypts in the HSM (`Decrypt`). */
  decrypt(request: Partial<DecryptRequest>, options?: CallOptions): Promise<DecryptResponse> {
    return this.call(CryptoServiceService.decrypt, () => DecryptRequest.fromPartial(request), options);
  }

  /** Signs a message or digest, or computes an HMAC (`Sign`). */
  sign(request: Partial<SignRequest>, options?: CallOptions): Promise<SignResponse> {
    return this.call(CryptoServiceService.sign, () => SignRequest.fromPartial(request), options);
  }

  /** Verifies a signature or HMAC (`Verify`); a bad signature is `valid: false`, not an error. */
  verify(request: Partial<VerifyRequest>, options?: CallOptions): Promise<VerifyResponse> {
    return this.call(CryptoServiceService.verify, () => VerifyRequest.fromPartial(request), options);
  }

  /** Wraps an exportable key under another key (`WrapKey`). */
  wrapKey(request: Partial<WrapKeyRequest>, options?: CallOptions): Promise<WrapKeyResponse> {
    return this.call(CryptoServiceService.wrapKey, () => WrapKeyRequest.fromPartial(request), options);
  }

  /** Unwraps a blob into a new key (`UnwrapKey`). Retried after a transient error only when it carries a `requestId`. */
  unwrapKey(request: Partial<UnwrapKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(CryptoServiceService.unwrapKey, () => UnwrapKeyRequest.fromPartial(request), options);
  }

  /** Derives an AES key with ECDH (`DeriveKey`). Retried after a transient error only when it carries a `requestId`. */
  deriveKey(request: Partial<DeriveKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(CryptoServiceService.deriveKey, () => DeriveKeyRequest.fromPartial(request), options);
  }

  /** Random bytes from the HSM's generator (`GenerateRandom`). */
  generateRandom(request: Partial<GenerateRandomRequest>, options?: CallOptions): Promise<GenerateRandomResponse> {
    return this.call(CryptoServiceService.generateRandom, () => GenerateRandomRequest.fromPartial(request), options);
  }

  /** Many signs in one call (`BatchSign`); each result is `{ $case: "ok" }` or a per-item `{ $case: "error" }`. */
  batchSign(request: BatchRequestInit<SignRequest>, options?: CallOptions): Promise<BatchSignResponse> {
    return this.call(CryptoServiceService.batchSign, () => BatchSignRequest.fromPartial(request), options);
  }

  /** Many verifies in one call (`BatchVerify`), with per-item results. */
  batchVerify(request: BatchRequestInit<VerifyRequest>, options?: CallOptions): Promise<BatchVerifyResponse> {
    return this.call(CryptoServiceService.batchVerify, () => BatchVerifyRequest.fromPartial(request), options);
  }

  /** Many encryptions in one call (`BatchEncrypt`), with per-item results. */
  batchEncrypt(request: BatchRequestInit<EncryptRequest>, options?: CallOptions): Promise<BatchEncryptResponse> {
    return this.call(CryptoServiceService.batchEncrypt, () => BatchEncryptRequest.fromPartial(request), options);
  }

  /** Many decryptions in one call (`BatchDecrypt`), with per-item results. */
  batchDecrypt(request: BatchRequestInit<DecryptRequest>, options?: CallOptions): Promise<BatchDecryptResponse> {
    return this.call(CryptoServiceService.batchDecrypt, () => BatchDecryptRequest.fromPartial(request), options);
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
  private async call<Req, Res>(method: UnaryMethod<Req, Res>, build: () => Req, options: CallOptions = {}, session = true): Promise<Res> {
    this.counters.calls += 1;
    try {
      return await this.run(method, build, options, session);
    } catch (err) {
      this.counters.failures += 1;
      throw err;
    }
  }

  private async run<Req, Res>(method: UnaryMethod<Req, Res>, build: () => Req, options: CallOptions, session: boolean): Promise<Res> {
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
      const endpoint = this.pool.pick(tried);
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

  /**
   * Logs in again with the configured credentials, once for every call that meets UNAUTHENTICATED
   * meanwhile. A call whose token was already replaced (by a re-login, refresh or login that finished
   * after it was sent) needs none: it just uses the new one.
   */
  private async relogin(staleToken: string | undefined, deadline: Date, signal: AbortSignal | undefined): Promise<void> {
    if (this.token !== staleToken && this.token !== undefined) return;
    const provider = this.options.credentialsProvider!;
    this.relogging ??= (async () => {
      this.counters.relogins += 1;
      let credentials: { username: string; password: string };
      try {
        credentials = await provider();
      } catch (err) {
        throw HsmClientError.from(err, grpc.status.UNAUTHENTICATED);
      }
      await this.login(credentials.username, credentials.password, { deadlineMs: Math.max(1, deadline.getTime() - Date.now()) });
    })().finally(() => {
      this.relogging = undefined;
    });
    await within(this.relogging, deadline, signal);
  }

  /** One attempt of a call on one endpoint; rejects only with HsmClientError. */
  private unary<Req, Res>(
    endpoint: Endpoint,
    method: UnaryMethod<Req, Res>,
    request: Req,
    metadata: grpc.Metadata,
    deadline: Date,
    signal: AbortSignal | undefined,
  ): Promise<Res> {
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
        call = endpoint.client.makeUnaryRequest(
          method.path,
          method.requestSerialize,
          method.responseDeserialize,
          request,
          metadata,
          { deadline },
          (err, response) => {
            done();
            if (err) {
              reject(signal?.aborted && err.code === grpc.status.CANCELLED ? abortErrorOf(signal) : HsmClientError.from(err));
            } else if (response === undefined) {
              reject(new HsmClientError(grpc.status.INTERNAL, "the server sent no response message"));
            } else {
              resolve(response);
            }
          },
        );
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

  private deadlineOf(deadlineMs: number | undefined): Date {
    const ms = deadlineMs ?? this.options.defaultDeadlineMs;
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms <= 0) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, "deadlineMs: must be a finite number greater than 0");
    }
    return new Date(Date.now() + ms);
  }
}

/** grpc-js metadata from plain text headers; grpc-js validates the keys and throws on bad ones. */
function metadataOf(headers: Record<string, string> | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (headers === undefined) return metadata;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase().endsWith("-bin")) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, `metadata ${key}: binary (-bin) headers are not supported`);
    }
    metadata.set(key, value);
  }
  return metadata;
}

function closedError(): HsmClientError {
  return new HsmClientError(grpc.status.FAILED_PRECONDITION, "the HsmClient is closed");
}

/** Waits `ms` milliseconds, or rejects as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortErrorOf(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortErrorOf(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `work`, unless `deadline` passes (DEADLINE_EXCEEDED) or `signal` aborts first; `work` itself runs on. */
function within<T>(work: Promise<T>, deadline: Date, signal: AbortSignal | undefined): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    const onAbort = (): void => {
      cleanup();
      reject(abortErrorOf(signal!));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new HsmClientError(grpc.status.DEADLINE_EXCEEDED, "the deadline passed while logging in again"));
    }, Math.max(0, deadline.getTime() - Date.now()));
    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        cleanup();
        resolve(value);
      },
      (err: unknown) => {
        cleanup();
        reject(HsmClientError.from(err));
      },
    );
  });
}

/** CANCELLED for an aborted signal, DEADLINE_EXCEEDED when its reason is a TimeoutError. */
function abortErrorOf(signal: AbortSignal): HsmClientError {
  const reason: unknown = signal.reason;
  const timedOut = typeof reason === "object" && reason !== null && (reason as { name?: unknown }).name === "TimeoutError";
  return new HsmClientError(
    timedOut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED,
    timedOut ? "the call's abort signal timed out" : "the call was aborted",
    { cause: reason },
  );
}
