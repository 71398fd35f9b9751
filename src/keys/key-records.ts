/**
 * This node's copy of the key records, without their wrapped material, and the door to their
 * materialization (src/keys/materializer.ts): the applier, the start-up reconcile and on-demand use
 * all go through it, so that they never race on one key.
 */
import { notFound, precondition } from "../errors";
import type { KeyDevice, Part, Usage, WrappedMaterial } from "../pkcs11";
import type { StateStore } from "../store";
import { MaterialCache } from "./material-cache";
import { DEFAULT_OBJECT_BUDGET, Materializer, type MaterializerStats } from "./materializer";
import { OwnerIndex } from "./owner-index";
import type { KeyPlacement } from "./placement";
import { currentVersionOf, decodeRecord, recordKey, withoutMaterial, type KeyRecord } from "./record";
import { algorithmOf, isSecret } from "./spec";
import { ID_RE, checkKeyId } from "./validation";
import { deviceIdOf, versionOf } from "./versions";

/** Records read per page by {@link KeyRecords.load}. */
const LOAD_PAGE = 1000;

/** What {@link KeyRecords} needs: the device it materializes into and the store it reads. */
export interface KeyRecordsOptions {
  device: KeyDevice;
  store: StateStore;
  placement: KeyPlacement;
  /** Device objects kept for keys (config device.objectBudget). @default DEFAULT_OBJECT_BUDGET */
  objectBudget?: number;
  /** Bytes of wrapped material cached in memory. @default DEFAULT_MATERIAL_CACHE_BYTES */
  materialCacheBytes?: number;
  log?: (msg: string) => void;
}

/** A record and the store revisions that created and last changed it. */
interface Slot {
  record: KeyRecord;
  createRevision?: number;
  modRevision?: number;
}

/** The device parts a record's key consists of (a public-only key: its public object). */
export const partsOf = (r: KeyRecord): Part[] => (r.publicOnly ? ["public"] : isSecret(algorithmOf(r.spec)) ? ["secret"] : ["private", "public"]);
/** The part a record's key is looked up by in the device (the secret or private one). */
export const mainPart = (r: KeyRecord): Part => (r.publicOnly ? "public" : isSecret(algorithmOf(r.spec)) ? "secret" : "private");
/** Where a record's version (default: the primary) lives: wrapped in the record, only in its device, or public. */
export const residencyOf = (r: KeyRecord, version = r.currentVersion) => versionOf(r, version)?.residency;

/**
 * This node's copy of the key records (filled at start, kept current by the cluster applier): what
 * routing and authorization need, without wrapped material, which is read from the store (through a
 * bounded cache) when a key is materialized. Keys are materialized on demand within the device's
 * object budget (see Materializer).
 */
export class KeyRecords {
  private readonly map = new Map<string, Slot>();
  private readonly cache: MaterialCache;
  private readonly materializer: Materializer;
  /** The listing index by owner and viewer, kept current by {@link set} and {@link delete}. */
  readonly owners = new OwnerIndex();

  constructor(private readonly opts: KeyRecordsOptions) {
    this.cache = new MaterialCache(opts.materialCacheBytes);
    this.materializer = new Materializer({ device: opts.device, budget: opts.objectBudget ?? DEFAULT_OBJECT_BUDGET, material: (r, v) => this.material(r, v), log: opts.log });
  }

  get size(): number {
    return this.map.size;
  }
  get(id: string): KeyRecord | undefined {
    return this.map.get(id)?.record;
  }
  has(id: string): boolean {
    return this.map.has(id);
  }

