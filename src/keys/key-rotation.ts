/**
 * Key rotation (issue 13): a new primary version made in the HSM with the key's spec and usages,
 * wrapped under the domain key as a create's, and committed by a compare-and-put on the record.
 * Old versions stay (they decrypt and verify old data) until trimmed.
 *
 * The new version is generated under a transient device id (a random UUID): a rotation that loses
 * its compare-and-put (a retry with the same request id, or nodes racing on a scheduled rotation)
 * destroys it, so a loser never leaves an object. A winner's wrapped version is materialized on
 * demand like any other (its transient object destroyed too); a version the device cannot wrap
 * (residency "device", Ed25519 on SoftHSM2) is renamed to its device id `K.vN` instead, and lives
 * only in the HSM of the node that rotated.
 */
import { randomUUID } from "node:crypto";
import { precondition } from "../errors";
import type { KeyDevice } from "../pkcs11";
import type { StateStore } from "../store";
import type { KeyFactory } from "./key-create";
import type { KeyRecords } from "./key-records";
import type { KeyPlacement } from "./placement";
import { decodeRecord, recordKey, stateOf, toApiKey, type KeyRecord } from "./record";
import { updateRecord } from "./record-update";
import { DEFAULT_ROTATION_TIMING, nextRotationAt, rotationDue, rotationFor, type RotationTiming } from "./rotation-policy";
import { algorithmOf } from "./spec";
import type { Key } from "./types";
import { checkRequestId, type KeyLimits } from "./validation";
import { deviceIdOf } from "./versions";

/** Request ids a record remembers (newest last): a retry within the last 16 rotations is recognised. */
const MAX_ROTATION_REQUESTS = 16;

/** What rotation needs. */
export interface KeyRotationOptions {
  device: Pick<KeyDevice, "generate" | "destroy" | "rename">;
  store: StateStore;
  records: KeyRecords;
  factory: Pick<KeyFactory, "makeVersion">;
  placement: KeyPlacement;
  limits: Pick<KeyLimits, "maxRequestIdLength">;
  /** config.lifecycle's day length and rotation period bounds. @default DEFAULT_ROTATION_TIMING */
  timing?: RotationTiming;
  /** The clock (ms since the epoch). @default Date.now */
  now?: () => number;
}

/** Why a key cannot rotate (FAILED_PRECONDITION), or undefined when it can. */
function refusal(r: KeyRecord, what: string): string | undefined {
  if (r.origin !== "GENERATED") {
    return `key ${r.id} is ${r.origin}: only keys the HSM generated can ${what} (hsmd cannot make new material for imported, public, unwrapped or derived keys; create a new key and re-point an alias)`;
  }
  if (stateOf(r) !== "ENABLED") return `key ${r.id} is ${stateOf(r)}: only ENABLED keys can ${what}`;
  return undefined;
}

/** Rotation on demand (RotateKey), on schedule (the rotation pass) and its policy (UpdateRotationPolicy). */
export class KeyRotation {
  private readonly timing: RotationTiming;
  private readonly now: () => number;

  constructor(private readonly opts: KeyRotationOptions) {
    this.timing = opts.timing ?? DEFAULT_ROTATION_TIMING;
    this.now = opts.now ?? Date.now;
  }

  /**
   * RotateKey: a new primary version. GENERATED, ENABLED keys only (FAILED_PRECONDITION otherwise).
   * A retry with a request id the key remembers makes no second version and answers the key as it is.
   */
  async rotate(keyId: string, requestId: string, viewerId?: string): Promise<Key> {
    const rid = checkRequestId(this.opts.limits as KeyLimits, requestId);
    const r = this.opts.records.record(keyId);
    const why = refusal(r, "rotate");
    if (why) throw precondition(why);
    if (rid && r.rotationRequests?.includes(rid)) return toApiKey(r, viewerId);
    const { record } = await this.addVersion(
      r,
      (cur) => {
        const no = refusal(cur, "rotate");
        if (no) throw precondition(no);
        return !(rid && cur.rotationRequests?.includes(rid));
      },
      (cur) => (rid ? { rotationRequests: [...(cur.rotationRequests ?? []), rid].slice(-MAX_ROTATION_REQUESTS) } : {}),
    );
    return toApiKey(record, viewerId);
  }

