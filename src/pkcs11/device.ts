import { defaultDeviceWorkers } from "../config";
import type { KeyDevice } from "./api";
import * as ceremonies from "./ceremonies";
import * as crypto from "./crypto";
import type { FaultWatch } from "./fault-watch";
import * as handles from "./handles";
import * as keyObjects from "./key-objects";
import * as objects from "./objects";
import { DeviceCore } from "./run";
import { WorkerPool, type WorkerStats } from "./worker-pool";
import type { CipherSpec, DeviceOptions, KeyAlgorithm, ObjectInventory, OaepHash, Part, PoolStats, SignSpec, TokenInfo, Usage, WrapSpec, WrappedMaterial } from "./types";

export type { DeviceOptions, ObjectInventory, TokenInfo } from "./types";
export type { WorkerStats } from "./worker-pool";
export { KeyNotMaterializedError } from "./not-materialized";

/**
 * The only door to the PKCS#11 module: {@link KeyDevice} over a PKCS#11 token. Loads the module once
 * per process (C_Initialize with CKF_OS_LOCKING_OK), logs in once, keeps a pool of open sessions,
 * runs the hot path (sign, verify, encrypt, decrypt, random) on session workers (worker_threads with
 * sessions of their own), or through pkcs11js' async forms (libuv's thread pool) with `workers: 0`,
 * so the event loop never waits on the device, caches object handles by key id, and recovers from a lost session or token
 * by reopening and logging in again. It hands out domain values (key ids, SPKI, wrapped blobs),
 * never raw handles.
 *
 * A thin facade: the work lives in one file per concept, each taking the {@link DeviceCore}
 * (module, sessions, run pipeline, handle cache): objects.ts, key-objects.ts, ceremonies.ts,
 * crypto.ts, with templates.ts and mechanisms.ts for the PKCS#11 spelling.
 */
export class Device implements KeyDevice {
  /** Tells a device fault (token view lost, e.g. after EMFILE) from a missing key, and heals it. */
  readonly faults: FaultWatch;

  private constructor(private readonly c: DeviceCore) {
    this.faults = c.faults;
  }

  /**
   * Opens the module, finds the token, opens the pool and logs in, probes what OAEP the device does,
   * then starts the session workers (one after another, each opening its session).
   */
  static async open(opts: DeviceOptions): Promise<Device> {
    const c = new DeviceCore(opts);
    c.mod.load();
    c.mod.initialize();
    c.mod.openSessions();
    await c.oaep.probe(c);
    const workers = opts.workers ?? defaultDeviceWorkers();
    if (workers > 0) {
      try {
        c.workers = await WorkerPool.start({
          size: workers,
          data: { module: opts.module, pin: opts.pin },
          slot: () => c.mod.slot,
          closeSession: (s) => c.mod.safe(() => c.p11.C_CloseSession(s)),
          log: opts.log,
        });
      } catch (e) {
        await c.close();
        throw e;
      }
    }
    return new Device(c);
  }

  /** The token's facts (read again when the module is re-initialized). */
  get token(): TokenInfo {
    return this.c.mod.token;
  }

  // ---- lifecycle and health --------------------------------------------------------------------

  mechanisms(): number[] {
    return this.c.mod.mechanisms();
  }

  /** Is the mechanism in the token's list (and not disabled)? */
  supports(mech: number): boolean {
    return this.c.mod.supports(mech);
  }

  /** FAILED_PRECONDITION naming the mechanism when the device lacks it. */
  requireMechanism(mech: number, purpose: string): void {
    this.c.mod.requireMechanism(mech, purpose);
  }

  poolStats(): PoolStats {
    return this.c.pool.stats();
  }

  /** Per session worker: operations and batches run, restarts (empty with `workers: 0`), for /metrics and tests. */
  workerStats(): WorkerStats[] {
    return this.c.workers?.workerStats() ?? [];
  }

  /** Test hook: ends a session worker as a crash would (worker.terminate()); the device replaces it. */
  terminateWorker(slot: number): Promise<number> {
    if (!this.c.workers) throw new Error("the device runs without session workers");
    return this.c.workers.terminate(slot);
  }

  healthy(): Promise<boolean> {
    return this.c.healthy();
  }

  close(): Promise<void> {
    return this.c.close();
  }

  markEssential(id: string, part: Part): void {
    this.c.markEssential(id, part);
  }

  supportsOaep(hash: OaepHash): boolean {
    return this.c.oaep.supports(hash);
  }

  /** Does CKM_RSA_PKCS_OAEP with this hash honour a label (pSourceData) on this device? */
  supportsOaepLabel(hash: OaepHash): boolean {
    return this.c.oaep.supportsLabel(hash);
  }

  /** The OAEP hash BYOK import uses on this device: SHA-256 where supported, else SHA-1. */
  importOaepHash(): OaepHash {
    return this.c.oaep.importHash();
  }

  /** Test hook: closes every session behind the pool's back, as a device reset would. */
  simulateSessionLoss(): void {
    this.c.mod.closeAllSessions();
  }

