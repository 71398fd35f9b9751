/** KeyService: the key domain's one entry point (administration, crypto, data keys), transport-free. */
import type { KeyDevice } from "../pkcs11";
import type { StateStore } from "../store";
import { KeyAliases } from "./aliases";
import { KeyCrypto } from "./crypto-ops";
import { DataKeys } from "./data-keys";
import { ClusterImportKey } from "./import-key";
import { KeyAdmin } from "./key-admin";
import { KeyFactory } from "./key-create";
import { KeyLifecycle } from "./key-lifecycle";
import type { DueAuditEntry, DuePassResult } from "./deletion-schedule";
import type { DeletionWindow } from "./key-states";
import { KeyRecords } from "./key-records";
import { ReEncrypter, type ReEncryptInput, type ReEncryptOutput } from "./re-encrypt";
import { KeyRotation } from "./key-rotation";
import type { RotationTiming } from "./rotation-policy";
import { rotationTimer, type RotationScheduleOptions } from "./rotation-schedule";
import { VersionAdmin, type KeyVersionList } from "./version-admin";
import type { DueTimer } from "./due-timer";
import { SINGLE_NODE, type KeyPlacement } from "./placement";
import type { KeyRecord, UserRef } from "./record";
import type {
  BatchResult,
  DataKeyInput,
  DataKeyOutput,
  DecryptDataKeyInput,
  DecryptDataKeyOutput,
  DecryptInput,
  DecryptOutput,
  DeriveKeyInput,
  EncryptInput,
  EncryptOutput,
  GenerateKeyInput,
  ImportKeyInput,
  ImportParameters,
  ImportPublicKeyInput,
  Key,
  KeyPage,
  ListKeysQuery,
  PublicKeyView,
  SignInput,
  SignOutput,
  UnwrapKeyInput,
  VerifyInput,
  VerifyOutput,
  WrapKeyInput,
} from "./types";
import { checkBatch, checkKeyId, type KeyLimits } from "./validation";

/** What a KeyService is built from. */
export interface KeyServiceOptions {
  /** The device surface (src/pkcs11's KeyDevice): a unit test may hand a fake one. */
  device: KeyDevice;
  store: StateStore;
  limits: KeyLimits;
  /** CKA_ID of the domain key in the device. */
  domainKeyId: string;
  log?: (msg: string) => void;
  /** In a cluster: this node's id (the cluster import key records which node made it). */
  nodeId?: string;
  /** How many nodes hold each key (cluster/Coverage in a cluster). @default SINGLE_NODE */
  placement?: KeyPlacement;
  /**
   * Device objects kept materialized for keys (config device.objectBudget; each part counts, a key
   * pair is 2); the least recently used key is destroyed to make room. @default DEFAULT_OBJECT_BUDGET (20,000)
   */
  objectBudget?: number;
  /** Index entries one ListKeys call examines at most (see KeyAdmin.listKeys). @default 10,000 */
  listScanLimit?: number;
  /** config.lifecycle: rotation's day length and period bounds, the deletion window bounds. @default KMS's */
  lifecycle?: RotationTiming & DeletionWindow;
}

/**
 * Key management and crypto, transport-free. Every key is a record in the state store (the source of
 * truth); the device holds its materialization. A create is acknowledged only after the store made
 * the record durable; a failure at any step removes what the step before created. The cluster's
 * applier (src/cluster) follows the store into {@link records} and the device.
 */
export class KeyService {
  /** This node's copy of the records and their materialization (the applier and reconcile use it too). */
  readonly records: KeyRecords;
  /** The aliases (issue 13): rows in the store, followed by a watch on every node. */
  readonly aliases: KeyAliases;
  private readonly admin: KeyAdmin;
  private readonly crypto: KeyCrypto;
  private readonly dataKeys: DataKeys;
  private readonly lifecycle: KeyLifecycle;
  private readonly reEncrypter: ReEncrypter;
  private readonly limits: KeyLimits;
  /** Rotation on demand, on schedule, and its policy (key-rotation.ts). */
  readonly rotation: KeyRotation;
  private readonly versions: VersionAdmin;

