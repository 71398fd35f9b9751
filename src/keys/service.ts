import { createPublicKey, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { Code, HsmError, exhausted, invalid, notFound, precondition } from "../errors";
import {
  KeyOrigin,
  KeySpec,
  PublicKeyFormat,
  type DeleteKeyRequest,
  type GenerateKeyRequest,
  type GetImportParametersResponse,
  type GetKeyRequest,
  type GetPublicKeyRequest,
  type GetPublicKeyResponse,
  type ImportKeyRequest,
  type ImportPublicKeyRequest,
  type Key,
  type ListKeysRequest,
  type ListKeysResponse,
} from "../gen/hsm/v1/keys";
import {
  EncryptionAlgorithm,
  MessageType,
  SignatureFormat,
  SigningAlgorithm,
  WrapAlgorithm,
  type DecryptDataKeyRequest,
  type DecryptDataKeyResponse,
  type GenerateDataKeyRequest,
  type GenerateDataKeyResponse,
  type DecryptRequest,
  type DecryptResponse,
  type DeriveKeyRequest,
  type EncryptRequest,
  type EncryptResponse,
  type GenerateRandomRequest,
  type GenerateRandomResponse,
  type ItemError,
  type SignRequest,
  type SignResponse,
  type UnwrapKeyRequest,
  type VerifyRequest,
  type VerifyResponse,
  type WrapKeyRequest,
  type WrapKeyResponse,
} from "../gen/hsm/v1/crypto";
import { CURVE_BYTES, Device, KeyNotMaterializedError, partsFromSpki, type KeyAlgorithm, type Part, type SignSpec, type Usage, type WrapSpec } from "../pkcs11";
import type { StateStore, WatchEvent } from "../store";
import { decodeRecord, encodeRecord, recordKey, requestKey, toApiKey, type KeyRecord, type KeyVersion, type UserRef } from "./record";
import { HASH_LEN, algorithmOf, cipherFor, isSecret, macLengthFor, oaepLabelFor, resolveUsages, signFor, specOf, wrapFor } from "./spec";
import { derToRaw, rawToDer } from "./signature";
import { ClusterImportKey } from "./import-key";
// lane G moved the status mapping out of errors.ts; lane K's batch mapper (grpc/map/crypto.ts) takes this over.
import { grpcStatusOf } from "../grpc/status";

/** Limits enforced at the edge of every call (named in configuration). */
export interface KeyLimits {
  maxPayloadBytes: number;
  maxBatchItems: number;
  maxLabelLength: number;
  maxRandomBytes: number;
  maxPageSize: number;
  maxRequestIdLength: number;
  maxOaepLabelBytes: number;
}

export interface KeyServiceOptions {
  device: Device;
  store: StateStore;
  limits: KeyLimits;
  /** CKA_ID of the domain key in the device. */
  domainKeyId: string;
  log?: (msg: string) => void;
  /**
   * In a cluster: this node's id. The key service then records which nodes hold each key
   * (`coverage/<key>/<node>`, like CloudHSM's cluster coverage) as its applier materializes records
   * written by other nodes.
   */
  nodeId?: string;
  /** A new key may be used once this many nodes hold it. @default 1 (once committed) */
  minNodes?: number;
}

/** What the start-up reconcile did (see KeyService.reconcile). */
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

/** Device operations the applier and reconcile run at once. */
const APPLY_CONCURRENCY = 8;

/** A counting semaphore. */
class Slots {
  private waiting: Array<() => void> = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const w = this.waiting.shift();
    if (w) w();
    else this.free++;
  }
}

/** Coverage entries written in one store txn (etcd allows 128 operations). */
const COVERAGE_BATCH = 100;

/** Store prefix of coverage entries: `coverage/<key id>/<node id>`. */
export const COVERAGE_PREFIX = "coverage/";
const coverageKey = (id: string, node: string) => `${COVERAGE_PREFIX}${id}/${node}`;
/** How long a create waits for its key to reach `minNodes` nodes before answering. */
const COVERAGE_WAIT_MS = 10_000;

const LABEL_RE = /^[\p{L}\p{N} ._:/@+=-]+$/u;
const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Key management and crypto, transport-free. Every key is a record in the state store (the source of
 * truth); the device holds its materialization. A create is acknowledged only after the store made
 * the record durable; a failure at any step removes what the step before created.
 */
export class KeyService {
  private readonly records = new Map<string, KeyRecord>();
  private readonly device: Device;
  private readonly store: StateStore;
  private readonly limits: KeyLimits;
  private unwatch: (() => void) | undefined;
  /** The applier: store events in revision order, their device work bounded and ordered per key. */
  private applyQueue: Promise<void> = Promise.resolve();
  private readonly applyPending: Array<{ revision: number; done: boolean }> = [];
  private readonly applyChains = new Map<string, Promise<void>>();
  private readonly applySlots = new Slots(APPLY_CONCURRENCY);
  /** Highest store revision whose key events the applier has materialized. */
  private appliedKeysRevision = 0;
  /** Keys the applier could not materialize (id → reason), for status. */
  readonly applyFailures = new Map<string, string>();
  /** Materializations in flight, so that the applier and an on-demand use never race on one key. */
  private readonly materializing = new Map<string, Promise<void>>();
  private coverQueue: Array<{ id: string; at: string; done: () => void }> = [];
  private coverTimer: NodeJS.Timeout | undefined;
  /** Keys known to be held by at least minNodes nodes. */
  private readonly usable = new Set<string>();

  /** The BYOK import key, one for the whole cluster (a record, materialized on first use). */
  private readonly importKeys: ClusterImportKey;

  constructor(private readonly opts: KeyServiceOptions) {
    this.device = opts.device;
    this.store = opts.store;
    this.limits = opts.limits;
    this.importKeys = new ClusterImportKey({ device: opts.device, store: opts.store, domainKeyId: opts.domainKeyId, nodeId: opts.nodeId, log: opts.log });
  }

  /** Loads every record, then follows the store so records written elsewhere show up. */
  async start(): Promise<void> {
    const rev = this.store.revision();
    for (const e of await this.store.list("keys/")) {
      const r = decodeRecord(e.value);
      this.records.set(r.id, r);
    }
    this.appliedKeysRevision = rev;
    this.unwatch = this.store.watch("keys/", rev, (ev: WatchEvent) => {
      const id = ev.key.slice("keys/".length);
      if (ev.type === "delete") {
        this.records.delete(id);
        this.usable.delete(id);
        this.apply(
          ev.revision,
          async () => {
            // Deleted on another node (or here, already done): the objects follow the record.
            await this.device.destroy(id).catch(() => undefined);
            this.applyFailures.delete(id);
          },
          id,
        );
      } else if (ev.value) {
        const r = decodeRecord(ev.value);
        const isNew = !this.records.has(id);
        this.records.set(id, r);
        this.apply(ev.revision, isNew ? () => this.applyRecord(r) : undefined, id);
      }
    });
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
    return this.applyPending.length === 0 ? Math.max(this.appliedKeysRevision, this.store.revision()) : this.appliedKeysRevision;
  }

