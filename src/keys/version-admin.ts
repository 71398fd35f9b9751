/**
 * A key's versions (issue 13): listing them, the min_decryption_version floor, and trimming the
 * versions below it (their material gone from the record, their objects from every node's HSM).
 */
import { invalid, precondition } from "../errors";
import type { KeyRecords } from "./key-records";
import { toApiKey, type KeyRecord } from "./record";
import { updateRecord, type RecordUpdateDeps } from "./record-update";
import type { Key } from "./types";
import { spkiOfVersion } from "./versions";

/** One version as ListKeyVersions shows it. */
export interface KeyVersionView {
  version: number;
  createdAt: string;
  /** This version's public key (SPKI DER); empty for a secret key. */
  publicKeySpki: Buffer;
  primary: boolean;
  /** At or above min_decryption_version. */
  decryptable: boolean;
}

/** ListKeyVersions' answer. */
export interface KeyVersionList {
  keyId: string;
  versions: KeyVersionView[];
  primaryVersion: number;
  minDecryptionVersion: number;
}

/** What version administration needs. */
export interface VersionAdminOptions extends RecordUpdateDeps {
  records: KeyRecords;
}

const minOf = (r: KeyRecord) => r.minDecryptionVersion ?? 1;
const lowestOf = (r: KeyRecord) => Math.min(...r.versions.map((v) => v.version));

/** ListKeyVersions, SetMinDecryptionVersion, TrimKeyVersions. */
export class VersionAdmin {
  constructor(private readonly opts: VersionAdminOptions) {}

  /** Every version, oldest first, with its public key and whether it is the primary and still decrypts. */
  list(keyId: string): KeyVersionList {
    const r = this.opts.records.record(keyId);
    const min = minOf(r);
    const versions = [...r.versions]
      .sort((a, b) => a.version - b.version)
      .map((v) => ({ version: v.version, createdAt: v.createdAt, publicKeySpki: spkiOfVersion(r, v) ?? Buffer.alloc(0), primary: v.version === r.currentVersion, decryptable: v.version >= min }));
    return { keyId: r.id, versions, primaryVersion: r.currentVersion, minDecryptionVersion: min };
  }

  /**
   * Sets the floor below which versions no longer decrypt or verify: 1 to the primary version
   * (INVALID_ARGUMENT otherwise). Lowering it is allowed while the versions below still exist
   * (FAILED_PRECONDITION once trimmed).
   */
  async setMinDecryptionVersion(keyId: string, min: number, viewerId?: string): Promise<Key> {
    const r = this.opts.records.record(keyId);
    const check = (x: KeyRecord) => {
      if (!Number.isInteger(min) || min < 1 || min > x.currentVersion) throw invalid(`min_decryption_version must be 1 to the primary version ${x.currentVersion}; got ${min}`);
      if (min < lowestOf(x)) throw precondition(`key ${x.id}: versions below ${lowestOf(x)} were trimmed; min_decryption_version cannot go below ${lowestOf(x)}`);
    };
    check(r);
    const { record } = await updateRecord(this.opts, r.id, (cur) => {
      check(cur);
      return minOf(cur) === min ? undefined : { ...cur, minDecryptionVersion: min };
    });
    return toApiKey(record, viewerId);
  }

  /**
   * Removes every version below min_decryption_version from the record (material included), then
   * destroys their objects in this node's HSM; every other node's applier destroys its own when it
   * sees the versions gone. FAILED_PRECONDITION when there is nothing to trim.
   */
  async trim(keyId: string, viewerId?: string): Promise<Key> {
    const { records } = this.opts;
    const r = records.record(keyId);
    let trimmed: number[] = [];
    const { record } = await updateRecord(this.opts, r.id, (cur) => {
      const min = minOf(cur);
      trimmed = cur.versions.filter((v) => v.version < min).map((v) => v.version);
      if (trimmed.length === 0) throw precondition(`key ${cur.id} has no version below its min_decryption_version ${min}: nothing to trim (SetMinDecryptionVersion first)`);
      return { ...cur, versions: cur.versions.filter((v) => v.version >= min) };
    });
    // The record no longer has them (durably); a crash before this leaves objects that the next
    // start quarantines as orphans (reconcile), as a DeleteKey's would.
    await records.destroyVersions(r.id, trimmed);
    return toApiKey(record, viewerId);
  }
}
