import { addedVersions, decodeRecord, deviceIdOf, mainPart, removedVersions, residencyOf, type KeyRecord, type KeyRecords } from "../keys";
import type { KeyDevice } from "../pkcs11";
import type { StateStore, WatchEvent } from "../store";
import { APPLY_CONCURRENCY, Slots } from "./slots";
import type { Watermarks } from "./watermark";

/** What the {@link Applier} is built from. */
export interface ApplierOptions {
  store: StateStore;
  device: KeyDevice;
  /** The key service's records (KeyService.records): the applier keeps them current. */
  records: KeyRecords;
  /** In a cluster: where this node publishes the revision it has applied (absent on a single node). */
  watermarks?: Watermarks;
  /** In a cluster: this node's id (keys are session objects). */
  nodeId?: string;
  log?: (msg: string) => void;
}

/**
 * The applier: follows the store's key records in revision order and materializes them into this
 * node's HSM (records written by other nodes, deletes done elsewhere), publishing the revision it
 * has applied as this node's watermark. Device work is bounded (APPLY_CONCURRENCY) and ordered per key.
 */
export class Applier {
  private unwatch: (() => void) | undefined;
  private applyQueue: Promise<void> = Promise.resolve();
  private readonly applyPending: Array<{ revision: number; done: boolean }> = [];
  private readonly applyChains = new Map<string, Promise<void>>();
  private readonly applySlots = new Slots(APPLY_CONCURRENCY);
  /** Highest store revision whose key events the applier has materialized. */
  private appliedKeysRevision = 0;
  /** Keys the applier could not materialize (id → reason), for status. */
  readonly applyFailures = new Map<string, string>();

  constructor(private readonly opts: ApplierOptions) {}

  /** Follows the store from `rev` (the revision the records were loaded at: KeyService.start()). */
  start(rev: number): void {
    const { store, records, device } = this.opts;
    this.appliedKeysRevision = rev;
    this.opts.watermarks?.publish(rev);
    this.unwatch = store.watch("keys/", rev, (ev: WatchEvent) => {
      const id = ev.key.slice("keys/".length);
      if (ev.type === "delete") {
        const prev = records.get(id);
        records.delete(id);
        this.apply(
          ev.revision,
          async () => {
            // Deleted on another node (or here, already done): the objects of every version follow the record.
            if (prev) await records.destroyAll(prev).catch(() => undefined);
            else await device.destroy(id).catch(() => undefined);
            this.applyFailures.delete(id);
          },
          id,
        );
      } else if (ev.value) {
        const r = decodeRecord(ev.value);
        const prev = records.get(id);
        // A record this node made itself is known (without revisions) before its event comes back.
        const created = prev ? (records.createRevision(id) ?? ev.revision) : ev.revision;
        // A rotation elsewhere adds versions (proven like a new record); a trim removes some (their objects go).
        const added = prev ? addedVersions(prev, r) : [];
        const removed = prev ? removedVersions(prev, r) : [];
        records.set(r, { createRevision: created, modRevision: ev.revision });
        const work = !prev ? () => this.applyRecord(r) : added.length || removed.length ? () => this.applyVersions(r, added, removed) : undefined;
        this.apply(ev.revision, work, id);
      }
    });
  }

  /** Stops following the store. */
  stop(): void {
    this.unwatch?.();
  }

  /**
   * Queues one store event's device work. Events of different keys run concurrently (up to
   * APPLY_CONCURRENCY, the device's sessions bound the rest); events of one key run in order.
   * `appliedRevision` advances only past events whose work is done, so it never claims more than
   * the HSM holds.
   */
  private apply(revision: number, work?: () => Promise<void>, keyId?: string): void {
    const entry = { revision, done: false };
    this.applyPending.push(entry);
    const run = async () => {
      if (work) {
        await this.applySlots.acquire();
        try {
          await work();
        } catch (e) {
          this.opts.log?.(`applier: revision ${revision}: ${e instanceof Error ? e.message : String(e)}`);
        } finally {
          this.applySlots.release();
        }
      }
      entry.done = true;
      while (this.applyPending.length && this.applyPending[0]!.done) {
        const r = this.applyPending.shift()!.revision;
        if (r > this.appliedKeysRevision) this.appliedKeysRevision = r;
      }
      // Only key events publish: the node's own watermark row is not one, so it never writes again for it.
      if (this.applyPending.length === 0) this.opts.watermarks?.publish(this.appliedRevision);
      else this.opts.watermarks?.publish(this.appliedKeysRevision);
    };
    const prev = keyId ? this.applyChains.get(keyId) : undefined;
    const p = (prev ?? Promise.resolve()).then(run);
    if (keyId) {
      this.applyChains.set(keyId, p);
      void p.then(() => {
        if (this.applyChains.get(keyId) === p) this.applyChains.delete(keyId);
      });
    }
    this.applyQueue = Promise.all([this.applyQueue, p]).then(() => undefined);
  }

  /**
   * The store revision this node's HSM is materialized up to: the store's own revision when the
   * applier has nothing pending (other records, such as node reports, need no device work), else
   * the revision of the last key event done.
   */
  get appliedRevision(): number {
    return this.applyPending.length === 0 ? Math.max(this.appliedKeysRevision, this.opts.store.revision()) : this.appliedKeysRevision;
  }

  /** Resolves when every store event seen so far has been applied to the device. */
  async applied(): Promise<void> {
    await this.applyQueue;
  }

  /** Destroys every key object this node's records name (a node removed from its cluster). */
  async destroyAll(): Promise<void> {
    for (const r of this.opts.records.values()) await this.opts.records.destroyAll(r).catch(() => undefined);
  }

  /** A changed record's versions: the trimmed ones' objects destroyed, the added ones proven (see {@link applyRecord}). */
  private async applyVersions(r: KeyRecord, added: number[], removed: number[]): Promise<void> {
    const { records } = this.opts;
    await records.destroyVersions(r.id, removed);
    for (const n of added) await this.applyRecord(r, n);
  }

  /**
   * Proves a record written elsewhere (unless the device has it): the event's record, which carries
   * its material, is unwrapped once into the device (kept if the object budget has room), so that a
   * bad record is found now, not at its first use. One that cannot be is reported in applyFailures
   * (status) and logged; the applied revision, and with it the watermark, still advances past it: the
   * node holds every other key, and the key answers its error wherever this node is asked to use it.
   */
  private async applyRecord(r: KeyRecord, version = r.currentVersion): Promise<void> {
    const { records, device } = this.opts;
    if (!records.has(r.id)) return; // deleted again meanwhile
    const part = mainPart(r);
    const dev = deviceIdOf(r.id, version);
    // In a cluster, keys are session objects of this process: one it has no handle for is not in
    // the device, and no search (linear in SoftHSM2) is needed to know it.
    const clustered = !!this.opts.nodeId;
    const present = clustered ? device.cached(dev, part) : await device.has(dev, part);
    if (!present) {
      if (residencyOf(r, version) === "device") return; // lives only in the HSM that generated it
      try {
        await records.prove(r, version);
        this.applyFailures.delete(r.id);
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        this.applyFailures.set(r.id, msg);
        throw new Error(`key ${dev} cannot be materialized on this node (the watermark moves past it; status counts it in applyFailures): ${msg}`);
      }
    }
  }
}