  /** Test hook: forgets every cached handle and session copy, as a session recovery does. */
  dropHandleCache(): void {
    this.c.cache.clear();
  }

  // ---- objects ---------------------------------------------------------------------------------

  cached(id: string, part: Part): boolean {
    return handles.cached(this.c, id, part);
  }

  has(id: string, part: Part): Promise<boolean> {
    return handles.has(this.c, id, part);
  }

  secretLength(id: string, domainKeyId: string): Promise<number | undefined> {
    return objects.secretLength(this.c, id, domainKeyId);
  }

  /** Every CKA_ID of hsmd's objects (label "hsmd:…") in the token, with their classes. */
  async listObjectIds(): Promise<Map<string, Set<Part>>> {
    return (await this.inventory()).keys;
  }

  inventory(): Promise<ObjectInventory> {
    return objects.inventory(this.c);
  }

  quarantine(id: string): Promise<void> {
    return objects.quarantine(this.c, id);
  }

  restoreQuarantined(id: string): Promise<void> {
    return objects.restoreQuarantined(this.c, id);
  }

  purgeQuarantined(id: string): Promise<void> {
    return objects.purgeQuarantined(this.c, id);
  }

  makeUnextractable(id: string): Promise<void> {
    return objects.makeUnextractable(this.c, id);
  }

  destroy(id: string): Promise<void> {
    return objects.destroy(this.c, id);
  }

  rename(fromId: string, toId: string): Promise<void> {
    return objects.rename(this.c, fromId, toId);
  }

  // ---- key objects -----------------------------------------------------------------------------

  generate(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<{ spki?: Buffer }> {
    return keyObjects.generate(this.c, id, alg, usages);
  }

  createPublic(id: string, spki: Buffer, usages: readonly Usage[]): Promise<KeyAlgorithm> {
    return keyObjects.createPublic(this.c, id, spki, usages);
  }

  sealForRecord(id: string, alg: KeyAlgorithm, usages: readonly Usage[], domainKeyId: string): Promise<WrappedMaterial | undefined> {
    return keyObjects.sealForRecord(this.c, id, alg, usages, domainKeyId);
  }

  materialize(id: string, alg: KeyAlgorithm, usages: readonly Usage[], material: WrappedMaterial, spki?: Buffer): Promise<void> {
    return keyObjects.materialize(this.c, id, alg, usages, material, spki);
  }

  exportWrapped(wrappingKeyId: string, wrappingPart: Part, spec: WrapSpec, alg: KeyAlgorithm, material: WrappedMaterial): Promise<Buffer> {
    return keyObjects.exportWrapped(this.c, wrappingKeyId, wrappingPart, spec, alg, material);
  }

  unwrap(unwrappingKeyId: string, unwrappingPart: Part, spec: WrapSpec, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
    return keyObjects.unwrap(this.c, unwrappingKeyId, unwrappingPart, spec, blob, id, alg, usages);
  }

  deriveEcdh(privateKeyId: string, peerPoint: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
    return keyObjects.deriveEcdh(this.c, privateKeyId, peerPoint, id, alg, usages);
  }

  importWrapped(importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash?: OaepHash): Promise<void> {
    return ceremonies.importWrapped(this.c, importKeyId, blob, id, alg, usages, hash);
  }

  // ---- ceremonies ------------------------------------------------------------------------------

  ensureDomainKey(id: string, create: boolean): Promise<boolean> {
    return ceremonies.ensureDomainKey(this.c, id, create);
  }

  domainKeyShareable(id: string): Promise<boolean> {
    return ceremonies.domainKeyShareable(this.c, id);
  }

  ensureTransportKey(id: string): Promise<Buffer> {
    return ceremonies.ensureTransportKey(this.c, id);
  }

  transportOaepHash(): OaepHash {
    return this.c.oaep.importHash();
  }

  wrapDomainKeyForJoiner(domainKeyId: string, trustedId: string, hash: OaepHash): Promise<Buffer> {
    return ceremonies.wrapDomainKeyForJoiner(this.c, domainKeyId, trustedId, hash);
  }

  unwrapDomainKey(transportKeyId: string, blob: Buffer, hash: OaepHash, domainKeyId: string): Promise<void> {
    return ceremonies.unwrapDomainKey(this.c, transportKeyId, blob, hash, domainKeyId);
  }

  // ---- crypto (the hot path: one call, no extra await) -----------------------------------------

  encrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
    return crypto.encrypt(this.c, id, part, spec, data, outLen);
  }

  decrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
    return crypto.decrypt(this.c, id, part, spec, data, outLen);
  }

  sign(id: string, spec: SignSpec, data: Buffer, part?: Part): Promise<Buffer> {
    return crypto.sign(this.c, id, spec, data, part);
  }

  verify(id: string, spec: SignSpec, data: Buffer, signature: Buffer, part?: Part): Promise<boolean> {
    return crypto.verify(this.c, id, spec, data, signature, part);
  }

  random(n: number): Promise<Buffer> {
    return crypto.random(this.c, n);
  }
}