  /**
   * Keeps a record (its material stripped: a record that carries it seeds the material cache) with
   * the store revisions that created and last changed it. `madeHere`: the create path, after sealing
   * the key into the device, says so; the key then counts as resident if this process holds a handle
   * for it (no device call otherwise: loads, watch events and fresh reads never touch the device).
   * Versions the previous copy had and `r` has not (trimmed) are forgotten (their cached material,
   * their count in the device); the caller destroys their objects (see {@link removedVersions}).
   */
  set(r: KeyRecord, revs?: { createRevision: number; modRevision: number }, madeHere = false): void {
    const v = currentVersionOf(r);
    if (v?.material) this.cache.put(deviceIdOf(r.id, v.version), v.version, v.material);
    const prev = this.map.get(r.id);
    if (prev) {
      this.owners.remove(prev.record);
      for (const n of removedVersions(prev.record, r)) this.forgetVersion(r.id, n);
    }
    this.owners.add(r);
    this.map.set(r.id, { record: withoutMaterial(r), createRevision: revs?.createRevision ?? prev?.createRevision, modRevision: revs?.modRevision ?? prev?.modRevision });
    const dev = deviceIdOf(r.id, r.currentVersion);
    if (madeHere && !this.materializer.holds(dev) && this.opts.device.cached(dev, mainPart(r))) this.materializer.noteResident(r);
  }

  /** Forgets a record (deleted): its cached material, and its count in the device (the caller destroys its objects: {@link destroyAll}). */
  delete(id: string): void {
    const prev = this.map.get(id);
    if (prev) this.owners.remove(prev.record);
    this.map.delete(id);
    for (const n of prev ? prev.record.versions.map((v) => v.version) : [1]) this.forgetVersion(id, n);
  }

  private forgetVersion(id: string, version: number): void {
    const dev = deviceIdOf(id, version);
    this.cache.delete(dev);
    this.materializer.forget(dev);
  }

  /**
   * Destroys the device objects of every version of a key (DeleteKey, scheduled destruction, a
   * removed node). Call it after the record is gone (durably) and {@link delete}d: a crash between
   * leaves objects no record explains, which the next start quarantines.
   */
  async destroyAll(r: KeyRecord): Promise<void> {
    for (const v of r.versions) await this.opts.device.destroy(deviceIdOf(r.id, v.version));
  }

  /** Destroys the device objects of versions (by number) of a key (trimmed versions: the record no longer has them). */
  async destroyVersions(keyId: string, versions: number[]): Promise<void> {
    for (const n of versions) await this.opts.device.destroy(deviceIdOf(keyId, n));
  }
  *values(): IterableIterator<KeyRecord> {
    for (const s of this.map.values()) yield s.record;
  }
  ids(): IterableIterator<string> {
    return this.map.keys();
  }

  /** The store revision that created the key's record, when known. */
  createRevision(id: string): number | undefined {
    return this.map.get(id)?.createRevision;
  }
  /** The store revision that last changed the key's record, when known. */
  modRevision(id: string): number | undefined {
    return this.map.get(id)?.modRevision;
  }

  /** Loads every record from the store, a page at a time; answers the store revision read before the first page (the applier follows from there). */
  async load(): Promise<number> {
    const rev = this.opts.store.revision();
    let after: string | undefined;
    for (;;) {
      const page = await this.opts.store.list("keys/", { startAfter: after, limit: LOAD_PAGE });
      for (const e of page) this.set(decodeRecord(e.value), e);
      if (page.length < LOAD_PAGE) return rev;
      after = page[page.length - 1]!.key;
    }
  }

  /**
   * The record as the replicated store holds it now: one read straight from it (StateStore.getFresh)
   * whether or not this node knows the key, so that callers can make a miss and a hit cost the same.
   * A record this node did not know yet is applied as the watch would have; a known one is left to
   * the watch (which delivers changes in order). Stores without fresh reads answer the local copy.
   */
  async fresh(id: string): Promise<KeyRecord | undefined> {
    if (!ID_RE.test(id) || !this.opts.store.getFresh) return this.get(id);
    const e = await this.opts.store.getFresh(recordKey(id));
    if (!e) return undefined;
    const r = decodeRecord(e.value);
    if (!this.map.has(id)) this.set(r, e);
    return withoutMaterial(r);
  }