  constructor(opts: KeyServiceOptions) {
    const { device, store, limits, domainKeyId } = opts;
    const placement = opts.placement ?? SINGLE_NODE;
    this.limits = limits;
    this.records = new KeyRecords({ device, store, placement, objectBudget: opts.objectBudget, log: opts.log });
    this.aliases = new KeyAliases({ store, records: this.records, maxPageSize: limits.maxPageSize });
    const factory = new KeyFactory({ device, store, records: this.records, placement, domainKeyId });
    // The BYOK import key, one for the whole cluster (a record, materialized on first use).
    const importKeys = new ClusterImportKey({ device, store, domainKeyId, nodeId: opts.nodeId, log: opts.log });
    this.rotation = new KeyRotation({ device, store, records: this.records, factory, placement, limits, timing: opts.lifecycle });
    this.versions = new VersionAdmin({ store, records: this.records });
    this.admin = new KeyAdmin({
      device,
      store,
      limits,
      records: this.records,
      factory,
      placement,
      importKeys,
      listScanLimit: opts.listScanLimit,
      rotationFor: (d) => this.rotation.rotationFor(d),
      aliases: this.aliases,
    });
    this.crypto = new KeyCrypto({ device, limits, records: this.records, factory });
    this.dataKeys = new DataKeys({ device, records: this.records, crypto: this.crypto });
    this.lifecycle = new KeyLifecycle({ store, records: this.records, window: opts.lifecycle, log: opts.log, aliases: this.aliases });
    this.reEncrypter = new ReEncrypter({ records: this.records, crypto: this.crypto, dataKeys: this.dataKeys, limits });
  }

  /** Loads every record; answers the store revision they were read at (the applier follows from there). */
  async start(): Promise<number> {
    const rev = await this.records.load();
    await this.aliases.start();
    return rev;
  }

  /** Stops following the aliases (daemon stop). */
  stop(): void {
    this.aliases.stop();
  }

  get keyCount(): number {
    return this.records.size;
  }

  /** Throws INVALID_ARGUMENT naming `field` unless `id` is a well-formed key id. */
  checkKeyId(id: string, field = "key_id"): void {
    checkKeyId(id, field);
  }

  /** This node's copy of a key's record, if it has one (no store read). */
  known(id: string): KeyRecord | undefined {
    return this.records.get(id);
  }

  /** The record as the replicated store holds it now (see KeyRecords.fresh). */
  freshRecord(id: string): Promise<KeyRecord | undefined> {
    return this.records.fresh(id);
  }

  /** The record of a key id; NOT_FOUND when none. */
  record(id: string, field = "key_id"): KeyRecord {
    return this.records.record(id, field);
  }

  // ---- key administration (key-admin.ts) -------------------------------------------------------

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  generateKey(req: GenerateKeyInput, owner?: UserRef): Promise<Key> {
    return this.admin.generateKey(req, owner);
  }
  /** `owner`: the crypto user the new key belongs to. */
  importPublicKey(req: ImportPublicKeyInput, owner?: UserRef): Promise<Key> {
    return this.admin.importPublicKey(req, owner);
  }
  /** The cluster's import key and its wrapping algorithm. */
  getImportParameters(): Promise<ImportParameters> {
    return this.admin.getImportParameters();
  }
  /** `owner`: the crypto user the new key belongs to. */
  importKey(req: ImportKeyInput, owner?: UserRef): Promise<Key> {
    return this.admin.importKey(req, owner);
  }
  /** `viewerId`: the caller's user id (the owner also sees the share list). */
  getKey(req: { keyId: string }, viewerId?: string): Key {
    return this.admin.getKey(req.keyId, viewerId);
  }
  /** One page of the keys the viewer owns or that are shared with it (every key when undefined), filtered and ordered by id. */
  listKeys(req: ListKeysQuery, viewerId?: string): KeyPage {
    return this.admin.listKeys(req, viewerId);
  }
  /** Adds (`share`) or removes a crypto user from a key's shares. */
  setShare(keyId: string, user: UserRef, share: boolean, viewerId?: string): Promise<Key> {
    return this.admin.setShare(keyId, user, share, viewerId);
  }
  /** How many keys a user (by id) owns: a crypto user that owns keys is not deleted. */
  ownedBy(userId: string): number {
    return this.admin.ownedBy(userId);
  }
  /** Deletes a key: its record durably, then its objects. */
  deleteKey(req: { keyId: string }): Promise<void> {
    return this.admin.deleteKey(req.keyId);
  }
  /** A key's public half (SPKI DER, PEM, JWK). */
  getPublicKey(req: { keyId: string; version?: number }): PublicKeyView {
    return this.admin.getPublicKey(req.keyId, req.version ?? 0);
  }

  // ---- versions and rotation (key-rotation.ts, version-admin.ts) ---------------------------------

  /** A new primary version (GENERATED, ENABLED keys); a retried request id makes no second one. */
  rotateKey(req: { keyId: string; requestId: string }, viewerId?: string): Promise<Key> {
    return this.rotation.rotate(req.keyId, req.requestId, viewerId);
  }
  /** Every version, oldest first. */
  listKeyVersions(req: { keyId: string }): KeyVersionList {
    return this.versions.list(req.keyId);
  }
  /** Automatic rotation every `rotationPeriodDays` (0: off). */
  updateRotationPolicy(req: { keyId: string; rotationPeriodDays: number }, viewerId?: string): Promise<Key> {
    return this.rotation.setPolicy(req.keyId, req.rotationPeriodDays, viewerId);
  }
  /** The floor below which versions no longer decrypt or verify. */
  setMinDecryptionVersion(req: { keyId: string; minDecryptionVersion: number }, viewerId?: string): Promise<Key> {
    return this.versions.setMinDecryptionVersion(req.keyId, req.minDecryptionVersion, viewerId);
  }
  /** Destroys the versions below min_decryption_version (record and device). */
  trimKeyVersions(req: { keyId: string }, viewerId?: string): Promise<Key> {
    return this.versions.trim(req.keyId, viewerId);
  }
  /** The scheduled rotation pass on a timer (the daemon starts and stops it). */
  rotationTimer(o: Omit<RotationScheduleOptions, "records" | "rotation"> & { intervalMs: number; now?: () => number }): DueTimer {
    return rotationTimer({ ...o, records: this.records, rotation: this.rotation });
  }

