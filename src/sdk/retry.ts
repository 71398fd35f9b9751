import { status } from "@grpc/grpc-js";
import { AuditServiceService } from "../gen/hsm/v1/audit";
import { ClusterServiceService } from "../gen/hsm/v1/cluster";
import { CryptoServiceService } from "../gen/hsm/v1/crypto";
import { KeyServiceService } from "../gen/hsm/v1/keys";
import { QuorumServiceService, UserServiceService } from "../gen/hsm/v1/users";
import type { HsmClientError } from "./client-error";
import type { HsmClientRetryOptions } from "./client-options";

/** The method paths (`"/hsm.v1.KeyService/GetKey"` …) of a generated service definition. */
type PathsOf<S> = { [K in keyof S]: S[K] extends { readonly path: infer P extends string } ? P : never }[keyof S];

/** Every RPC path of the hsm.v1 services the client calls. */
export type HsmRpcPath =
  | PathsOf<typeof KeyServiceService>
  | PathsOf<typeof CryptoServiceService>
  | PathsOf<typeof UserServiceService>
  | PathsOf<typeof QuorumServiceService>
  | PathsOf<typeof AuditServiceService>
  | PathsOf<typeof ClusterServiceService>;

/**
 * Whether an RPC may be sent again after a transient failure:
 * - `"always"`: reads and crypto operations; repeating them changes nothing.
 * - `"with-request-id"`: creates; repeating is safe only when the request carries a client
 *   `requestId`, with which the daemon answers a repeated create with the key it already made.
 * - `"never"`: changes that are not idempotent, or are not safe to repeat blindly (deleting, user
 *   administration, passwords, sessions, approvals, sharing).
 */
export type RpcIdempotency = "always" | "with-request-id" | "never";

/**
 * The one table of which hsm.v1 RPCs the client retries (see {@link RpcIdempotency}). Typed over every
 * RPC path of the generated services, so a new RPC does not compile until it is classified here.
 */
