/**
 * Key versions (issue 13): how a version's device objects are named, and a version's public key.
 *
 * Version 1 of a key keeps the object id it always had (CKA_ID = the key id), so tokens and records
 * written before versions existed stay valid. Version N > 1 of key K has CKA_ID and label id
 * `K.vN`: a key id is a UUID (no "."), so the two never collide, and the inventory, reconcile and
 * destroy can tell which record an object belongs to.
 */
import type { KeyRecord, KeyVersion } from "./record";

const VERSIONED = /^(.+)\.v([1-9][0-9]{0,8})$/;

/** The device object id of a key's version (v1: the key id itself). */
export function deviceIdOf(keyId: string, version: number): string {
  return version <= 1 ? keyId : `${keyId}.v${version}`;
}

/** The key id and version a device object id names (an id without a version suffix is version 1). */
export function parseDeviceId(deviceId: string): { keyId: string; version: number } {
  const m = VERSIONED.exec(deviceId);
  return m ? { keyId: m[1]!, version: Number(m[2]) } : { keyId: deviceId, version: 1 };
}

/** A version of a record, or undefined when it has none by that number (never made, or trimmed). */
export function versionOf(r: KeyRecord, version: number): KeyVersion | undefined {
  return r.versions.find((v) => v.version === version);
}

/**
 * The public key (SPKI DER) of a version: its own, or for a record written before versions had
 * their own, the record's (which is then the only version's).
 */
export function spkiOfVersion(r: KeyRecord, v: KeyVersion): Buffer | undefined {
  return v.publicKeySpki ?? (v.version === r.currentVersion ? r.publicKeySpki : undefined);
}
