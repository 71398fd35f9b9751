import { Code, HsmError, notFound, precondition } from "../errors";
import { KeyNotMaterializedError, type KeyDevice, type Part, type Usage } from "../pkcs11";
import type { StateStore } from "../store";
import type { KeyPlacement } from "./placement";
import { decodeRecord, recordKey, type KeyRecord } from "./record";
import { algorithmOf, isSecret } from "./spec";
import { ID_RE, checkKeyId } from "./validation";

/** What {@link KeyRecords} needs: the device it materializes into and the store it reads. */
export interface KeyRecordsOptions {
  device: KeyDevice;
  store: StateStore;
  placement: KeyPlacement;
  log?: (msg: string) => void;
}

/** The device parts a record's key consists of (a public-only key: its public object). */
export const partsOf = (r: KeyRecord): Part[] => (r.publicOnly ? ["public"] : isSecret(algorithmOf(r.spec)) ? ["secret"] : ["private", "public"]);
/** The part a record's key is looked up by in the device (the secret or private one). */
export const mainPart = (r: KeyRecord): Part => (r.publicOnly ? "public" : isSecret(algorithmOf(r.spec)) ? "secret" : "private");
/** Where a record's current version lives: wrapped in the record, only in its device, or public. */
export const residencyOf = (r: KeyRecord) => r.versions.find((v) => v.version === r.currentVersion)?.residency;

/**
 * This node's copy of the key records (filled at start, kept current by the cluster applier) and
 * their materialization into the device: the one place a record becomes HSM objects, shared by
 * on-demand use, the applier and the start-up reconcile, so that they never race on one key.
 */
export class KeyRecords {
  private readonly map = new Map<string, KeyRecord>();
  /** Materializations in flight, so that the applier and an on-demand use never race on one key. */
  private readonly materializing = new Map<string, Promise<void>>();

  constructor(private readonly opts: KeyRecordsOptions) {}

  get size(): number {
    return this.map.size;
  }
  get(id: string): KeyRecord | undefined {
    return this.map.get(id);
  }
  has(id: string): boolean {
    return this.map.has(id);
  }
  set(r: KeyRecord): void {
    this.map.set(r.id, r);
  }
  delete(id: string): void {
    this.map.delete(id);
  }
  values(): IterableIterator<KeyRecord> {
    return this.map.values();
  }
  ids(): IterableIterator<string> {
    return this.map.keys();
  }

  /** Loads every record from the store; answers the store revision they were read at. */
  async load(): Promise<number> {
    const rev = this.opts.store.revision();
    for (const e of await this.opts.store.list("keys/")) this.set(decodeRecord(e.value));
    return rev;
  }

  /**
   * The record as the replicated store holds it now: one read straight from it (StateStore.getFresh)
   * whether or not this node knows the key, so that callers can make a miss and a hit cost the same.
   * A record this node did not know yet is applied as the watch would have; a known one is left to
   * the watch (which delivers changes in order). Stores without fresh reads answer the local copy.
   */
  async fresh(id: string): Promise<KeyRecord | undefined> {
    if (!ID_RE.test(id) || !this.opts.store.getFresh) return this.map.get(id);
    const e = await this.opts.store.getFresh(recordKey(id));
    if (!e) return undefined;
    const r = decodeRecord(e.value);
    if (!this.map.has(id)) this.map.set(id, r);
    return r;
  }

  /** The record of a key id; INVALID_ARGUMENT for a malformed id, NOT_FOUND when none. */
  record(id: string, field = "key_id"): KeyRecord {
    checkKeyId(id, field);
    const r = this.map.get(id);
    if (!r) throw notFound(`key ${id} not found`);
    return r;
  }

  /** FAILED_PRECONDITION unless the key has usage `u`. */
  needUsage(r: KeyRecord, u: Usage): void {
    if (!r.usages.includes(u)) throw precondition(`key ${r.id} does not allow ${u} (its usages: ${r.usages.join(", ")})`);
  }

  /**
   * Materializes a key from its record; concurrent calls for one key share one run. `clean` first
   * destroys whatever parts of it the device holds (a half-made key); skipped when none can exist.
   */
  materialize(r: KeyRecord, clean = true): Promise<void> {
    const running = this.materializing.get(r.id);
    if (running) return running;
    const p = this.materializeNow(r, clean).finally(() => this.materializing.delete(r.id));
    this.materializing.set(r.id, p);
    return p;
  }

  private async materializeNow(r: KeyRecord, clean: boolean): Promise<void> {
    const device = this.opts.device;
    const alg = algorithmOf(r.spec);
    const v = r.versions.find((x) => x.version === r.currentVersion)!;
    if (clean) await device.destroy(r.id);
    if (v.residency === "public") {
      await device.createPublic(r.id, r.publicKeySpki!, r.usages);
      return;
    }
    if (v.residency === "device" || !v.material) {
      throw new HsmError(Code.FailedPrecondition, `key ${r.id} exists only in the device that generated it (the device cannot wrap ${alg.type} keys) and is missing there`);
    }
    await device.materialize(r.id, alg, r.usages, v.material, r.publicKeySpki);
  }

  /** Runs a device operation on a key, materializing it from its record once if the device lacks it. */
  async withKey<T>(r: KeyRecord, fn: () => Promise<T>): Promise<T> {
    await this.opts.placement.checkUsable(r.id, undefined);
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof KeyNotMaterializedError)) throw e;
      this.opts.log?.(`key ${r.id} not in the device; materializing from its record`);
      await this.materialize(r);
      return fn();
    }
  }
}
