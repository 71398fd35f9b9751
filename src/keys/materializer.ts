/**
 * On-demand materialization of keys into the device within a budget of device objects (DESIGN
 * principle 2): a key is unwrapped from its record's material when it is used, kept while the
 * budget allows, and the least recently used key is destroyed to make room. Concurrent first uses of
 * one key unwrap it once; a key in use is pinned and never evicted; a key that lives only in its
 * device (residency "device") is never evicted. A single node (token objects) and a cluster node
 * (session objects) run the same code.
 *
 * Entries are per key version, by device object id (versions.ts: `K` for version 1, `K.vN` past it):
 * each version is materialized from its own wrapped material and counted, evicted and destroyed on its own.
 */
import { Code, HsmError } from "../errors";
import { KeyNotMaterializedError } from "../pkcs11";
import { type Entry, isLocal, type MaterializerOptions, type MaterializerStats, MIN_OBJECT_BUDGET, objectsOf, type State } from "./materializer-types";
import type { KeyRecord } from "./record";
import { algorithmOf } from "./spec";
import { deviceIdOf, spkiOfVersion, versionOf } from "./versions";

export { DEFAULT_OBJECT_BUDGET, MIN_OBJECT_BUDGET, objectsOf, type MaterializerDevice, type MaterializerOptions, type MaterializerStats } from "./materializer-types";

/** See the module comment. */
export class Materializer {
  /** Key versions by device id, least recently used first (a use moves its entry to the end). */
  private readonly entries = new Map<string, Entry>();
  /** Keys whose objects may be in the device although no entry says so: destroyed before the next load. */
  private readonly dirty = new Set<string>();
  private used = 0;
  /** Objects of evictions and proofs in flight (they will be freed). */
  private freeing = 0;
  private waiters: Array<() => void> = [];
  private readonly background = new Set<Promise<void>>();
  private overdraftLogged = false;
  private readonly counts = { hits: 0, misses: 0, evictions: 0, proofs: 0 };

  constructor(private readonly opts: MaterializerOptions) {
    if (!Number.isInteger(opts.budget) || opts.budget < MIN_OBJECT_BUDGET) throw new Error(`object budget must be an integer >= ${MIN_OBJECT_BUDGET}; got ${opts.budget}`);
  }

  /** Counters and the current residence (see {@link MaterializerStats}). */
  stats(): MaterializerStats {
    return { budget: this.opts.budget, resident: this.used, ...this.counts };
  }

  /** Is the key version (by device id) counted as held by the device (resident or being loaded)? */
  holds(id: string): boolean {
    const e = this.entries.get(id);
    return e !== undefined && e.state !== "evicting";
  }

