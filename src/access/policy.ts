/**
 * Who may call what: one rule per RPC, the only place that says so. Everything not listed here is
 * denied (the gRPC layer refuses to register a handler without a rule).
 */
import { blobKeyOf, isCiphertextBlob } from "../keys";
import type { Role } from "../users";

/** The access a request needs on a key: `use` for crypto and reads, `own` for delete, share and wrap-out. */
export type KeyNeed = "use" | "own";

/** A key id a request names, the field it came in, and the access it needs. */
export interface KeyRef {
  field: string;
  id: string;
  need: KeyNeed;
  /**
   * Set when the request names its key in a form that cannot be read (a malformed ciphertext
   * header): the request is refused with INVALID_ARGUMENT and this message before anything else.
   */
  invalid?: string;
}

/** The rule of one RPC. */
export interface Rule {
  /**
   * `public`: no session (Login only). `session`: any logged-in user. Otherwise the roles allowed.
   */
  who: "public" | "session" | readonly Role[];
  /** May be called by a user that must still change its one-time password (ChangePassword, Logout). */
  duringPasswordChange?: boolean;
  /** The keys the request names and the access each needs (checked before the service runs). */
  keys?: (req: Record<string, unknown>) => KeyRef[];
  /** A batch: every item's `keyId` needs `use` (checked per item: a denied item fails alone). */
  batch?: boolean;
  /** Creates a key: the response's `id` goes in the audit entry. */
  createsKey?: boolean;
  /** Changes keys or users: its audit entry is on disk (fdatasync) before the RPC answers. */
  change?: boolean;
  /** The request field naming another subject for the audit entry (a username, a quorum request id). */
  target?: string;
}

const CO: readonly Role[] = ["CO"];
const CU: readonly Role[] = ["CU"];
const str = (v: unknown) => (typeof v === "string" ? v : "");
/** The .proto name of a field (keyId → key_id). */
const snake = (field: string) => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const key = (field: string, need: KeyNeed) => {
  // The .proto name of the field (keyId → key_id), once: this runs for every crypto call.
  const name = snake(field);
  return (req: Record<string, unknown>) => [{ field: name, id: str(req[field]), need }];
};

/**
 * The key a self-describing ciphertext (docs/CIPHERTEXT.md) names in its header, and the request's
 * own key field when it names another (the handler then refuses the mismatch, after alias
 * resolution). Without a blob (or `blobOnly` false and a blob in an older format, such as an HDK1
 * data key): the key field alone. Never throws: a malformed header is an `invalid` ref.
 */
const blobKey =
  (blobField: string, keyField: string, need: KeyNeed, newFormatOnly = false) =>
  (req: Record<string, unknown>): KeyRef[] => {
    const blob = req[blobField];
    const explicit = str(req[keyField]);
    const hasBlob = blob instanceof Uint8Array && blob.length > 0 && (!newFormatOnly || isCiphertextBlob(blob));
    if (!hasBlob) return key(keyField, need)(req);
    const field = snake(blobField);
    const h = blobKeyOf(blob, field);
    if ("error" in h) return [{ field, id: "", need, invalid: h.error }];
    const refs: KeyRef[] = [{ field, id: h.keyId, need }];
    if (explicit && explicit !== h.keyId) refs.push({ field: snake(keyField), id: explicit, need });
    return refs;
  };

/**
 * ReEncrypt: `use` of the source key (the blob's header, or `source_key_id` for an HDK1 data key,
 * which names none) and `use` of the destination (`destination_key_id`; empty: the source key).
 */
export const reEncryptKeys = (req: Record<string, unknown>): KeyRef[] => {
  const blob = req["ciphertextBlob"];
  const hdk1 = blob instanceof Uint8Array && blob.length >= 4 && Buffer.from(blob.buffer, blob.byteOffset, 4).toString("latin1") === "HDK1";
  const refs: KeyRef[] = hdk1 ? key("sourceKeyId", "use")(req) : blobKey("ciphertextBlob", "sourceKeyId", "use")(req);
  if (hdk1 && !refs[0]!.id) refs[0]!.invalid = "ciphertext_blob is a wrapped data key in the HDK1 format (made before ciphertext headers), which names no key: pass its key as source_key_id";
  if (!(blob instanceof Uint8Array) || blob.length === 0) return [{ field: "ciphertext_blob", id: "", need: "use", invalid: "ciphertext_blob is required" }];
  const dest = str(req["destinationKeyId"]);
  if (dest) refs.push({ field: "destination_key_id", id: dest, need: "use" });
  return refs;
};

/**
 * Every RPC of hsm.v1, by method name. CloudHSM's model: crypto officers manage users, approve quorum
 * requests and read the audit log, and never use keys; crypto users create and use keys (their own and
 * those shared with them) and never manage users; appliance users (the daemons) do neither.
 */
