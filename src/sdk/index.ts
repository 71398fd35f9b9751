/**
 * The public hsmd client SDK: {@link HsmClient} over the `hsm.v1` gRPC API, its one error class
 * {@link HsmClientError}, the BYOK helper {@link wrapForImport}, and the API's enums and message types.
 */

/** The client: one promise-returning method per RPC of the hsm.v1 services, with login and token refresh. */
export { HsmClient } from "./client";
/** The one error every client call rejects with (numeric gRPC `code`, `codeName`, `details`, `cause`). */
export { HsmClientError } from "./client-error";
/** Client-side BYOK wrapping: RSA-OAEP-SHA256(ephemeral AES-256 key) || AES-KWP(key, material). */
export { wrapForImport } from "./wrap-for-import";
/** Default per-call deadline in milliseconds (30 s), the default retry settings and crypto-stream settings. */
export { DEFAULT_CRYPTO_STREAM, DEFAULT_DEADLINE_MS, DEFAULT_RETRY } from "./client-options";
/** Which RPCs the client retries after transient errors (the one table), and the checks it applies. */
export { RPC_IDEMPOTENCY, isIdempotent, isTransient, backoffMs } from "./retry";
/** gRPC status codes, to compare with {@link HsmClientError.code} (`GrpcStatus.NOT_FOUND` …). */
export { status as GrpcStatus } from "@grpc/grpc-js";

/** Key kinds and sizes, usages, states, origins and public key formats of `hsm/v1/keys.proto`. */
export { KeyOrigin, KeySpec, KeyState, KeyUsage, PublicKeyFormat } from "../gen/hsm/v1/keys";
/** Algorithms and formats of `hsm/v1/crypto.proto`. */
export {
  EncryptionAlgorithm,
  MessageType,
  SignatureFormat,
  SigningAlgorithm,
  WrapAlgorithm,
} from "../gen/hsm/v1/crypto";

/** Roles and quorum request states of `hsm/v1/users.proto`. */
export { QuorumStatus, Role } from "../gen/hsm/v1/users";

/** Client and per-call settings, what the client knows of its session, and its counters. */
export type { BatchRequestInit, CallOptions, CryptoStreamStats, ExportedSession, HsmClientStats, ListKeysFilter, SessionInfo } from "./client";
/** Options of the {@link HsmClient} constructor. */
export type {
  HsmClientCredentials,
  HsmClientOptions,
  HsmClientRetryOptions,
  HsmClientStreamOptions,
  HsmClientTlsOptions,
  HsmCredentialsProvider,
} from "./client-options";
/** The RPC paths of the hsm.v1 services and their retry classification. */
export type { HsmRpcPath, RpcIdempotency } from "./retry";

/** KeyService messages. */
export type {
  DeleteKeyRequest,
  DeleteKeyResponse,
  GenerateKeyRequest,
  GetImportParametersRequest,
  GetImportParametersResponse,
  GetKeyRequest,
  GetPublicKeyRequest,
  GetPublicKeyResponse,
  ImportKeyRequest,
  ImportPublicKeyRequest,
  Key,
  ListKeysRequest,
  ListKeysResponse,
  ShareKeyRequest,
  UnshareKeyRequest,
} from "../gen/hsm/v1/keys";
/** KeyService messages of key versions (issue 13). */
export type {
  KeyVersionInfo,
  ListKeyVersionsRequest,
  ListKeyVersionsResponse,
  RotateKeyRequest,
  SetMinDecryptionVersionRequest,
  TrimKeyVersionsRequest,
  UpdateRotationPolicyRequest,
} from "../gen/hsm/v1/keys";
/** KeyService alias messages (issue 13). */
export type { Alias, CreateAliasRequest, DeleteAliasRequest, DeleteAliasResponse, ListAliasesRequest, ListAliasesResponse, UpdateAliasRequest } from "../gen/hsm/v1/keys";
/** UserService and QuorumService messages. */
export type {
  ApproveQuorumRequestResponse,
  CreateUserRequest,
  ListQuorumRequestsResponse,
  ListUsersResponse,
  QuorumApproval,
  QuorumRequest,
  ResetPasswordRequest,
  Session,
  User,
} from "../gen/hsm/v1/users";
/** ClusterService messages and join states. */
export { JoinStatus } from "../gen/hsm/v1/cluster";
export type { ApproveJoinRequest, ClusterStatus, JoinRequest, NodeStatus } from "../gen/hsm/v1/cluster";
/** AuditService messages. */
export type { AuditEntry, QueryAuditLogRequest, QueryAuditLogResponse, VerifyAuditLogResponse } from "../gen/hsm/v1/audit";
/** CryptoService messages, including the per-item results of the batch calls. */
export type {
  BatchDecryptRequest,
  BatchDecryptResponse,
  BatchDecryptResult,
  BatchEncryptRequest,
  BatchEncryptResponse,
  BatchEncryptResult,
  BatchSignRequest,
  BatchSignResponse,
  BatchSignResult,
  BatchVerifyRequest,
  BatchVerifyResponse,
  BatchVerifyResult,
  DecryptRequest,
  DecryptResponse,
  DeriveKeyRequest,
  EncryptRequest,
  EncryptResponse,
  GenerateRandomRequest,
  GenerateRandomResponse,
  ItemError,
  SignRequest,
  SignResponse,
  UnwrapKeyRequest,
  VerifyRequest,
  VerifyResponse,
  WrapKeyRequest,
  WrapKeyResponse,
  GenerateDataKeyRequest,
  GenerateDataKeyResponse,
  DecryptDataKeyRequest,
  DecryptDataKeyResponse,
} from "../gen/hsm/v1/crypto";

/**
 * Envelope encryption (docs/ENVELOPE.md): AES-256-GCM in this process under a data key per message
 * that the service makes and unwraps, buffers and streams, and the data-key cache with its stats.
 */
export {
  encryptEnvelope,
  decryptEnvelope,
  createEncryptStream,
  createDecryptStream,
  readEnvelopeHeader,
  DataKeyCache,
  DEFAULT_FRAME_SIZE as ENVELOPE_DEFAULT_FRAME_SIZE,
  MAX_FRAME_SIZE as ENVELOPE_MAX_FRAME_SIZE,
  ENVELOPE_VERSION,
} from "./envelope";
export type {
  DataKeyCacheOptions,
  DataKeyCacheStats,
  DataKeySource,
  EnvelopeDecryptOptions,
  EnvelopeDecryptResult,
  EnvelopeEncryptOptions,
  EnvelopeEncryptStreamOptions,
  EnvelopeHeaderEvent,
} from "./envelope";
/** Re-wraps an envelope message's data key under another key or version, the frames untouched (issue 13). */
export { rewrapEnvelope } from "./envelope-rewrap";
export type { EnvelopeRewrapOptions, EnvelopeRewrapResult, RewrapSource } from "./envelope-rewrap";