  /** Resolves when the evictions and proofs started so far are done (tests, and a clean stop). */
  async idle(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background]);
  }

  /**
   * Runs `fn` (a device operation on the key) with the key materialized and pinned. If `fn` finds
   * the key's objects gone (KeyNotMaterializedError: a session recovery took session objects), the
   * key is materialized again, once.
   */
  async use<T>(r: KeyRecord, fn: () => Promise<T>, version = r.currentVersion): Promise<T> {
    if (isLocal(r, version)) return this.useLocal(r, version, fn);
    const id = deviceIdOf(r.id, version);
    for (let retried = false; ; retried = true) {
      const e = await this.acquire(r, version);
      try {
        return await fn();
      } catch (err) {
        if (!(err instanceof KeyNotMaterializedError) || err.keyId !== id || retried) throw err;
        this.opts.log?.(`key ${id} not in the device; materializing it again from its record`);
        this.lost(e);
      } finally {
        this.unpin(e);
      }
    }
  }

  /**
   * Makes the key resident (unpinned). `clean`: whatever the device holds of it is destroyed first
   * and the key unwrapped again, even when it is counted resident (replacing objects an older hsmd
   * made; a half-made key).
   */
  async materialize(r: KeyRecord, clean: boolean, version = r.currentVersion): Promise<void> {
    const id = deviceIdOf(r.id, version);
    if (isLocal(r, version)) {
      throw new HsmError(Code.FailedPrecondition, `key ${id} exists only in the device that generated it (the device cannot wrap ${algorithmOf(r.spec).type} keys) and is missing there`);
    }
    if (clean) {
      const e = this.entries.get(id);
      if (e && e.state !== "resident") await e.settled.catch(() => undefined);
      const now = this.entries.get(id);
      if (now?.state === "resident") this.lost(now);
      this.dirty.add(id);
    }
    this.unpin(await this.acquire(r, version));
  }

  /**
   * Apply-time proof of a new record that carries its material: unwraps it once into the device, so
   * that a bad record is found now rather than at first use. The key stays resident if the budget
   * has room without evicting anything; else it is destroyed at once. Throws what the device threw.
   */
  async prove(r: KeyRecord, version = r.currentVersion): Promise<void> {
    if (isLocal(r, version) || this.entries.has(deviceIdOf(r.id, version))) return;
    this.counts.proofs++;
    if (this.used + objectsOf(r) <= this.opts.budget) {
      // Room without evicting: the proof's objects stay, as a load's would.
      const e = this.newEntry(r, version, "loading");
      this.count(e);
      const settle = this.settle(e);
      try {
        await this.load(r, version);
      } catch (err) {
        e.pins--;
        this.drop(e);
        settle.fail(err);
        throw err;
      }
      e.pins--;
      if (e.forgotten) await this.destroy(e);
      else e.state = "resident";
      settle.ok();
      this.wake();
      return;
    }
    // No room: unwrapped and destroyed at once. The entry makes a use that comes meanwhile wait.
    const e = this.newEntry(r, version, "evicting");
    e.pins = 0;
    this.count(e);
    this.freeing += e.cost;
    const settle = this.settle(e);
    try {
      await this.load(r, version);
      await this.destroy(e);
    } catch (err) {
      this.drop(e);
      throw err;
    } finally {
      this.freeing -= e.cost;
      settle.ok();
      this.wake();
    }
  }

  /**
   * Counts a key the device holds already (made on this node, or found in the token at start) as
   * resident; evicts others in the background if that puts the device over budget.
   */
  noteResident(r: KeyRecord, version = r.currentVersion): void {
    const id = deviceIdOf(r.id, version);
    if (this.entries.has(id)) return;
    const e = this.newEntry(r, version, "resident");
    e.pins = 0;
    this.count(e);
    this.settle(e).ok();
    this.dirty.delete(id);
    this.trim();
  }

  /**
   * A key version (by device id) is gone from its record: the record deleted, or the version
   * trimmed (the caller destroys its objects). It is no longer counted.
   */
  forget(id: string): void {
    this.dirty.delete(id);
    const e = this.entries.get(id);
    if (!e) return;
    if (e.state === "loading") {
      e.forgotten = true;
      return;
    }
    this.drop(e);
  }

  // ---- internals -------------------------------------------------------------------------------

  private newEntry(r: KeyRecord, version: number, state: State): Entry {
    const e: Entry = { id: deviceIdOf(r.id, version), cost: objectsOf(r), local: isLocal(r, version), state, pins: 1, counted: false, forgotten: false, settled: Promise.resolve() };
    this.entries.set(e.id, e);
    return e;
  }

  /** Gives the entry a `settled` promise and the functions that settle it. */
  private settle(e: Entry): { ok: () => void; fail: (err: unknown) => void } {
    let ok!: () => void;
    let fail!: (err: unknown) => void;
    e.settled = new Promise<void>((res, rej) => {
      ok = res;
      fail = rej;
    });
    e.settled.catch(() => undefined);
    return { ok, fail };
  }

  private count(e: Entry): void {
    if (e.counted) return;
    e.counted = true;
    this.used += e.cost;
  }

  /** Removes the entry (if it is still the key's) and its count. */
  private drop(e: Entry): void {
    if (this.entries.get(e.id) === e) this.entries.delete(e.id);
    if (e.counted) {
      e.counted = false;
      this.used -= e.cost;
    }
    this.wake();
  }

  /** The key's objects are gone or suspect: not counted any more, destroyed before the next load. */
  private lost(e: Entry): void {
    if (this.entries.get(e.id) !== e) return;
    this.drop(e);
    this.dirty.add(e.id);
  }

  private unpin(e: Entry): void {
    e.pins--;
    if (e.pins === 0) this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private changed(): Promise<void> {
    return new Promise((res) => this.waiters.push(res));
  }

  /** The key resident and pinned once more: a hit, a wait on its load or eviction, or a load (a miss). */
  private async acquire(r: KeyRecord, version: number): Promise<Entry> {
    const id = deviceIdOf(r.id, version);
    for (;;) {
      const e = this.entries.get(id);
      if (e?.state === "resident") {
        this.counts.hits++;
        this.entries.delete(id);
        this.entries.set(id, e);
        e.pins++;
        return e;
      }
      if (!e) return this.loadEntry(r, version);
      // Single flight: the first use's load is everyone's (its failure too); an eviction is waited out.
      if (e.state === "loading") await e.settled;
      else await e.settled.catch(() => undefined);
    }
  }

  private async loadEntry(r: KeyRecord, version: number): Promise<Entry> {
    const e = this.newEntry(r, version, "loading");
    const settle = this.settle(e);
    this.counts.misses++;
    try {
      await this.reserve(e);
      if (this.dirty.delete(e.id)) await this.opts.device.destroy(e.id);
      await this.load(r, version);
    } catch (err) {
      e.pins--;
      this.drop(e);
      settle.fail(err);
      throw err;
    }
    if (e.forgotten) {
      e.pins--;
      await this.destroy(e);
      const err = new HsmError(Code.NotFound, `key ${e.id} not found (deleted while it was being used, or trimmed)`);
      settle.fail(err);
      throw err;
    }
    e.state = "resident";
    settle.ok();
    return e;
  }

  /** The device work of a load: the public object of a public-only key, else an unwrap of the version's material. */
  private async load(r: KeyRecord, version: number): Promise<void> {
    const id = deviceIdOf(r.id, version);
    const v = versionOf(r, version);
    if (!v) throw new HsmError(Code.NotFound, `key ${r.id} has no version ${version} (trimmed, or never made)`);
    const spki = spkiOfVersion(r, v);
    if (v.residency === "public") {
      await this.opts.device.createPublic(id, spki!, r.usages);
      return;
    }
    const material = await this.opts.material(r, version);
    if (!material) throw new HsmError(Code.NotFound, `key ${id} not found (its record or version is gone from the store)`);
    await this.opts.device.materialize(id, algorithmOf(r.spec), r.usages, material, spki);
  }

  /**
   * Counts the entry's objects once the budget has room, evicting the least recently used keys that
   * are not in use. Waits while keys in use hold the room; goes over the budget (and says so once)
   * only when nothing could ever free it (every resident key lives only in this device).
   */
  private async reserve(e: Entry): Promise<void> {
    const budget = this.opts.budget;
    for (;;) {
      if (this.used + e.cost <= budget) return this.count(e);
      let deficit = this.used + e.cost - budget - this.freeing;
      for (const v of this.entries.values()) {
        if (deficit <= 0) break;
        if (v.state !== "resident" || v.pins > 0 || v.local || !v.counted) continue;
        deficit -= v.cost;
        this.evict(v);
      }
      if (deficit > 0 && this.freeing === 0 && !this.holders(e)) {
        if (!this.overdraftLogged) {
          this.overdraftLogged = true;
          this.opts.log?.(`device.objectBudget ${budget} is taken by keys that live only in this device: keys are materialized over the budget`);
        }
        return this.count(e);
      }
      await this.changed();
    }
  }

  /** Are other keys counted and pinned (they will be evictable once their uses end)? */
  private holders(self: Entry): boolean {
    for (const v of this.entries.values()) if (v !== self && v.counted && !v.local && v.pins > 0) return true;
    return false;
  }

  /** Evicts least recently used keys while the device is over budget (after a note of a resident key). */
  private trim(): void {
    let excess = this.used - this.opts.budget - this.freeing;
    for (const v of this.entries.values()) {
      if (excess <= 0) break;
      if (v.state !== "resident" || v.pins > 0 || v.local || !v.counted) continue;
      excess -= v.cost;
      this.evict(v);
    }
  }

  private evict(e: Entry): void {
    e.state = "evicting";
    this.counts.evictions++;
    this.freeing += e.cost;
    const settle = this.settle(e);
    const p = this.destroy(e).finally(() => {
      this.freeing -= e.cost;
      this.background.delete(p);
      settle.ok();
      this.wake();
    });
    this.background.add(p);
  }

  /** Destroys the entry's objects and removes it; a failed destroy leaves the key marked dirty. */
  private async destroy(e: Entry): Promise<void> {
    try {
      await this.opts.device.destroy(e.id);
    } catch (err) {
      this.dirty.add(e.id);
      this.opts.log?.(`key ${e.id}: destroying its objects failed (${err instanceof Error ? err.message : String(err)}); they are destroyed before its next materialization`);
    } finally {
      this.drop(e);
    }
  }

  /** A key that lives only in this device: nothing to load or evict; its absence is an error with a reason. */
  private async useLocal<T>(r: KeyRecord, version: number, fn: () => Promise<T>): Promise<T> {
    const id = deviceIdOf(r.id, version);
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof KeyNotMaterializedError) || err.keyId !== id) throw err;
      throw new HsmError(Code.FailedPrecondition, `key ${id} exists only in the device that generated it (the device cannot wrap ${algorithmOf(r.spec).type} keys) and is missing there`);
    }
  }
}