export const RULES: Readonly<Record<string, Rule>> = Object.freeze({
  // UserService
  Login: { who: "public", target: "username" },
  Logout: { who: "session", duringPasswordChange: true },
  RefreshSession: { who: "session" },
  ChangePassword: { who: "session", duringPasswordChange: true, change: true },
  CreateUser: { who: CO, change: true, target: "username" },
  GetUser: { who: CO, target: "username" },
  ListUsers: { who: CO },
  DeleteUser: { who: CO, change: true, target: "username" },
  LockUser: { who: CO, change: true, target: "username" },
  UnlockUser: { who: CO, change: true, target: "username" },
  ResetPassword: { who: CO, change: true, target: "username" },
  // QuorumService (GetQuorumRequest: COs, and the user that made the request: checked by the handler)
  ListQuorumRequests: { who: CO },
  GetQuorumRequest: { who: ["CO", "CU"], target: "id" },
  ApproveQuorumRequest: { who: CO, change: true, target: "id" },
  RejectQuorumRequest: { who: CO, change: true, target: "id" },
  // ClusterService (appliance users, the daemons themselves, may read the cluster's status)
  GetClusterStatus: { who: ["CO", "AU"] },
  ListJoinRequests: { who: CO },
  ApproveJoin: { who: CO, change: true, target: "nodeId" },
  RejectJoin: { who: CO, change: true, target: "nodeId" },
  RemoveNode: { who: CO, change: true, target: "nodeId" },
  // AuditService
  QueryAuditLog: { who: CO },
  VerifyAuditLog: { who: CO },
  // KeyService
  GenerateKey: { who: CU, change: true, createsKey: true },
  GetKey: { who: CU, keys: key("keyId", "use") },
  ListKeys: { who: CU },
  DeleteKey: { who: CU, change: true, keys: key("keyId", "own") },
  GetPublicKey: { who: CU, keys: key("keyId", "use") },
  ImportPublicKey: { who: CU, change: true, createsKey: true },
  GetImportParameters: { who: CU },
  ImportKey: { who: CU, change: true, createsKey: true },
  ShareKey: { who: CU, change: true, keys: key("keyId", "own"), target: "username" },
  UnshareKey: { who: CU, change: true, keys: key("keyId", "own"), target: "username" },
  // Versions, states and metadata: the owner's (issue 13). Reading versions is a use.
  RotateKey: { who: CU, change: true, keys: key("keyId", "own") },
  ListKeyVersions: { who: CU, keys: key("keyId", "use") },
  UpdateRotationPolicy: { who: CU, change: true, keys: key("keyId", "own") },
  SetMinDecryptionVersion: { who: CU, change: true, keys: key("keyId", "own") },
  TrimKeyVersions: { who: CU, change: true, keys: key("keyId", "own") },
  EnableKey: { who: CU, change: true, keys: key("keyId", "own") },
  DisableKey: { who: CU, change: true, keys: key("keyId", "own") },
  ScheduleKeyDeletion: { who: CU, change: true, keys: key("keyId", "own") },
  CancelKeyDeletion: { who: CU, change: true, keys: key("keyId", "own") },
  UpdateKeyDescription: { who: CU, change: true, keys: key("keyId", "own") },
  TagKey: { who: CU, change: true, keys: key("keyId", "own") },
  UntagKey: { who: CU, change: true, keys: key("keyId", "own") },
  // Aliases: made and re-pointed by the owner of the target key; the alias's owner is checked by the handler.
  CreateAlias: { who: CU, change: true, keys: key("targetKeyId", "own"), target: "aliasName" },
  UpdateAlias: { who: CU, change: true, keys: key("targetKeyId", "own"), target: "aliasName" },
  DeleteAlias: { who: CU, change: true, target: "aliasName" },
  ListAliases: { who: CU },
  // CryptoService
  Encrypt: { who: CU, keys: key("keyId", "use") },
  // Decrypt and DecryptDataKey: the key a self-describing ciphertext's header names (key_id may then be empty).
  Decrypt: { who: CU, keys: blobKey("ciphertextBlob", "keyId", "use") },
  Sign: { who: CU, keys: key("keyId", "use") },
  Verify: { who: CU, keys: key("keyId", "use") },
  // Wrapping a key out of the service is its owner's decision; the wrapping key only needs use.
  WrapKey: { who: CU, keys: (r) => [...key("wrappingKeyId", "use")(r), ...key("keyId", "own")(r)] },
  UnwrapKey: { who: CU, change: true, createsKey: true, keys: key("unwrappingKeyId", "use") },
  DeriveKey: { who: CU, change: true, createsKey: true, keys: key("privateKeyId", "use") },
  GenerateRandom: { who: CU },
  GenerateDataKey: { who: CU, keys: key("keyId", "use") },
  GenerateDataKeyWithoutPlaintext: { who: CU, keys: key("keyId", "use") },
  DecryptDataKey: { who: CU, keys: blobKey("wrappedDataKey", "keyId", "use", true) },
  BatchSign: { who: CU, batch: true },
  BatchVerify: { who: CU, batch: true },
  BatchEncrypt: { who: CU, batch: true },
  BatchDecrypt: { who: CU, batch: true },
  // Opening the stream needs a crypto user's session; each message is then authorized by the rule
  // of its unary method (Sign, Encrypt, …), here, as if it came alone.
  CryptoStream: { who: CU },
  // The source key is named by the ciphertext's header, the destination by the request: use of both
  // (reEncryptKeys; the batch checks each item's the same way, a denied item failing alone).
  ReEncrypt: { who: CU, keys: reEncryptKeys },
  BatchReEncrypt: { who: CU, batch: true },
});

/** Role names as people read them. */
export const ROLE_NAMES: Readonly<Record<Role, string>> = Object.freeze({ CO: "crypto officer (CO)", CU: "crypto user (CU)", AU: "appliance user (AU)" });