export const RPC_IDEMPOTENCY: Readonly<Record<HsmRpcPath, RpcIdempotency>> = Object.freeze({
  // KeyService
  "/hsm.v1.KeyService/GetKey": "always",
  "/hsm.v1.KeyService/ListKeys": "always",
  "/hsm.v1.KeyService/GetPublicKey": "always",
  "/hsm.v1.KeyService/GetImportParameters": "always",
  "/hsm.v1.KeyService/GenerateKey": "with-request-id",
  "/hsm.v1.KeyService/ImportKey": "with-request-id",
  "/hsm.v1.KeyService/ImportPublicKey": "with-request-id",
  "/hsm.v1.KeyService/DeleteKey": "never",
  "/hsm.v1.KeyService/ShareKey": "never",
  "/hsm.v1.KeyService/UnshareKey": "never",
  "/hsm.v1.KeyService/ListKeyVersions": "always",
  "/hsm.v1.KeyService/ListAliases": "always",
  "/hsm.v1.KeyService/RotateKey": "with-request-id",
  // Setting a value is idempotent: repeating it sets the same value.
  "/hsm.v1.KeyService/UpdateRotationPolicy": "always",
  "/hsm.v1.KeyService/SetMinDecryptionVersion": "always",
  "/hsm.v1.KeyService/EnableKey": "always",
  "/hsm.v1.KeyService/DisableKey": "always",
  "/hsm.v1.KeyService/UpdateKeyDescription": "always",
  "/hsm.v1.KeyService/TagKey": "always",
  "/hsm.v1.KeyService/UntagKey": "always",
  "/hsm.v1.KeyService/TrimKeyVersions": "never",
  "/hsm.v1.KeyService/ScheduleKeyDeletion": "never",
  "/hsm.v1.KeyService/CancelKeyDeletion": "never",
  "/hsm.v1.KeyService/CreateAlias": "never",
  "/hsm.v1.KeyService/UpdateAlias": "never",
  "/hsm.v1.KeyService/DeleteAlias": "never",
  // CryptoService
  "/hsm.v1.CryptoService/Encrypt": "always",
  "/hsm.v1.CryptoService/Decrypt": "always",
  "/hsm.v1.CryptoService/Sign": "always",
  "/hsm.v1.CryptoService/Verify": "always",
  "/hsm.v1.CryptoService/WrapKey": "always",
  "/hsm.v1.CryptoService/GenerateRandom": "always",
  "/hsm.v1.CryptoService/BatchSign": "always",
  // The stream as a whole is never re-sent; its operations fail over one by one (each is safe to repeat).
  "/hsm.v1.CryptoService/CryptoStream": "never",
  "/hsm.v1.CryptoService/BatchVerify": "always",
  "/hsm.v1.CryptoService/BatchEncrypt": "always",
  "/hsm.v1.CryptoService/BatchDecrypt": "always",
  "/hsm.v1.CryptoService/ReEncrypt": "always",
  "/hsm.v1.CryptoService/BatchReEncrypt": "always",
  "/hsm.v1.CryptoService/UnwrapKey": "with-request-id",
  "/hsm.v1.CryptoService/DeriveKey": "with-request-id",
  // UserService
  "/hsm.v1.UserService/GetUser": "always",
  "/hsm.v1.UserService/ListUsers": "always",
  "/hsm.v1.UserService/Login": "never",
  "/hsm.v1.UserService/Logout": "never",
  "/hsm.v1.UserService/RefreshSession": "never",
  "/hsm.v1.UserService/ChangePassword": "never",
  "/hsm.v1.UserService/CreateUser": "never",
  "/hsm.v1.UserService/DeleteUser": "never",
  "/hsm.v1.UserService/LockUser": "never",
  "/hsm.v1.UserService/UnlockUser": "never",
  "/hsm.v1.UserService/ResetPassword": "never",
  // QuorumService
  "/hsm.v1.QuorumService/ListQuorumRequests": "always",
  "/hsm.v1.QuorumService/GetQuorumRequest": "always",
  "/hsm.v1.QuorumService/ApproveQuorumRequest": "never",
  "/hsm.v1.QuorumService/RejectQuorumRequest": "never",
  // AuditService
  "/hsm.v1.AuditService/QueryAuditLog": "always",
  "/hsm.v1.AuditService/VerifyAuditLog": "always",
  "/hsm.v1.CryptoService/GenerateDataKey": "always",
  "/hsm.v1.CryptoService/GenerateDataKeyWithoutPlaintext": "always",
  "/hsm.v1.CryptoService/DecryptDataKey": "always",
  // ClusterService
  "/hsm.v1.ClusterService/GetClusterStatus": "always",
  "/hsm.v1.ClusterService/ListJoinRequests": "always",
  "/hsm.v1.ClusterService/ApproveJoin": "never",
  "/hsm.v1.ClusterService/RejectJoin": "never",
  "/hsm.v1.ClusterService/RemoveNode": "never",
});

/** True when the call `path` with `request` may be sent again after a transient failure. */
export function isIdempotent(path: string, request: unknown): boolean {
  const policy = (RPC_IDEMPOTENCY as Readonly<Record<string, RpcIdempotency | undefined>>)[path];
  if (policy === "always") return true;
  if (policy !== "with-request-id") return false;
  const requestId = (request as { requestId?: unknown } | null)?.requestId;
  return typeof requestId === "string" && requestId !== "";
}

/**
 * RESOURCE_EXHAUSTED details that mean "this node is busy right now" rather than "this request is too
 * big": the daemon maps CKR_SESSION_COUNT / CKR_DEVICE_MEMORY / CKR_HOST_MEMORY to "…: the device is
 * out of memory or sessions" (src/pkcs11/ckr.ts). Its configured limits (payload, batch, random length)
 * and grpc-js's own message-size errors are RESOURCE_EXHAUSTED too, and repeating those cannot help.
 */
const DEVICE_BUSY = /\bout of (?:memory or )?sessions\b|\bdevice is busy\b/i;

/** True for an error after which the same request may succeed (on another node, or a bit later). */
export function isTransient(err: HsmClientError): boolean {
  if (err.code === status.UNAVAILABLE) return true;
  return err.code === status.RESOURCE_EXHAUSTED && DEVICE_BUSY.test(err.details);
}

/**
 * The wait before retry number `retry` (1 for the first retry): exponential backoff with full
 * jitter, uniformly random in [0, min(maxBackoffMs, initialBackoffMs · 2^(retry-1))).
 */
export function backoffMs(retry: number, options: Readonly<Required<HsmClientRetryOptions>>, random: () => number = Math.random): number {
  const ceiling = Math.min(options.maxBackoffMs, options.initialBackoffMs * 2 ** Math.max(0, retry - 1));
  return Math.floor(random() * ceiling);
}
