/** The key record: what the state store holds of a key (the source of truth), its encoding and its API view. */
import type { Usage, WrappedMaterial } from "../pkcs11";
import { upgradeRecord } from "./record-migration";
import type { Key, KeyOriginName, KeySpecName, KeyStateName } from "./types";

/**
 * One version of a key. `material` is the secret or private part wrapped under the domain key
 * (AES-KWP); it is absent for public-only keys and for keys the device refuses to wrap
 * (`residency: "device"`, e.g. Ed25519 on SoftHSM2 2.6), which live only in the token that made them.
 */
export interface KeyVersion {
  version: number;
  createdAt: string;
  residency: "wrapped" | "device" | "public";
  material?: WrappedMaterial;
  /**
   * Asymmetric keys: this version's public key (SPKI DER). Records written before versions had
   * their own keep it in KeyRecord.publicKeySpki only (valid while the key has one version: rotation
   * copies it here before adding version 2). Read it with spkiOfVersion (versions.ts).
   */
  publicKeySpki?: Buffer;
}

/**
 * A user as key ownership and shares record it: the name and the id of that incarnation of the name
 * (a user deleted and created again has a new id and inherits nothing).
 */
export interface UserRef {
  user: string;
  userId: string;
}

/** A key as the state store holds it: the source of truth the HSM objects are materialized from. */
export interface KeyRecord {
  id: string;
  label: string;
  /** By name ("EC_P256"); records written before names held the API's enum number (see record-migration.ts). */
  spec: KeySpecName;
  usages: Usage[];
  /** Records written before states held "enabled" (read as ENABLED by record-migration.ts). */
  state: KeyStateName;
  /** PENDING_DELETION: when the key is destroyed (RFC 3339). */
  deletionDate?: string;
  /** PENDING_DELETION: the state CancelKeyDeletion restores (issue 13 lane S; absent: DISABLED). */
  stateBeforeDeletion?: KeyStateName;
  /** Imported keys: RFC 3339 time after which the key moves to PENDING_IMPORT. */
  validTo?: string;
  /** Imported secret keys with a validTo: the key check value computed in the HSM (check-value.ts), for re-import (issue 13 lane S). */
  checkValue?: Buffer;
  /** Versions below it cannot decrypt or verify (1 when absent). */
  minDecryptionVersion?: number;
  /** Automatic rotation: period in days, and when the next rotation is due (RFC 3339). */
  rotation?: { periodDays: number; nextAt: string };
  /** Request ids of rotations made (idempotence of RotateKey), newest last, at most 16. */
  rotationRequests?: string[];
  description?: string;
  tags?: Record<string, string>;
  /** By name ("GENERATED"); formerly the enum number, as `spec`. */
  origin: KeyOriginName;
  createdAt: string;
  publicKeySpki?: Buffer;
  publicOnly: boolean;
  exportable: boolean;
  currentVersion: number;
  versions: KeyVersion[];
  requestId?: string;
  /** The crypto user that created or imported it; absent on records made before users existed (usable by nobody). */
  owner?: UserRef;
  /** Crypto users it is shared with: they may use it for crypto, nothing else. */
  shares?: UserRef[];
  /** The node that created it (cluster mode): where a key that lives only in its device is held. */
  createdOn?: string;
}

/** The record's own state (records written before states said "enabled"). */
export const stateOf = (r: KeyRecord): KeyStateName => ((r.state as string) === "enabled" ? "ENABLED" : r.state);

/** The current version of a record (every record has one). */
export const currentVersionOf = (r: KeyRecord): KeyVersion | undefined => r.versions.find((v) => v.version === r.currentVersion);

/**
 * The record without its wrapped material (what this node's in-memory copy holds: the material is
 * read from the store when the key is materialized). The record itself is not changed.
 */
export function withoutMaterial(r: KeyRecord): KeyRecord {
  if (!r.versions.some((v) => v.material)) return r;
  return { ...r, versions: r.versions.map(({ material: _m, ...v }) => v) };
}

/** Store key of a record. */
export const recordKey = (id: string) => `keys/${id}`;
/** Store key of an idempotency entry (client request id → key id). */
export const requestKey = (requestId: string) => `requests/${Buffer.from(requestId, "utf8").toString("base64url")}`;

/** JSON with buffers as base64: the store's encoding of a record. */
export function encodeRecord(r: KeyRecord): Buffer {
  return Buffer.from(JSON.stringify(r, (_k, v) => (v && typeof v === "object" && v.type === "Buffer" && Array.isArray(v.data) ? { $b64: Buffer.from(v.data).toString("base64") } : v)));
}

/** Reads a record in either format: names (now written), or the enum numbers of earlier versions. */
export function decodeRecord(b: Buffer): KeyRecord {
  return upgradeRecord(JSON.parse(b.toString("utf8"), (_k, v) => (v && typeof v === "object" && typeof v.$b64 === "string" ? Buffer.from(v.$b64, "base64") : v)));
}

/** The API view of a record: never carries wrapped material; the share list only for its owner (`viewerId`). */
export function toApiKey(r: KeyRecord, viewerId?: string): Key {
  return {
    id: r.id,
    label: r.label,
    spec: r.spec,
    usages: [...r.usages],
    state: stateOf(r),
    origin: r.origin,
    createdAt: r.createdAt,
    publicKeySpki: r.publicKeySpki ?? Buffer.alloc(0),
    publicOnly: r.publicOnly,
    exportable: r.exportable,
    version: r.currentVersion,
    owner: r.owner?.user ?? "",
    sharedWith: viewerId !== undefined && r.owner?.userId === viewerId ? (r.shares ?? []).map((s) => s.user) : [],
    description: r.description ?? "",
    tags: { ...(r.tags ?? {}) },
    deletionDate: r.deletionDate ?? "",
    minDecryptionVersion: r.minDecryptionVersion ?? 1,
    rotationPeriodDays: r.rotation?.periodDays ?? 0,
    nextRotationAt: r.rotation?.nextAt ?? "",
    validTo: r.validTo ?? "",
    aliases: [],
    versionCount: r.versions.length,
  };
}