  /** Destroys every key object this service put in the device (a node removed from its cluster). */
  async destroyAll(): Promise<void> {
    for (const id of this.records.keys()) await this.device.destroy(id).catch(() => undefined);
  }

  /** Resolves when every store event seen so far has been applied to the device. */
  async applied(): Promise<void> {
    await this.applyQueue;
  }

  /** Materializes a record written elsewhere (unless the device has it) and records this node's coverage. */
  private async applyRecord(r: KeyRecord): Promise<void> {
    if (!this.records.has(r.id)) return; // deleted again meanwhile
    const part: Part = r.publicOnly ? "public" : isSecret(algorithmOf(r.spec)) ? "secret" : "private";
    // In a cluster, keys are session objects of this process: one it has no handle for is not in
    // the device, and no search (linear in SoftHSM2) is needed to know it.
    const clustered = !!this.opts.nodeId;
    const present = clustered ? this.device.cached(r.id, part) : await this.device.has(r.id, part);
    if (!present) {
      const v = r.versions.find((x) => x.version === r.currentVersion);
      if (v?.residency === "device") return; // lives only in the HSM that generated it
      try {
        await this.materialize(r, !clustered);
        this.applyFailures.delete(r.id);
      } catch (e) {
        this.applyFailures.set(r.id, e instanceof Error ? e.message : String(e));
        throw e;
      }
    }
    const node = this.opts.nodeId;
    if (node && !(await this.store.get(coverageKey(r.id, node))) && this.records.has(r.id)) await this.cover(r.id);
  }

  /**
   * Records that this node holds a key. Entries are written in batches (one store txn for up to
   * COVERAGE_BATCH of them, every few milliseconds) rather than one write each: with several nodes
   * each materializing every key, per-key writes would multiply the cluster's write load.
   */
  private cover(id: string): Promise<void> {
    return new Promise((resolve) => {
      this.coverQueue.push({ id, at: new Date().toISOString(), done: resolve });
      this.coverTimer ??= setTimeout(() => void this.flushCoverage(), 5);
    });
  }

  private async flushCoverage(): Promise<void> {
    this.coverTimer = undefined;
    while (this.coverQueue.length) {
      const batch = this.coverQueue.splice(0, COVERAGE_BATCH);
      const ops = batch.filter((b) => this.records.has(b.id)).map((b) => ({ type: "put" as const, key: coverageKey(b.id, this.opts.nodeId!), value: Buffer.from(b.at) }));
      try {
        if (ops.length) await this.store.txn([], ops);
      } catch (e) {
        this.opts.log?.(`coverage: ${ops.length} entries not recorded: ${e instanceof Error ? e.message : String(e)}`);
      }
      for (const b of batch) b.done();
    }
  }

  /** Nodes that hold a key (cluster coverage). */
  async coverage(id: string): Promise<string[]> {
    return (await this.store.list(`${COVERAGE_PREFIX}${id}/`)).map((e) => e.key.slice(`${COVERAGE_PREFIX}${id}/`.length));
  }

  /**
   * With minNodes > 1: UNAVAILABLE until the key is held by enough nodes (a retry soon succeeds);
   * once it is, remembered.
   */
  private async checkUsable(r: KeyRecord): Promise<void> {
    const min = this.opts.minNodes ?? 1;
    if (min <= 1 || this.usable.has(r.id)) return;
    const held = (await this.store.count(`${COVERAGE_PREFIX}${r.id}/`)) || 0;
    if (held < min) throw new HsmError(Code.Unavailable, `key ${r.id} is held by ${held} of the ${min} nodes it needs before use (cluster.minNodes); retry shortly`, { transient: true });
    this.usable.add(r.id);
  }