  // ---- states and metadata (key-lifecycle.ts; issue 13) -----------------------------------------

  enableKey(keyId: string, viewerId?: string): Promise<Key> {
    return this.lifecycle.enableKey(keyId, viewerId);
  }
  disableKey(keyId: string, viewerId?: string): Promise<Key> {
    return this.lifecycle.disableKey(keyId, viewerId);
  }
  /** `days` 0: the longest window (config lifecycle.deletionWindowDays.max). */
  scheduleKeyDeletion(keyId: string, days: number, viewerId?: string): Promise<Key> {
    return this.lifecycle.scheduleKeyDeletion(keyId, days, viewerId);
  }
  cancelKeyDeletion(keyId: string, viewerId?: string): Promise<Key> {
    return this.lifecycle.cancelKeyDeletion(keyId, viewerId);
  }
  updateKeyDescription(keyId: string, description: string, viewerId?: string): Promise<Key> {
    return this.lifecycle.updateKeyDescription(keyId, description, viewerId);
  }
  tagKey(keyId: string, tags: Record<string, string>, viewerId?: string): Promise<Key> {
    return this.lifecycle.tagKey(keyId, tags, viewerId);
  }
  untagKey(keyId: string, tagKeys: string[], viewerId?: string): Promise<Key> {
    return this.lifecycle.untagKey(keyId, tagKeys, viewerId);
  }
  /** Destroys the keys whose deletion date passed and expires those whose valid_to did (every node runs it; one write lands). */
  duePass(now: number, audit?: (e: DueAuditEntry) => Promise<unknown>): Promise<DuePassResult> {
    return this.lifecycle.duePass(now, audit);
  }

  // ---- crypto (crypto-ops.ts, data-keys.ts) -----------------------------------------------------

  encrypt(req: EncryptInput): Promise<EncryptOutput> {
    return this.crypto.encrypt(req);
  }
  decrypt(req: DecryptInput): Promise<DecryptOutput> {
    return this.crypto.decrypt(req);
  }
  sign(req: SignInput): Promise<SignOutput> {
    return this.crypto.sign(req);
  }
  verify(req: VerifyInput): Promise<VerifyOutput> {
    return this.crypto.verify(req);
  }
  wrapKey(req: WrapKeyInput): Promise<{ wrappedKey: Buffer }> {
    return this.crypto.wrapKey(req);
  }
  /** `owner`: the crypto user the new key belongs to. */
  unwrapKey(req: UnwrapKeyInput, owner?: UserRef): Promise<Key> {
    return this.crypto.unwrapKey(req, owner);
  }
  /** `owner`: the crypto user the new key belongs to. */
  deriveKey(req: DeriveKeyInput, owner?: UserRef): Promise<Key> {
    return this.crypto.deriveKey(req, owner);
  }
  generateRandom(req: { length: number }): Promise<{ random: Buffer }> {
    return this.crypto.generateRandom(req.length);
  }
  /** `withPlaintext` false: GenerateDataKeyWithoutPlaintext. */
  generateDataKey(req: DataKeyInput, withPlaintext: boolean): Promise<DataKeyOutput> {
    return this.dataKeys.generateDataKey(req, withPlaintext);
  }
  decryptDataKey(req: DecryptDataKeyInput): Promise<DecryptDataKeyOutput> {
    return this.dataKeys.decryptDataKey(req);
  }
  /** A self-describing ciphertext re-encrypted under another key or the primary version (re-encrypt.ts). */
  reEncrypt(req: ReEncryptInput): Promise<ReEncryptOutput> {
    return this.reEncrypter.reEncrypt(req);
  }

  /** Runs every item concurrently (the session pool bounds the device work); one result or error each. */
  async runBatch<I, O>(items: I[], fn: (item: I) => Promise<O>): Promise<Array<BatchResult<O>>> {
    checkBatch(this.limits, items);
    return Promise.all(
      items.map(async (it): Promise<BatchResult<O>> => {
        try {
          return { ok: true, value: await fn(it) };
        } catch (e) {
          return { ok: false, error: e };
        }
      }),
    );
  }
}
