import { deviceIdOf, lacksMaterial, partsOf, recordKey, residencyOf, type KeyRecord, type KeyRecords } from "../keys";
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
  const has = (r: KeyRecord) => partsOf(r).every((p) => present.get(r.id)?.has(p));
  for (const r of records.values()) {
    if (has(r) || !inv.quarantined.has(r.id)) continue;
    await device.restoreQuarantined(r.id);
    const parts = present.get(r.id) ?? new Set<Part>();
    for (const p of inv.quarantined.get(r.id)!) parts.add(p);
    present.set(r.id, parts);
    inv.quarantined.delete(r.id);
    res.restored++;
    ctx.log?.(`reconcile: key ${r.id} restored from quarantine (its record is back)`);
  }
  // A PENDING_IMPORT key's objects (a crash after its record changed, before they were destroyed) go now (issue 13).
  for (const r of records.values()) {
    if (!lacksMaterial(r) || !present.has(r.id)) continue;
    for (const v of r.versions) await device.destroy(deviceIdOf(r.id, v.version)).catch(() => undefined);
    present.delete(r.id);
  }
  // The keys the token holds count as resident in the device (the materializer's budget and LRU).
  for (const r of records.values()) if (has(r)) records.noteResident(r.id);
  const missing = [...records.values()].filter((r) => {
    // In a cluster keys are session objects, materialized on demand and proven by the catch-up
    // (./catch-up.ts); a key that lives only in the HSM that generated it is not missing elsewhere.
    if (ctx.nodeId) return false;
    // A PENDING_IMPORT key has no material to materialize (issue 13).
    return !has(r) && !lacksMaterial(r);
  });
  const weak = [...records.values()].filter((r) => inv.weak.has(r.id) && has(r));
  for (const r of weak.filter((x) => residencyOf(x) === "device")) {
    await device.makeUnextractable(r.id);
    res.upgraded++;
  }
  // Several at a time: the device's session pool bounds the real concurrency.
  const work = [...missing.map((r) => ({ r, upgrade: false })), ...weak.filter((r) => residencyOf(r) !== "device").map((r) => ({ r, upgrade: true }))];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(APPLY_CONCURRENCY, work.length) }, async () => {
      while (next < work.length) {
        const { r, upgrade } = work[next++]!;
        try {
          // Nothing of it in the listing: nothing to clean up first (and no per-key search).
          await records.materialize(r, upgrade || present.has(r.id));
          if (upgrade) {
            res.upgraded++;
            continue;
          }
          res.materialized++;
        } catch (e) {
          res.lost.push(r.id);
          ctx.log?.(`reconcile: key ${r.id} cannot be ${upgrade ? "re-materialized with unextractable objects" : "materialized"}: ${(e as Error).message}`);
        }
      }
    }),
  );
  for (const id of present.keys()) {
    // hsmd's own objects (domain, import, transport keys) are named hsmd-…; records are UUIDs.
    if (id.startsWith("hsmd-") || id === ctx.domainKeyId || records.has(id)) continue;
    // A record may have landed since the listing: check the store, not just the cache.
    if (await store.get(recordKey(id))) continue;
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