  /** After a create: waits (bounded) until minNodes nodes hold the key, so that it is usable when the call answers. */
  private async awaitCoverage(id: string): Promise<void> {
    const min = this.opts.minNodes ?? 1;
    if (min <= 1) return;
    const deadline = Date.now() + COVERAGE_WAIT_MS;
    while (Date.now() < deadline) {
      if ((await this.store.count(`${COVERAGE_PREFIX}${id}/`)) >= min) {
        this.usable.add(id);
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this.opts.log?.(`key ${id}: not yet held by ${min} nodes after ${COVERAGE_WAIT_MS} ms`);
  }

  stop(): void {
    this.unwatch?.();
  }

  get keyCount(): number {
    return this.records.size;
  }

  /**
   * Checks every record against the device at start:
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
  async reconcile(opts: { purgeOrphans?: boolean } = {}): Promise<ReconcileResult> {
    const inv = await this.device.inventory();
    const present = inv.keys;
    const res: ReconcileResult = { materialized: 0, upgraded: 0, restored: 0, quarantined: 0, purged: 0, inQuarantine: 0, lost: [] };
    const need = (r: KeyRecord): Part[] => (r.publicOnly ? ["public"] : isSecret(algorithmOf(r.spec)) ? ["secret"] : ["private", "public"]);
    const has = (r: KeyRecord) => need(r).every((p) => present.get(r.id)?.has(p));
    const residency = (r: KeyRecord) => r.versions.find((v) => v.version === r.currentVersion)?.residency;
    for (const r of this.records.values()) {
      if (has(r) || !inv.quarantined.has(r.id)) continue;
      await this.device.restoreQuarantined(r.id);
      const parts = present.get(r.id) ?? new Set<Part>();
      for (const p of inv.quarantined.get(r.id)!) parts.add(p);
      present.set(r.id, parts);
      inv.quarantined.delete(r.id);
      res.restored++;
      this.opts.log?.(`reconcile: key ${r.id} restored from quarantine (its record is back)`);
    }
    const missing = [...this.records.values()].filter((r) => {
      // A key that lives only in the HSM that generated it (EdDSA on SoftHSM2) is not missing elsewhere.
      if (residency(r) === "device" && this.opts.nodeId) return false;
      return !has(r);
    });
    const weak = [...this.records.values()].filter((r) => inv.weak.has(r.id) && has(r));
    for (const r of weak.filter((x) => residency(x) === "device")) {
      await this.device.makeUnextractable(r.id);
      res.upgraded++;
    }
    // Several at a time: the device's session pool bounds the real concurrency.
    const work = [...missing.map((r) => ({ r, upgrade: false })), ...weak.filter((r) => residency(r) !== "device").map((r) => ({ r, upgrade: true }))];
    let next = 0;
    const covering: Promise<void>[] = [];
    await Promise.all(
      Array.from({ length: Math.min(APPLY_CONCURRENCY, work.length) }, async () => {
        while (next < work.length) {
          const { r, upgrade } = work[next++]!;
          try {
            // Nothing of it in the listing: nothing to clean up first (and no per-key search).
            await this.materialize(r, upgrade || present.has(r.id));
            if (upgrade) {
              res.upgraded++;
              continue;
            }
            res.materialized++;
            // Keys written while this node was down reach it here, not through the applier: record its coverage too.
            const node = this.opts.nodeId;
            if (node && !(await this.store.get(coverageKey(r.id, node)))) covering.push(this.cover(r.id));
          } catch (e) {
            res.lost.push(r.id);
            this.opts.log?.(`reconcile: key ${r.id} cannot be ${upgrade ? "re-materialized with unextractable objects" : "materialized"}: ${(e as Error).message}`);
          }
        }
      }),
    );
    await Promise.all(covering);
    for (const id of present.keys()) {
      // hsmd's own objects (domain, import, transport keys) are named hsmd-…; records are UUIDs.
      if (id.startsWith("hsmd-") || id === this.opts.domainKeyId || this.records.has(id)) continue;
      // A record may have landed since the listing: check the store, not just the cache.
      if (await this.store.get(recordKey(id))) continue;
      if (opts.purgeOrphans) {
        await this.device.destroy(id);
        res.purged++;
      } else {
        await this.device.quarantine(id);
        res.quarantined++;
      }
    }
    for (const id of inv.quarantined.keys()) {
      if (opts.purgeOrphans) {
        await this.device.purgeQuarantined(id);
        res.purged++;
      } else {
        res.inQuarantine++;
      }
    }
    res.inQuarantine += res.quarantined;
    return res;
  }

  /**
   * Materializes a key from its record; concurrent calls for one key share one run. `clean` first
   * destroys whatever parts of it the device holds (a half-made key); skipped when none can exist.
   */
  private materialize(r: KeyRecord, clean = true): Promise<void> {
    const running = this.materializing.get(r.id);
    if (running) return running;
    const p = this.materializeNow(r, clean).finally(() => this.materializing.delete(r.id));
    this.materializing.set(r.id, p);
    return p;
  }

  private async materializeNow(r: KeyRecord, clean: boolean): Promise<void> {
    const alg = algorithmOf(r.spec);
    const v = r.versions.find((x) => x.version === r.currentVersion)!;
    if (clean) await this.device.destroy(r.id);
    if (v.residency === "public") {
      await this.device.createPublic(r.id, r.publicKeySpki!, r.usages);
      return;
    }
    if (v.residency === "device" || !v.material) {
      throw new HsmError(Code.FailedPrecondition, `key ${r.id} exists only in the device that generated it (the device cannot wrap ${alg.type} keys) and is missing there`);
    }
    await this.device.materialize(r.id, alg, r.usages, v.material, r.publicKeySpki);
  }

  /** Runs a device operation on a key, materializing it from its record once if the device lacks it. */
  private async withKey<T>(r: KeyRecord, fn: () => Promise<T>): Promise<T> {
    await this.checkUsable(r);
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof KeyNotMaterializedError)) throw e;
      this.opts.log?.(`key ${r.id} not in the device; materializing from its record`);
      await this.materialize(r);
      return fn();
    }
  }

  // ---- validation helpers ----------------------------------------------------------------------

  private label(label: string): string {
    if (!label) throw invalid("label is required");
    if ([...label].length > this.limits.maxLabelLength) throw invalid(`label is longer than ${this.limits.maxLabelLength} characters`);
    if (!LABEL_RE.test(label)) throw invalid("label may hold letters, digits, spaces and . _ : / @ + = - only");
    return label;
  }

  private requestId(rid: string): string | undefined {
    if (!rid) return undefined;
    if (rid.length > this.limits.maxRequestIdLength) throw invalid(`request_id is longer than ${this.limits.maxRequestIdLength} characters`);
    return rid;
  }

  /** A wrap algorithm with the request's oaep_label (RSA_OAEP only, limits.maxOaepLabelBytes). */
  private wrapSpec(alg: WrapAlgorithm, oaepLabel: Uint8Array): WrapSpec {
    const spec = wrapFor(alg);
    const label = oaepLabelFor(oaepLabel, spec.name === "RSA_OAEP", WrapAlgorithm[alg] ?? String(alg), this.limits.maxOaepLabelBytes);
    return spec.name === "RSA_OAEP" ? { ...spec, label } : spec;
  }

  private payload(name: string, b: Buffer, allowEmpty = false): Buffer {
    if (b.length > this.limits.maxPayloadBytes) throw exhausted(`${name} is ${b.length} bytes; the limit is ${this.limits.maxPayloadBytes} (limits.maxPayloadBytes)`);
    if (!allowEmpty && b.length === 0) throw invalid(`${name} is empty`);
    return b;
  }

  private checkBatch<T>(items: T[]): T[] {
    if (items.length === 0) throw invalid("items is empty");
    if (items.length > this.limits.maxBatchItems) throw exhausted(`batch has ${items.length} items; the limit is ${this.limits.maxBatchItems} (limits.maxBatchItems)`);
    return items;
  }

  /** Throws INVALID_ARGUMENT naming `field` unless `id` is a well-formed key id. */
  checkKeyId(id: string, field = "key_id"): void {
    if (!id) throw invalid(`${field} is required`);
    if (!ID_RE.test(id)) throw invalid(`${field} "${id.slice(0, 80)}" is not a key id`);
  }

  /** This node's copy of a key's record, if it has one (no store read). */
  known(id: string): KeyRecord | undefined {
    return this.records.get(id);
  }

  /**
   * The record as the replicated store holds it now: one read straight from it (StateStore.getFresh)
   * whether or not this node knows the key, so that callers can make a miss and a hit cost the same.
   * A record this node did not know yet is applied as the watch would have; a known one is left to
   * the watch (which delivers changes in order). Stores without fresh reads answer the local copy.
   */
  async freshRecord(id: string): Promise<KeyRecord | undefined> {
    if (!ID_RE.test(id) || !this.store.getFresh) return this.records.get(id);
    const e = await this.store.getFresh(recordKey(id));
    if (!e) return undefined;
    const r = decodeRecord(e.value);
    if (!this.records.has(id)) this.records.set(id, r);
    return r;
  }

  /** The record of a key id; NOT_FOUND when none. */
  record(id: string, field = "key_id"): KeyRecord {
    if (!id) throw invalid(`${field} is required`);
    if (!ID_RE.test(id)) throw invalid(`${field} "${id.slice(0, 80)}" is not a key id`);
    const r = this.records.get(id);
    if (!r) throw notFound(`key ${id} not found`);
    return r;
  }

  private needUsage(r: KeyRecord, u: Usage): void {
    if (!r.usages.includes(u)) throw precondition(`key ${r.id} does not allow ${u} (its usages: ${r.usages.join(", ")})`);
  }

  // ---- create paths ----------------------------------------------------------------------------

  /** Returns the key a request id already made, if any. */
  private async existingFor(rid: string | undefined, owner: UserRef | undefined): Promise<KeyRecord | undefined> {
    if (!rid) return undefined;
    const e = await this.store.get(requestKey(scopedRequestId(rid, owner)));
    if (!e) return undefined;
    const id = e.value.toString("utf8");
    const r = this.records.get(id) ?? (await this.store.get(recordKey(id)).then((x: { value: Buffer } | undefined) => (x ? decodeRecord(x.value) : undefined)));
    if (!r) throw new HsmError(Code.AlreadyExists, `request_id was used for key ${id}, which has since been deleted`);
    return r;
  }

  /**
   * Common tail of every create: `make` puts the key in the device; then its material is wrapped for
   * the record and the record committed with its request id. Anything failing undoes the device side.
   */
  private async create(
    base: Omit<KeyRecord, "id" | "createdAt" | "currentVersion" | "versions" | "publicKeySpki"> & { publicKeySpki?: Buffer },
    make: (id: string) => Promise<Buffer | undefined>,
  ): Promise<Key> {
    const existing = await this.existingFor(base.requestId, base.owner);
    if (existing) return toApiKey(existing, base.owner?.userId);
    const id = randomUUID();
    const createdAt = new Date().toISOString();
    try {
      const spki = (await make(id)) ?? base.publicKeySpki;
      const alg = algorithmOf(base.spec);
      if (isSecret(alg)) {
        const len = await this.device.secretLength(id, this.opts.domainKeyId);
        // SoftHSM2 2.6's AES-KWP wrap zero-pads other lengths instead of following RFC 5649, so the
        // record's copy would not round-trip exactly.
        if (len === undefined) throw invalid("secret key material must be a multiple of 8 bytes long: the device cannot wrap other lengths faithfully under the domain key");
        if (alg.type === "aes" && len !== alg.bits / 8) throw invalid(`an AES-${alg.bits} key is ${alg.bits / 8} bytes; the material is ${len}`);
        const min = alg.type === "hmac" ? HASH_LEN[alg.hash] : 0;
        if (len < min) throw invalid(`an HMAC-${(alg as { hash: string }).hash.toUpperCase()} key must be at least ${min} bytes (RFC 2104 §3, and the device's minimum); the material is ${len}`);
      }
      let version: KeyVersion;
      if (base.publicOnly) {
        version = { version: 1, createdAt, residency: "public" };
      } else {
        // The record's copy is wrapped from the new key's transient object, which the device then
        // replaces by the kept one that nothing can wrap (see Device.sealForRecord).
        const material = await this.device.sealForRecord(id, alg, base.usages, this.opts.domainKeyId);
        version = material ? { version: 1, createdAt, residency: "wrapped", material } : { version: 1, createdAt, residency: "device" };
      }
      const rec: KeyRecord = { ...base, id, createdAt, publicKeySpki: spki, currentVersion: 1, versions: [version] };
      const compares = [{ key: recordKey(id), op: "absent" as const }];
      const ops = [{ type: "put" as const, key: recordKey(id), value: encodeRecord(rec) }];
      if (this.opts.nodeId) ops.push({ type: "put", key: coverageKey(id, this.opts.nodeId), value: Buffer.from(createdAt) });
      if (base.requestId) {
        const rk = requestKey(scopedRequestId(base.requestId, base.owner));
        compares.push({ key: rk, op: "absent" });
        ops.push({ type: "put", key: rk, value: Buffer.from(id) });
      }
      const res = await this.store.txn(compares, ops);
      if (!res.succeeded) {
        // Lost a race with the same request id: the other create won; return its key.
        await this.device.destroy(id).catch(() => undefined);
        const other = await this.existingFor(base.requestId, base.owner);
        if (other) return toApiKey(other, base.owner?.userId);
        throw new HsmError(Code.Unavailable, "create conflicted with a concurrent write; retry", { transient: true });
      }
      this.records.set(id, rec);
      await this.awaitCoverage(id);
      return toApiKey(rec, rec.owner?.userId);
    } catch (e) {
      if (!this.records.has(id)) await this.device.destroy(id).catch(() => undefined);
      throw e;
    }
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async generateKey(req: GenerateKeyRequest, owner?: UserRef): Promise<Key> {
    const alg = algorithmOf(req.spec);
    const label = this.label(req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = this.requestId(req.requestId);
    return this.create(
      { label, spec: req.spec, usages, state: "enabled", origin: KeyOrigin.KEY_ORIGIN_GENERATED, publicOnly: false, exportable: req.exportable, requestId, owner },
      async (id) => (await this.device.generate(id, alg, usages)).spki,
    );
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async importPublicKey(req: ImportPublicKeyRequest, owner?: UserRef): Promise<Key> {
    const label = this.label(req.label);
    const requestId = this.requestId(req.requestId);
    const spki = parsePublicKey(req.format, this.payload("public_key", Buffer.from(req.publicKey)));
    const { alg } = partsFromSpki(spki);
    const usages = resolveUsages(alg, req.usages, true);
    return this.create(
      { label, spec: specOf(alg), usages, state: "enabled", origin: KeyOrigin.KEY_ORIGIN_PUBLIC, publicOnly: true, exportable: false, requestId, owner, publicKeySpki: spki },
      async (id) => {
        await this.device.createPublic(id, spki, usages);
        return spki;
      },
    );
  }

  /**
   * The cluster's import key (made once, the same on every node: see ClusterImportKey): its id, its
   * public key and the wrapping algorithm (RSA-OAEP with the record's hash, then AES-KWP).
   */
  async getImportParameters(): Promise<GetImportParametersResponse> {
    const ik = await this.importKeys.get();
    return {
      importKeyId: ik.id,
      publicKeySpki: ik.spki,
      publicKeyPem: String(createPublicKey({ key: ik.spki, format: "der", type: "spki" }).export({ type: "spki", format: "pem" })),
      wrappingAlgorithm: `RSA_OAEP_${ik.oaepHash.toUpperCase()}_AES_KWP`,
    };
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async importKey(req: ImportKeyRequest, owner?: UserRef): Promise<Key> {
    const alg = algorithmOf(req.spec);
    const label = this.label(req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = this.requestId(req.requestId);
    const blob = this.payload("wrapped_key_material", Buffer.from(req.wrappedKeyMaterial));
    const ik = await this.importKeys.forImport(req.importKeyId);
    const spki = isSecret(alg) ? undefined : this.checkPairSpki(alg, Buffer.from(req.publicKeySpki));
    // The import key's objects may have gone with the device's sessions (session objects): materialized again once.
    const unwrap = async (id: string, u: Usage[]) => {
      try {
        await this.device.importWrapped(ik.id, blob, id, alg, u, ik.oaepHash);
      } catch (e) {
        if (!(e instanceof KeyNotMaterializedError) || e.keyId !== ik.id) throw e;
        this.importKeys.reset();
        const again = await this.importKeys.forImport(req.importKeyId);
        await this.device.importWrapped(again.id, blob, id, alg, u, again.oaepHash);
      }
    };
    return this.create(
      { label, spec: req.spec, usages, state: "enabled", origin: KeyOrigin.KEY_ORIGIN_IMPORTED, publicOnly: false, exportable: req.exportable, requestId, owner },
      async (id) => {
        await unwrap(id, usages);
        if (spki) await this.provePair(id, alg, usages, spki, (tmp) => unwrap(tmp, ["sign"]));
        return spki;
      },
    );
  }

  /** The public key given for an imported or unwrapped private key must match its spec. */
  private checkPairSpki(alg: KeyAlgorithm, spki: Buffer): Buffer {
    if (spki.length === 0) throw invalid("public_key_spki is required for an asymmetric key: the service stores and checks it");
    const parts = partsFromSpki(spki);
    if (JSON.stringify(parts.alg) !== JSON.stringify(alg)) throw invalid(`public_key_spki is a ${JSON.stringify(parts.alg)} key; spec says ${JSON.stringify(alg)}`);
    return spki;
  }

  /**
   * Proves that the private key just put in the device matches `spki`: creates the public object, and
   * signs a random challenge with a temporary sign-only copy of the private key, verified in the device.
   */
  private async provePair(id: string, alg: KeyAlgorithm, usages: Usage[], spki: Buffer, makeSigner: (tmpId: string) => Promise<void>): Promise<void> {
    await this.device.createPublic(id, spki, [...usages, "verify"].filter((u, i, a) => a.indexOf(u) === i) as Usage[]);
    const tmp = randomUUID();
    try {
      await makeSigner(tmp);
      const challenge = randomBytes(32);
      const spec = alg.type === "rsa" ? signFor(1, alg, false) : alg.type === "ec" ? ({ name: "ECDSA", hash: "sha256", input: "message" } as const) : ({ name: "EDDSA" } as const);
      const sig = await this.device.sign(tmp, spec, challenge);
      // The public object may lack CKA_VERIFY when the usages don't include it: verify with a temp copy.
      const pubTmp = randomUUID();
      await this.device.createPublic(pubTmp, spki, ["verify"]);
      try {
        if (!(await this.device.verify(pubTmp, spec, challenge, sig))) throw invalid("public_key_spki does not match the private key");
      } finally {
        await this.device.destroy(pubTmp);
      }
    } finally {
      await this.device.destroy(tmp);
    }
  }

  // ---- reads and delete ------------------------------------------------------------------------

  /** `viewerId`: the caller's user id (the owner also sees the share list). */
  getKey(req: GetKeyRequest, viewerId?: string): Key {
    return toApiKey(this.record(req.keyId), viewerId);
  }

  /**
   * One page of the keys `visible` admits (the access layer passes "owned by or shared with the
   * caller"), filtered and ordered by id.
   */
  listKeys(req: ListKeysRequest, visible: (r: KeyRecord) => boolean = () => true, viewerId?: string): ListKeysResponse {
    const view = (r: KeyRecord) => toApiKey(r, viewerId);
    const size = req.pageSize === 0 ? Math.min(100, this.limits.maxPageSize) : req.pageSize;
    if (size > this.limits.maxPageSize) throw invalid(`page_size must be at most ${this.limits.maxPageSize}`);
    let after = "";
    if (req.pageToken) {
      after = Buffer.from(req.pageToken, "base64url").toString("utf8");
      if (!after.startsWith("k:") || !ID_RE.test(after.slice(2))) throw invalid("page_token is not one this service issued");
      after = after.slice(2);
    }
    const usage = req.usage ? resolveUsageFilter(req.usage) : undefined;
    const ids = [...this.records.keys()].sort();
    const out: KeyRecord[] = [];
    for (const id of ids) {
      if (after && id <= after) continue;
      const r = this.records.get(id)!;
      if (!visible(r)) continue;
      if (req.labelPrefix && !r.label.startsWith(req.labelPrefix)) continue;
      if (req.spec && r.spec !== req.spec) continue;
      if (usage && !r.usages.includes(usage)) continue;
      if (out.length === size) {
        return { keys: out.map(view), nextPageToken: Buffer.from("k:" + out[out.length - 1]!.id).toString("base64url") };
      }
      out.push(r);
    }
    return { keys: out.map(view), nextPageToken: "" };
  }

  /**
   * Adds (`share`) or removes a crypto user from a key's shares: a compare-and-put on the record, so
   * a concurrent change is never lost. Sharing with the owner, or twice, is a no-op; so is removing a
   * user the key is not shared with.
   */
  async setShare(keyId: string, user: UserRef, share: boolean, viewerId?: string): Promise<Key> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const e = await this.store.get(recordKey(keyId));
      if (!e) throw notFound(`key ${keyId} not found`);
      const r = decodeRecord(e.value);
      const shares = (r.shares ?? []).filter((s) => s.user !== user.user);
      if (share && r.owner?.userId !== user.userId) shares.push(user);
      shares.sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
      const next: KeyRecord = { ...r, shares };
      if (JSON.stringify(next.shares) === JSON.stringify(r.shares ?? [])) return toApiKey(r, viewerId);
      const res = await this.store.txn([{ key: recordKey(keyId), op: "modRevision", equals: e.modRevision }], [{ type: "put", key: recordKey(keyId), value: encodeRecord(next) }]);
      if (res.succeeded) {
        this.records.set(keyId, next);
        return toApiKey(next, viewerId);
      }
    }
    throw new HsmError(Code.Unavailable, `key ${keyId}: too many concurrent updates, retry`, { transient: true });
  }

  /** How many keys a user (by id) owns: a crypto user that owns keys is not deleted. */
  ownedBy(userId: string): number {
    let n = 0;
    for (const r of this.records.values()) if (r.owner?.userId === userId) n++;
    return n;
  }

  async deleteKey(req: DeleteKeyRequest): Promise<void> {
    const r = this.record(req.keyId);
    const ops = [{ type: "delete" as const, key: recordKey(r.id) }];
    for (const c of await this.store.list(`${COVERAGE_PREFIX}${r.id}/`)) ops.push({ type: "delete", key: c.key });
    const res = await this.store.txn([{ key: recordKey(r.id), op: "present" }], ops);
    if (!res.succeeded) throw notFound(`key ${r.id} not found`);
    this.records.delete(r.id);
    // The record is gone (durably); the objects follow. A crash here leaves objects no record
    // explains: the next start quarantines them (see reconcile).
    await this.device.destroy(r.id);
  }

  getPublicKey(req: GetPublicKeyRequest): GetPublicKeyResponse {
    const r = this.record(req.keyId);
    if (!r.publicKeySpki) throw precondition(`key ${r.id} is a secret key: it has no public key`);
    const k = createPublicKey({ key: r.publicKeySpki, format: "der", type: "spki" });
    const jwk = { ...k.export({ format: "jwk" }), kid: r.id };
    return { keyId: r.id, spkiDer: r.publicKeySpki, pem: k.export({ type: "spki", format: "pem" }).toString(), jwk: JSON.stringify(jwk) };
  }

  // ---- crypto ----------------------------------------------------------------------------------

  async encrypt(req: EncryptRequest): Promise<EncryptResponse> {
    const r = this.record(req.keyId);
    const alg = algorithmOf(r.spec);
    const c = cipherFor(req.algorithm, alg);
    this.needUsage(r, "encrypt");
    const pt = this.payload("plaintext", Buffer.from(req.plaintext), c.name !== "RSA_OAEP");
    const label = oaepLabelFor(req.oaepLabel, c.name === "RSA_OAEP", EncryptionAlgorithm[req.algorithm], this.limits.maxOaepLabelBytes);
    const aad = Buffer.from(req.aad);
    let iv = Buffer.from(req.iv);
    if (c.name !== "AES_GCM" && aad.length) throw invalid("aad is only for AES_GCM");
    if (c.name === "AES_GCM") {
      if (iv.length) throw invalid("iv must be empty for AES_GCM: the service generates a fresh 12-byte IV for every encryption");
      this.payload("aad", aad, true);
      iv = randomBytes(12);
    } else if (c.name === "AES_CBC_PAD" || c.name === "AES_CTR") {
      if (iv.length === 0) iv = randomBytes(16);
      else if (iv.length !== 16) throw invalid(`iv must be 16 bytes for ${c.name}; got ${iv.length}`);
    } else if (iv.length) {
      throw invalid("iv is not used with RSA_OAEP");
    }
    let outLen = pt.length + 32;
    const k = alg.type === "rsa" ? alg.bits / 8 : 0;
    if (c.name === "RSA_OAEP") {
      const max = k - 2 * HASH_LEN[c.hash!] - 2;
      if (pt.length > max) throw invalid(`plaintext is ${pt.length} bytes; RSA-OAEP with this key and hash takes at most ${max}`);
      outLen = k;
    }
    const spec = c.name === "AES_GCM" ? { name: c.name, iv, aad, tagBytes: 16 } : c.name === "RSA_OAEP" ? { name: c.name, hash: c.hash!, k, label } : { name: c.name, iv };
    const part: Part = r.publicKeySpki ? "public" : "secret";
    const ct = await this.withKey(r, () => this.device.encrypt(r.id, part, spec, pt, outLen));
    return { keyId: r.id, ciphertext: ct, iv: c.name === "RSA_OAEP" ? Buffer.alloc(0) : iv };
  }

  // ---- data keys (envelope encryption) ----------------------------------------------------------

  /**
   * A fresh data key from the HSM's random generator, wrapped under the key-encryption key with
   * AES-GCM (the service's IV), the encryption context bound as AAD. `withPlaintext` false answers
   * only the wrapped key (GenerateDataKeyWithoutPlaintext).
   */
  async generateDataKey(req: GenerateDataKeyRequest, withPlaintext: boolean): Promise<GenerateDataKeyResponse> {
    const r = this.dataKek(req.keyId);
    const spec = req.spec === KeySpec.KEY_SPEC_UNSPECIFIED ? KeySpec.KEY_SPEC_AES_256 : req.spec;
    if (spec !== KeySpec.KEY_SPEC_AES_256 && spec !== KeySpec.KEY_SPEC_AES_128) throw invalid("spec must be KEY_SPEC_AES_256 (the default) or KEY_SPEC_AES_128 for a data key");
    const aad = encryptionContextAad(req.encryptionContext);
    const dk = await this.device.random(spec === KeySpec.KEY_SPEC_AES_256 ? 32 : 16);
    try {
      const { ciphertext, iv } = await this.encrypt({ keyId: r.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: dk, aad, iv: Buffer.alloc(0), oaepLabel: Buffer.alloc(0) });
      return {
        keyId: r.id,
        keyVersion: r.currentVersion,
        spec,
        plaintextDataKey: withPlaintext ? Buffer.from(dk) : Buffer.alloc(0),
        wrappedDataKey: Buffer.concat([DATA_KEY_MAGIC, iv, ciphertext]),
      };
    } finally {
      dk.fill(0);
    }
  }

  /** Unwraps a data key made by {@link generateDataKey}: the same key, and exactly the same encryption context. */
  async decryptDataKey(req: DecryptDataKeyRequest): Promise<DecryptDataKeyResponse> {
    const r = this.dataKek(req.keyId);
    const blob = Buffer.from(req.wrappedDataKey);
    if (blob.length === 0) throw invalid("wrapped_data_key is required");
    if (blob.length !== 4 + 12 + 16 + 16 && blob.length !== 4 + 12 + 32 + 16) throw invalid("wrapped_data_key is not a data key this service wrapped (wrong length)");
    if (!blob.subarray(0, 4).equals(DATA_KEY_MAGIC)) throw invalid("wrapped_data_key is not a data key this service wrapped (unknown format)");
    const aad = encryptionContextAad(req.encryptionContext);
    try {
      const { plaintext } = await this.decrypt({ keyId: r.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: blob.subarray(16), iv: blob.subarray(4, 16), aad, tagLength: 16, oaepLabel: Buffer.alloc(0) });
      return { keyId: r.id, keyVersion: r.currentVersion, plaintextDataKey: plaintext };
    } catch (e) {
      if (e instanceof HsmError && e.code === Code.InvalidArgument) {
        throw invalid(`wrapped_data_key does not open under key ${r.id} with this encryption context: a different key, a different context, or a damaged blob`);
      }
      throw e;
    }
  }

  /** A key-encryption key for data keys: AES, with encrypt and decrypt usages. */
  private dataKek(id: string): KeyRecord {
    const r = this.record(id);
    if (algorithmOf(r.spec).type !== "aes") throw invalid(`data keys are wrapped under an AES key; ${r.id} is ${algorithmOf(r.spec).type.toUpperCase()}`);
    return r;
  }

  async decrypt(req: DecryptRequest): Promise<DecryptResponse> {
    const r = this.record(req.keyId);
    const alg = algorithmOf(r.spec);
    const c = cipherFor(req.algorithm, alg);
    this.needUsage(r, "decrypt");
    if (r.publicOnly) throw precondition(`key ${r.id} is a public key: it cannot decrypt`);
    const ct = this.payload("ciphertext", Buffer.from(req.ciphertext), c.name === "AES_CTR");
    const label = oaepLabelFor(req.oaepLabel, c.name === "RSA_OAEP", EncryptionAlgorithm[req.algorithm], this.limits.maxOaepLabelBytes);
    const aad = Buffer.from(req.aad);
    const iv = Buffer.from(req.iv);
    let spec;
    if (c.name === "AES_GCM") {
      const tag = req.tagLength || 16;
      if (tag < 12 || tag > 16) throw invalid(`tag_length must be 12 to 16 bytes; got ${tag}`);
      if (iv.length === 0) throw invalid("iv is required for AES_GCM decrypt: pass the one Encrypt returned");
      if (iv.length > 128) throw invalid("iv is longer than 128 bytes");
      if (ct.length < tag) throw invalid(`ciphertext is shorter than the ${tag}-byte tag`);
      this.payload("aad", aad, true);
      spec = { name: c.name, iv, aad, tagBytes: tag };
    } else {
      if (aad.length) throw invalid("aad is only for AES_GCM");
      if (req.tagLength) throw invalid("tag_length is only for AES_GCM");
      if (c.name === "RSA_OAEP") {
        if (iv.length) throw invalid("iv is not used with RSA_OAEP");
        spec = { name: c.name, hash: c.hash!, k: (alg as { bits: number }).bits / 8, label };
      } else {
        if (iv.length !== 16) throw invalid(`iv must be 16 bytes for ${c.name}; got ${iv.length}`);
        if (c.name === "AES_CBC_PAD" && ct.length % 16 !== 0) throw invalid("AES_CBC_PAD ciphertext must be a multiple of 16 bytes");
        spec = { name: c.name, iv };
      }
    }
    const part: Part = r.publicKeySpki ? "private" : "secret";
    const pt = await this.withKey(r, () => this.device.decrypt(r.id, part, spec as never, ct, ct.length + 32));
    return { keyId: r.id, plaintext: pt };
  }

  private signInput(req: SignRequest | VerifyRequest, r: KeyRecord) {
    const alg = algorithmOf(r.spec);
    const digest = req.messageType === MessageType.MESSAGE_TYPE_DIGEST;
    if (req.messageType !== MessageType.MESSAGE_TYPE_RAW && !digest) throw invalid(`message_type must be RAW or DIGEST; got ${req.messageType}`);
    const spec = signFor(req.algorithm, alg, digest);
    const msg = this.payload("message", Buffer.from(req.message), spec.name === "HMAC" || spec.name === "EDDSA" || !digest);
    if (digest && "hash" in spec && msg.length !== HASH_LEN[spec.hash]) {
      throw invalid(`message is a ${spec.hash.toUpperCase()} digest and must be ${HASH_LEN[spec.hash]} bytes; got ${msg.length}`);
    }
    if (req.signatureFormat !== SignatureFormat.SIGNATURE_FORMAT_DER && req.signatureFormat !== SignatureFormat.SIGNATURE_FORMAT_RAW) {
      throw invalid(`signature_format must be DER or RAW; got ${req.signatureFormat}`);
    }
    if (req.signatureFormat === SignatureFormat.SIGNATURE_FORMAT_RAW && spec.name !== "ECDSA") throw invalid("signature_format RAW applies to ECDSA only");
    const macLength = macLengthFor(req.macLength, spec, SigningAlgorithm[req.algorithm] ?? String(req.algorithm));
    return { alg, spec, msg, macLength };
  }

  async sign(req: SignRequest): Promise<SignResponse> {
    const r = this.record(req.keyId);
    const { spec, msg, macLength } = this.signInput(req, r);
    this.needUsage(r, "sign");
    if (r.publicOnly) throw precondition(`key ${r.id} is a public key: it cannot sign`);
    let sig = await this.withKey(r, () => this.device.sign(r.id, spec, msg));
    if (spec.name === "ECDSA" && req.signatureFormat === SignatureFormat.SIGNATURE_FORMAT_DER) sig = rawToDer(sig);
    // A truncated HMAC tag is the leftmost bytes of the full one (RFC 2104 §5).
    if (macLength !== undefined) sig = sig.subarray(0, macLength);
    return { keyId: r.id, signature: sig };
  }

  async verify(req: VerifyRequest): Promise<VerifyResponse> {
    const r = this.record(req.keyId);
    const { alg, spec, msg, macLength } = this.signInput(req, r);
    this.needUsage(r, "verify");
    let sig: Buffer = Buffer.from(req.signature);
    if (sig.length === 0) throw invalid("signature is empty");
    if (sig.length > 2048) throw invalid("signature is longer than any supported key's signature");
    if (macLength !== undefined) return { keyId: r.id, valid: await this.verifyTruncated(r, spec, msg, sig, macLength) };
    if (spec.name === "ECDSA") {
      const size = CURVE_BYTES[(alg as { curve: keyof typeof CURVE_BYTES }).curve];
      if (req.signatureFormat === SignatureFormat.SIGNATURE_FORMAT_DER) {
        const raw = derToRaw(sig, size);
        if (!raw) return { keyId: r.id, valid: false };
        sig = raw;
      } else if (sig.length !== 2 * size) {
        return { keyId: r.id, valid: false };
      }
    }
    const valid = await this.withKey(r, () => this.device.verify(r.id, spec, msg, sig));
    return { keyId: r.id, valid };
  }

  /**
   * A truncated HMAC tag (RFC 2104 §5): the device verifies full-length tags only (C_Verify answers
   * CKR_SIGNATURE_LEN_RANGE), so the full MAC is computed in the HSM (C_Sign, hence the key's sign
   * usage) and its leftmost `macLength` bytes compared with the tag in constant time. A tag of
   * another length than `macLength` is `false`, as any malformed signature.
   */
  private async verifyTruncated(r: KeyRecord, spec: SignSpec, msg: Buffer, tag: Buffer, macLength: number): Promise<boolean> {
    if (!r.usages.includes("sign")) {
      throw precondition(
        `key ${r.id} cannot verify a truncated tag (mac_length): the device checks full-length tags only, so the MAC is computed in the HSM and compared on the host, which needs the key's sign usage (its usages: ${r.usages.join(", ")})`,
      );
    }
    const full = await this.withKey(r, () => this.device.sign(r.id, spec, msg));
    try {
      return tag.length === macLength && timingSafeEqual(full.subarray(0, macLength), tag);
    } finally {
      full.fill(0);
    }
  }

  async wrapKey(req: WrapKeyRequest): Promise<WrapKeyResponse> {
    const w = this.record(req.wrappingKeyId, "wrapping_key_id");
    const k = this.record(req.keyId);
    const spec = this.wrapSpec(req.algorithm, req.oaepLabel);
    this.needUsage(w, "wrap");
    const walg = algorithmOf(w.spec);
    const kalg = algorithmOf(k.spec);
    if (!k.exportable) throw precondition(`key ${k.id} is not exportable: it was created with exportable=false`);
    if (k.publicOnly) throw invalid(`key ${k.id} is a public key: fetch it with GetPublicKey instead`);
    if ((spec.name === "AES_KW" || spec.name === "AES_KWP") && walg.type !== "aes") throw invalid(`${spec.name} needs an AES wrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name === "RSA_OAEP" && walg.type !== "rsa") throw invalid(`RSA_OAEP needs an RSA wrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name !== "AES_KWP" && !isSecret(kalg)) throw invalid(`${spec.name} wraps secret keys only; use AES_KWP for a private key`);
    const v = k.versions.find((x) => x.version === k.currentVersion);
    if (!v?.material) throw precondition(`key ${k.id} exists only in the device that generated it (the device cannot wrap ${kalg.type} keys): it cannot be exported`);
    // Exported from the record's copy, through a transient object (the key's kept objects cannot be wrapped).
    const material = v.material;
    await this.checkUsable(k);
    const blob = await this.withKey(w, () => this.device.exportWrapped(w.id, walg.type === "rsa" ? "public" : "secret", spec, kalg, material));
    return { wrappedKey: blob };
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async unwrapKey(req: UnwrapKeyRequest, owner?: UserRef): Promise<Key> {
    const w = this.record(req.unwrappingKeyId, "unwrapping_key_id");
    const spec = this.wrapSpec(req.algorithm, req.oaepLabel);
    const alg = algorithmOf(req.spec);
    const label = this.label(req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = this.requestId(req.requestId);
    this.needUsage(w, "unwrap");
    if (w.publicOnly) throw precondition(`key ${w.id} is a public key: it cannot unwrap`);
    const walg = algorithmOf(w.spec);
    if ((spec.name === "AES_KW" || spec.name === "AES_KWP") && walg.type !== "aes") throw invalid(`${spec.name} needs an AES unwrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name === "RSA_OAEP" && walg.type !== "rsa") throw invalid(`RSA_OAEP needs an RSA unwrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name !== "AES_KWP" && !isSecret(alg)) throw invalid(`${spec.name} unwraps secret keys only; use AES_KWP for a private key`);
    const blob = this.payload("wrapped_key", Buffer.from(req.wrappedKey));
    if (spec.name === "AES_KW" && (blob.length % 8 !== 0 || blob.length < 24)) throw invalid("an AES_KW blob is a multiple of 8 bytes and at least 24");
    const spki = isSecret(alg) ? undefined : this.checkPairSpki(alg, Buffer.from(req.publicKeySpki));
    const part: Part = walg.type === "rsa" ? "private" : "secret";
    return this.create(
      { label, spec: req.spec, usages, state: "enabled", origin: KeyOrigin.KEY_ORIGIN_UNWRAPPED, publicOnly: false, exportable: req.exportable, requestId, owner },
      async (id) => {
        await this.withKey(w, () => this.device.unwrap(w.id, part, spec, blob, id, alg, usages));
        if (spki) await this.provePair(id, alg, usages, spki, (tmp) => this.device.unwrap(w.id, part, spec, blob, tmp, alg, ["sign"]));
        return spki;
      },
    );
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async deriveKey(req: DeriveKeyRequest, owner?: UserRef): Promise<Key> {
    const p = this.record(req.privateKeyId, "private_key_id");
    const palg = algorithmOf(p.spec);
    if (palg.type !== "ec") throw invalid(`ECDH needs an EC private key; ${p.id} is ${palg.type.toUpperCase()}`);
    this.needUsage(p, "derive");
    if (p.publicOnly) throw precondition(`key ${p.id} is a public key: it cannot derive`);
    const alg = algorithmOf(req.spec);
    if (alg.type !== "aes") throw invalid("spec must be KEY_SPEC_AES_128 or KEY_SPEC_AES_256 for a derived key");
    const label = this.label(req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = this.requestId(req.requestId);
    const peer = partsFromSpki(this.payload("peer_public_key_spki", Buffer.from(req.peerPublicKeySpki)));
    if (peer.alg.type !== "ec" || peer.alg.curve !== palg.curve) throw invalid(`peer_public_key_spki must be an EC key on ${palg.curve}`);
    return this.create(
      { label, spec: req.spec, usages, state: "enabled", origin: KeyOrigin.KEY_ORIGIN_DERIVED, publicOnly: false, exportable: req.exportable, requestId, owner },
      async (id) => {
        await this.withKey(p, () => this.device.deriveEcdh(p.id, peer.point!, id, alg, usages));
        return undefined;
      },
    );
  }

  async generateRandom(req: GenerateRandomRequest): Promise<GenerateRandomResponse> {
    if (req.length === 0) throw invalid("length must be at least 1");
    if (req.length > this.limits.maxRandomBytes) throw exhausted(`length ${req.length} is over the limit of ${this.limits.maxRandomBytes} bytes (limits.maxRandomBytes)`);
    return { random: await this.device.random(req.length) };
  }

  // ---- batches ---------------------------------------------------------------------------------

  /** Runs every item concurrently (the session pool bounds the device work); one result or error each. */
  async runBatch<I, O>(items: I[], fn: (item: I) => Promise<O>): Promise<Array<{ $case: "ok"; value: O } | { $case: "error"; value: ItemError }>> {
    this.checkBatch(items);
    return Promise.all(
      items.map(async (it) => {
        try {
          return { $case: "ok" as const, value: await fn(it) };
        } catch (e) {
          const err = HsmError.from(e);
          return { $case: "error" as const, value: { code: grpcStatusOf(err.code), message: err.code === Code.Internal ? "internal error" : err.message } };
        }
      }),
    );
  }
}

/** First bytes of a wrapped data key: the format's name and version. */
const DATA_KEY_MAGIC = Buffer.from("HDK1", "ascii");
const MAX_CONTEXT_ENTRIES = 64;

/**
 * The encryption context as AAD: its entries sorted by key, as JSON pairs, so that the same map
 * always gives the same bytes (and maps that differ in any key or value never do).
 */
export function encryptionContextAad(ctx: Record<string, string>): Buffer {
  const entries = Object.entries(ctx ?? {});
  if (entries.length > MAX_CONTEXT_ENTRIES) throw invalid(`encryption_context has more than ${MAX_CONTEXT_ENTRIES} entries`);
  for (const [k, v] of entries) {
    if (k.length < 1 || k.length > 256) throw invalid("encryption_context keys must be 1 to 256 characters");
    if (typeof v !== "string" || v.length > 1024) throw invalid(`encryption_context value of ${k.slice(0, 40)} must be at most 1024 characters`);
  }
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(entries), "utf8");
}

/** Request ids are per owner: one user's retry never returns another user's key. */
function scopedRequestId(rid: string, owner: UserRef | undefined): string {
  return owner ? `${owner.userId}/${rid}` : rid;
}

function resolveUsageFilter(u: number): Usage {
  const names: Record<number, Usage> = { 1: "encrypt", 2: "decrypt", 3: "sign", 4: "verify", 5: "wrap", 6: "unwrap", 7: "derive" };
  const n = names[u];
  if (!n) throw invalid(`usage filter ${u} is not a KeyUsage`);
  return n;
}

/** Parses an imported public key in any of the accepted formats into SPKI DER. */
export function parsePublicKey(format: PublicKeyFormat, data: Buffer): Buffer {
  try {
    switch (format) {
      case PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER:
        return createPublicKey({ key: data, format: "der", type: "spki" }).export({ type: "spki", format: "der" });
      case PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM: {
        const text = data.toString("utf8");
        if (!text.includes("-----BEGIN PUBLIC KEY-----")) throw new Error("not a PEM public key");
        return createPublicKey({ key: text, format: "pem" }).export({ type: "spki", format: "der" });
      }
      case PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK: {
        const jwk = JSON.parse(data.toString("utf8"));
        if (!jwk || typeof jwk !== "object") throw new Error("not a JWK");
        if ("d" in jwk) throw invalid('public_key is a private JWK (it has "d"): send only the public members (drop "d" and the other private ones)');
        return createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "der" });
      }
      default:
        throw invalid("format must be SPKI_DER, PEM or JWK");
    }
  } catch (e) {
    if (e instanceof HsmError) throw e;
    throw invalid(`public_key is not a valid ${PublicKeyFormat[format]} public key`);
  }
}
