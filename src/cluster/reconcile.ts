import { decodeRecord, deviceIdOf, parseDeviceId, partsOf, recordKey, residencyOf, versionOf, type KeyRecord, type KeyRecords } from "../keys";
import type { KeyDevice, Part } from "../pkcs11";
import type { StateStore } from "../store";
import { APPLY_CONCURRENCY } from "./slots";

/** What the start-up reconcile did (see {@link reconcile}). */
export interface ReconcileResult {
  /** records whose missing objects were unwrapped from their material */
  materialized: number;
  /** keys whose wrappable objects (an older hsmd's) were replaced by unextractable ones */
  upgraded: number;
  /** keys whose quarantined objects got their id back (their record is back) */
  restored: number;
  /** keys no record explains, quarantined by this start */
  quarantined: number;
  /** keys destroyed because the operator asked (--purge-orphans) */
  purged: number;
  /** keys in quarantine after this start (those just quarantined included) */
  inQuarantine: number;
  /** records that could not be materialized */
  lost: string[];
}

/** What {@link reconcile} works on. */
export interface ReconcileContext {
  device: KeyDevice;
  store: StateStore;
  /** The key service's records (KeyService.records), loaded. */
  records: KeyRecords;
  /** CKA_ID of the domain key (never an orphan). */
  domainKeyId: string;
  /** In a cluster: this node's id. */
  nodeId?: string;
  log?: (msg: string) => void;
}

/**
 * Checks the records against the device's token objects at start (in a cluster, where keys are
 * session objects, the catch-up of ./catch-up.ts proves the records instead):
 * - a record whose objects are missing gets its quarantined objects back if the token holds them
 *   (a store log with the record was restored), else is materialized from its wrapped material;
 * - a record whose secret or private object could be wrapped (written by an hsmd before keys were
 *   sealed: CKA_EXTRACTABLE, or no CKA_WRAP_WITH_TRUSTED) is re-materialized from its record, or,
 *   living only in this device, made unextractable in place;
 * - objects that no record explains are never destroyed unless the operator asks
 *   (`purgeOrphans`, `--purge-orphans`): they are quarantined (see Device.quarantine). A restored
 *   older store log, a lost one followed by `hsmd init`, a create or delete a crash interrupted:
 *   hsmd cannot tell these apart, and only the first two cost keys if it guessed wrong.
 */
export async function reconcile(ctx: ReconcileContext, opts: { purgeOrphans?: boolean } = {}): Promise<ReconcileResult> {
  const { device, store, records } = ctx;
  const inv = await device.inventory();
  const present = inv.keys;
  const res: ReconcileResult = { materialized: 0, upgraded: 0, restored: 0, quarantined: 0, purged: 0, inQuarantine: 0, lost: [] };
  // Every version of every record is checked on its own: its objects carry the version's device id
  // (versions.ts: the key id for version 1, `K.vN` past it).
  type Slot = { r: KeyRecord; version: number; dev: string };
  const slots: Slot[] = [];
  for (const r of records.values()) for (const v of r.versions) slots.push({ r, version: v.version, dev: deviceIdOf(r.id, v.version) });
  const has = (s: Slot) => partsOf(s.r).every((p) => present.get(s.dev)?.has(p));
  for (const s of slots) {
    if (has(s) || !inv.quarantined.has(s.dev)) continue;
    await device.restoreQuarantined(s.dev);
    const parts = present.get(s.dev) ?? new Set<Part>();
    for (const p of inv.quarantined.get(s.dev)!) parts.add(p);
    present.set(s.dev, parts);
    inv.quarantined.delete(s.dev);
    res.restored++;
    ctx.log?.(`reconcile: key ${s.dev} restored from quarantine (its record is back)`);
  }
  // The keys the token holds count as resident in the device (the materializer's budget and LRU).
  for (const s of slots) if (has(s)) records.noteResident(s.r.id, s.version);
  const missing = slots.filter((s) => {
    // In a cluster keys are session objects, materialized on demand and proven by the catch-up
    // (./catch-up.ts); a key that lives only in the HSM that generated it is not missing elsewhere.
    if (ctx.nodeId) return false;
    return !has(s);
  });
  const weak = slots.filter((s) => inv.weak.has(s.dev) && has(s));
  for (const s of weak.filter((x) => residencyOf(x.r, x.version) === "device")) {
    await device.makeUnextractable(s.dev);
    res.upgraded++;
  }
  // Several at a time: the device's session pool bounds the real concurrency.
  const work = [...missing.map((s) => ({ s, upgrade: false })), ...weak.filter((x) => residencyOf(x.r, x.version) !== "device").map((s) => ({ s, upgrade: true }))];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(APPLY_CONCURRENCY, work.length) }, async () => {
      while (next < work.length) {
        const { s, upgrade } = work[next++]!;
        try {
          // Nothing of it in the listing: nothing to clean up first (and no per-key search).
          await records.materialize(s.r, upgrade || present.has(s.dev), s.version);
          if (upgrade) {
            res.upgraded++;
            continue;
          }
          res.materialized++;
        } catch (e) {
          res.lost.push(s.dev);
          ctx.log?.(`reconcile: key ${s.dev} cannot be ${upgrade ? "re-materialized with unextractable objects" : "materialized"}: ${(e as Error).message}`);
        }
      }
    }),
  );
  // An object is explained when its record has the version its device id names.
  const explained = (r: KeyRecord | undefined, version: number) => r !== undefined && versionOf(r, version) !== undefined;
  for (const id of present.keys()) {
    // hsmd's own objects (domain, import, transport keys) are named hsmd-…; records are UUIDs.
    if (id.startsWith("hsmd-") || id === ctx.domainKeyId) continue;
    const { keyId, version } = parseDeviceId(id);
    if (explained(records.get(keyId), version)) continue;
    // A record may have landed since the listing: check the store, not just the cache.
    const e = await store.get(recordKey(keyId));
    if (e && explained(decodeRecord(e.value), version)) continue;
    if (opts.purgeOrphans) {
      await device.destroy(id);
      res.purged++;
    } else {
      await device.quarantine(id);
      res.quarantined++;
    }
  }
  for (const id of inv.quarantined.keys()) {
    if (opts.purgeOrphans) {
      await device.purgeQuarantined(id);
      res.purged++;
    } else {
      res.inQuarantine++;
    }
  }
  res.inQuarantine += res.quarantined;
  return res;
}