  /**
   * A version's (default: the primary's) wrapped material: the record's own when it carries it, else
   * the cache's, else read from the store (and cached). Undefined for a version with none (public,
   * device-only, or gone).
   */
  async material(r: KeyRecord, version = r.currentVersion): Promise<WrappedMaterial | undefined> {
    const v = versionOf(r, version);
    if (v?.residency !== "wrapped") return undefined;
    if (v.material) return v.material;
    const dev = deviceIdOf(r.id, version);
    const cached = this.cache.get(dev, version);
    if (cached) return cached;
    const e = await this.opts.store.get(recordKey(r.id));
    if (!e) return undefined;
    const m = versionOf(decodeRecord(e.value), version)?.material;
    if (m && this.map.has(r.id)) this.cache.put(dev, version, m);
    return m;
  }

  /** The record of a key id; INVALID_ARGUMENT for a malformed id, NOT_FOUND when none. */
  record(id: string, field = "key_id"): KeyRecord {
    checkKeyId(id, field);
    const r = this.get(id);
    if (!r) throw notFound(`key ${id} not found`);
    return r;
  }

  /** FAILED_PRECONDITION unless the key has usage `u`. */
  needUsage(r: KeyRecord, u: Usage): void {
    if (!r.usages.includes(u)) throw precondition(`key ${r.id} does not allow ${u} (its usages: ${r.usages.join(", ")})`);
  }

  /**
   * Materializes a key from its record (counted in the budget, unpinned); concurrent calls for one
   * key share one run. `clean` first destroys whatever parts of it the device holds (a half-made
   * key, objects an older hsmd made) and unwraps it again; skipped when none can exist.
   */
  materialize(r: KeyRecord, clean = true, version = r.currentVersion): Promise<void> {
    return this.materializer.materialize(r, clean, version);
  }

  /**
   * Apply-time proof of a record that carries its material (a watch event's): unwrapped once into
   * the device, kept if the budget has room without evicting, else destroyed at once. Throws
   * (HsmError) when the record cannot be materialized.
   */
  prove(r: KeyRecord, version = r.currentVersion): Promise<void> {
    const v = versionOf(r, version);
    if (v?.material) this.cache.put(deviceIdOf(r.id, version), version, v.material);
    return this.materializer.prove(r, version);
  }

  /** Counts a key version (default: the primary) the device holds already (found in the token at start) as resident. */
  noteResident(id: string, version?: number): void {
    const r = this.get(id);
    if (r) this.materializer.noteResident(r, version ?? r.currentVersion);
  }

  /** Materialization counters (for /metrics): budget, resident objects, hits, misses, evictions, proofs. */
  stats(): MaterializerStats {
    return this.materializer.stats();
  }

  /** Resolves when the evictions and proofs in flight are done. */
  settled(): Promise<void> {
    return this.materializer.idle();
  }

  /** UNAVAILABLE (transient) until the key is usable on this node (KeyPlacement: enough nodes hold it). */
  checkUsable(r: KeyRecord): Promise<void> {
    return this.opts.placement.checkUsable(r.id, this.createRevision(r.id));
  }

  /**
   * Runs a device operation on a version of a key (default: the primary) with it materialized (on
   * demand, within the budget) and pinned; materialized again once if the device lost it meanwhile.
   */
  async withKey<T>(r: KeyRecord, fn: (deviceId: string) => Promise<T>, version = r.currentVersion): Promise<T> {
    await this.checkUsable(r);
    if (!versionOf(r, version)) throw notFound(`key ${r.id} has no version ${version} (trimmed, or never made)`);
    const id = deviceIdOf(r.id, version);
    return this.materializer.use(r, () => fn(id), version);
  }
}

/** Version numbers `prev` has and `next` has not (trimmed between the two copies of a record). */
export function removedVersions(prev: KeyRecord, next: KeyRecord): number[] {
  return prev.versions.filter((v) => !versionOf(next, v.version)).map((v) => v.version);
}

/** Version numbers `next` has and `prev` has not (added by a rotation between the two copies). */
export function addedVersions(prev: KeyRecord, next: KeyRecord): number[] {
  return next.versions.filter((v) => !versionOf(prev, v.version)).map((v) => v.version);
}