  /**
   * The scheduled rotation of one key, if due at `now`: a new version, and the next one due a period
   * later. Every node runs it; the compare-and-put on `rotation.nextAt` lets exactly one node's
   * version land per period (the others see nextAt moved and make nothing). Answers the new version
   * number when this call made it.
   */
  async rotateIfDue(keyId: string, now = this.now()): Promise<number | undefined> {
    // The store's copy, not this node's: another node may have rotated it a moment ago (no
    // material is generated for a rotation that is no longer due).
    const e = await this.opts.store.get(recordKey(keyId));
    if (!e) return undefined;
    const r = decodeRecord(e.value);
    if (!rotationDue(r, now)) return undefined;
    const due = r.rotation!.nextAt;
    const res = await this.addVersion(
      r,
      (cur) => rotationDue(cur, now) && cur.rotation!.nextAt === due,
      (cur) => ({ rotation: { periodDays: cur.rotation!.periodDays, nextAt: nextRotationAt(this.timing, cur.rotation!, now) } }),
    );
    return res.changed ? res.record.currentVersion : undefined;
  }

  /** The `rotation` of a new key asking for `days` (GenerateKey's rotation_period_days; 0: none). */
  rotationFor(days: number): KeyRecord["rotation"] {
    return rotationFor(this.timing, days, this.now());
  }

  /**
   * UpdateRotationPolicy: 0 turns automatic rotation off; else the next rotation is due a period
   * from now. GENERATED keys only; works in every state (a disabled key is not rotated while disabled).
   */
  async setPolicy(keyId: string, days: number, viewerId?: string): Promise<Key> {
    const r = this.opts.records.record(keyId);
    const rotation = this.rotationFor(days);
    const check = (x: KeyRecord) => {
      if (x.origin !== "GENERATED") throw precondition(`key ${x.id} is ${x.origin}: only keys the HSM generated rotate automatically`);
    };
    check(r);
    const { record } = await updateRecord(this.opts, r.id, (cur) => {
      check(cur);
      if (rotation) return { ...cur, rotation };
      if (!cur.rotation) return undefined;
      const { rotation: _, ...rest } = cur;
      return rest;
    });
    return toApiKey(record, viewerId);
  }

  /**
   * Makes a version in the device under a transient id, then commits it as version N+1 (the
   * primary) if `wanted(current record)` still holds, with `extra` fields. The transient objects are
   * destroyed unless the version won and lives only in this device (then renamed to `K.vN`).
   */
  private async addVersion(r: KeyRecord, wanted: (cur: KeyRecord) => boolean, extra: (cur: KeyRecord) => Partial<KeyRecord>) {
    const { device, factory, records, placement } = this.opts;
    const alg = algorithmOf(r.spec);
    const tmp = randomUUID();
    let kept = false;
    try {
      const made = await factory.makeVersion(
        tmp,
        { spec: r.spec, usages: r.usages, publicOnly: false },
        async (id) => (await device.generate(id, alg, r.usages)).spki,
        0,
        new Date(this.now()).toISOString(),
      );
      const res = await updateRecord(this.opts, r.id, (cur) => {
        if (!wanted(cur)) return undefined;
        const n = Math.max(cur.currentVersion, ...cur.versions.map((v) => v.version)) + 1;
        // The old primary keeps its public key in its own version from now on (spkiOfVersion).
        const versions = cur.versions.map((v) => (v.version === cur.currentVersion && !v.publicKeySpki && cur.publicKeySpki ? { ...v, publicKeySpki: cur.publicKeySpki } : v));
        versions.push({ ...made.version, version: n, ...(made.spki ? { publicKeySpki: made.spki } : {}) });
        return { ...cur, ...extra(cur), versions, currentVersion: n, publicKeySpki: made.spki ?? cur.publicKeySpki };
      });
      if (res.changed) {
        const n = res.record.currentVersion;
        if (made.version.residency === "device") {
          kept = true;
          await device.rename(tmp, deviceIdOf(r.id, n));
          records.noteResident(r.id, n);
        }
        // As a create: answered once cluster.minNodes nodes have applied it (bounded wait).
        if (res.revision !== undefined) await placement.awaitCoverage(r.id, res.revision);
      }
      return res;
    } finally {
      if (!kept) await device.destroy(tmp).catch(() => undefined);
    }
  }
}
