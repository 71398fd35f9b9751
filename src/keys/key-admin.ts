import { createPublicKey } from "node:crypto";
import { invalid, notFound, precondition } from "../errors";
import { KeyNotMaterializedError, partsFromSpki, type KeyDevice, type Usage } from "../pkcs11";
import type { StateStore } from "../store";
import type { ClusterImportKey } from "./import-key";
import type { KeyFactory } from "./key-create";
import type { KeyRecords } from "./key-records";
import type { KeyPlacement } from "./placement";
import { parsePublicKey } from "./public-key";
import { updateRecord } from "./record-update";
import { recordKey, toApiKey, type KeyRecord, type UserRef } from "./record";
import { algorithmOf, isSecret, resolveUsages, specOf } from "./spec";
import type { GenerateKeyInput, ImportKeyInput, ImportParameters, ImportPublicKeyInput, Key, KeyPage, ListKeysQuery, PublicKeyView } from "./types";
import { ID_RE, checkLabel, checkPayload, checkRequestId, type KeyLimits } from "./validation";
import { versionForUse } from "./version-use";
import { spkiOfVersion, versionOf } from "./versions";

/** What key administration needs. */
export interface KeyAdminOptions {
  device: KeyDevice;
  store: StateStore;
  limits: KeyLimits;
  records: KeyRecords;
  factory: KeyFactory;
  placement: KeyPlacement;
  importKeys: ClusterImportKey;
  /** Index entries one ListKeys call examines at most (see {@link KeyAdmin.listKeys}). @default LIST_SCAN_LIMIT */
  listScanLimit?: number;
  /** A new key's automatic rotation for GenerateKey's rotation_period_days (KeyRotation.rotationFor). */
  rotationFor?: (days: number) => KeyRecord["rotation"];
}

/** Index entries one ListKeys call examines at most by default: about a millisecond of filtering. */
export const LIST_SCAN_LIMIT = 10_000;
/** Index entries read at a time while filtering a page. */
const LIST_CHUNK = 256;

/** Whether `userId` owns the record or it is shared with that user. */
const canSee = (r: KeyRecord, userId: string) => r.owner?.userId === userId || (r.shares?.some((s) => s.userId === userId) ?? false);

/** Key administration: generate, import, read, list, share and delete keys (the rules; no crypto with them). */
export class KeyAdmin {
  private readonly listScanLimit: number;

  constructor(private readonly opts: KeyAdminOptions) {
    this.listScanLimit = opts.listScanLimit ?? LIST_SCAN_LIMIT;
    if (!Number.isSafeInteger(this.listScanLimit) || this.listScanLimit < 1) throw new RangeError(`listScanLimit must be a positive integer, got ${String(opts.listScanLimit)}`);
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async generateKey(req: GenerateKeyInput, owner?: UserRef): Promise<Key> {
    const { limits, device } = this.opts;
    const alg = algorithmOf(req.spec);
    const label = checkLabel(limits, req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = checkRequestId(limits, req.requestId);
    const rotation = this.opts.rotationFor?.(req.rotationPeriodDays ?? 0);
    return this.opts.factory.create(
      { label, spec: req.spec, usages, state: "ENABLED", origin: "GENERATED", publicOnly: false, exportable: req.exportable, requestId, owner, ...(rotation ? { rotation } : {}) },
      async (id) => (await device.generate(id, alg, usages)).spki,
    );
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async importPublicKey(req: ImportPublicKeyInput, owner?: UserRef): Promise<Key> {
    const { limits, device } = this.opts;
    const label = checkLabel(limits, req.label);
    const requestId = checkRequestId(limits, req.requestId);
    const spki = parsePublicKey(req.format, checkPayload(limits, "public_key", Buffer.from(req.publicKey)));
    const { alg } = partsFromSpki(spki);
    const usages = resolveUsages(alg, req.usages, true);
    return this.opts.factory.create(
      { label, spec: specOf(alg), usages, state: "ENABLED", origin: "PUBLIC", publicOnly: true, exportable: false, requestId, owner, publicKeySpki: spki },
      async (id) => {
        await device.createPublic(id, spki, usages);
        return spki;
      },
    );
  }

  /**
   * The cluster's import key (made once, the same on every node: see ClusterImportKey): its id, its
   * public key and the wrapping algorithm (RSA-OAEP with the record's hash, then AES-KWP).
   */
  async getImportParameters(): Promise<ImportParameters> {
    const ik = await this.opts.importKeys.get();
    return {
      importKeyId: ik.id,
      publicKeySpki: ik.spki,
      publicKeyPem: String(createPublicKey({ key: ik.spki, format: "der", type: "spki" }).export({ type: "spki", format: "pem" })),
      wrappingAlgorithm: `RSA_OAEP_${ik.oaepHash.toUpperCase()}_AES_KWP`,
    };
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async importKey(req: ImportKeyInput, owner?: UserRef): Promise<Key> {
    const { limits, device, importKeys, factory } = this.opts;
    const alg = algorithmOf(req.spec);
    const label = checkLabel(limits, req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = checkRequestId(limits, req.requestId);
    const blob = checkPayload(limits, "wrapped_key_material", Buffer.from(req.wrappedKeyMaterial));
    const ik = await importKeys.forImport(req.importKeyId);
    const spki = isSecret(alg) ? undefined : factory.checkPairSpki(alg, Buffer.from(req.publicKeySpki));
    // The import key's objects may have gone with the device's sessions (session objects): materialized again once.
    const unwrap = async (id: string, u: Usage[]) => {
      try {
        await device.importWrapped(ik.id, blob, id, alg, u, ik.oaepHash);
      } catch (e) {
        if (!(e instanceof KeyNotMaterializedError) || e.keyId !== ik.id) throw e;
        importKeys.reset();
        const again = await importKeys.forImport(req.importKeyId);
        await device.importWrapped(again.id, blob, id, alg, u, again.oaepHash);
      }
    };
    return factory.create({ label, spec: req.spec, usages, state: "ENABLED", origin: "IMPORTED", publicOnly: false, exportable: req.exportable, requestId, owner }, async (id) => {
      await unwrap(id, usages);
      if (spki) await factory.provePair(id, alg, usages, spki, (tmp) => unwrap(tmp, ["sign"]));
      return spki;
    });
  }

  /** `viewerId`: the caller's user id (the owner also sees the share list). */
  getKey(keyId: string, viewerId?: string): Key {
    return toApiKey(this.opts.records.record(keyId), viewerId);
  }

  /**
   * One page of the keys the viewer (by user id) owns or that are shared with it, filtered and
   * ordered by id; `viewerId` undefined lists every key (device-level tests, no access layer).
   *
   * The page comes from the owner index (KeyRecords.owners), never from a scan of the store: without
   * filters it reads `page_size + 1` index entries. The filters (label prefix, spec, usage) are
   * applied to the viewer's keys in id order, and one call examines at most `listScanLimit` of them
   * (and at least `page_size + 1`): a filter that matches few of a user's many keys can answer a
   * short page (even an empty one) with a next page token, from which the next call goes on. The
   * cost of a call is bounded by that limit, never by the number of keys in the store. Page tokens
   * name the last id returned or examined (`k:<id>`), as they did before the index.
   */
  listKeys(req: ListKeysQuery, viewerId?: string): KeyPage {
    const { limits, records } = this.opts;
    const size = req.pageSize === 0 ? Math.min(100, limits.maxPageSize) : req.pageSize;
    if (size > limits.maxPageSize) throw invalid(`page_size must be at most ${limits.maxPageSize}`);
    let cursor = "";
    if (req.pageToken) {
      const after = Buffer.from(req.pageToken, "base64url").toString("utf8");
      if (!after.startsWith("k:") || !ID_RE.test(after.slice(2))) throw invalid("page_token is not one this service issued");
      cursor = after.slice(2);
    }
    // A spec the API does not define matches no key: nothing to examine.
    if (req.spec === null) return { keys: [], nextPageToken: "" };
    const index = records.owners;
    const next = viewerId === undefined ? (after: string, n: number) => index.pageAll(after, n) : (after: string, n: number) => index.page(viewerId, after, n);
    const matches = (r: KeyRecord) => (!req.labelPrefix || r.label.startsWith(req.labelPrefix)) && (req.spec === undefined || r.spec === req.spec) && (!req.usage || r.usages.includes(req.usage));
    const view = (rs: KeyRecord[]) => rs.map((r) => toApiKey(r, viewerId));
    const token = (id: string) => Buffer.from(`k:${id}`).toString("base64url");
    const filtered = !!req.labelPrefix || req.spec !== undefined || !!req.usage;
    const out: KeyRecord[] = [];
    // Never fewer than a full page and the one after it, so that a listing without filters is never cut short.
    let budget = Math.max(this.listScanLimit, size + 1);
    while (budget > 0) {
      const ids = next(cursor, Math.min(filtered ? LIST_CHUNK : size + 1, budget));
      if (ids.length === 0) return { keys: view(out), nextPageToken: "" };
      for (const id of ids) {
        const r = records.get(id);
        // An index entry is an id, not a grant: the record decides (a change may be on its way in).
        if (r && (viewerId === undefined || canSee(r, viewerId)) && matches(r)) {
          if (out.length === size) return { keys: view(out), nextPageToken: token(out[out.length - 1]!.id) };
          out.push(r);
        }
        cursor = id;
        budget--;
      }
    }
    return { keys: view(out), nextPageToken: token(cursor) };
  }

  /**
   * Adds (`share`) or removes a crypto user from a key's shares: a compare-and-put on the record, so
   * a concurrent change is never lost. Sharing with the owner, or twice, is a no-op; so is removing a
   * user the key is not shared with.
   */
  async setShare(keyId: string, user: UserRef, share: boolean, viewerId?: string): Promise<Key> {
    const { record } = await updateRecord(this.opts, keyId, (r) => {
      const shares = (r.shares ?? []).filter((s) => s.user !== user.user);
      if (share && r.owner?.userId !== user.userId) shares.push(user);
      shares.sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
      return JSON.stringify(shares) === JSON.stringify(r.shares ?? []) ? undefined : { ...r, shares };
    });
    return toApiKey(record, viewerId);
  }

  /** How many keys a user (by id) owns: a crypto user that owns keys is not deleted. */
  ownedBy(userId: string): number {
    return this.opts.records.owners.ownedCount(userId);
  }

  /** Deletes a key: its record durably first, then its objects. */
  async deleteKey(keyId: string): Promise<void> {
    const { store, records } = this.opts;
    const r = records.record(keyId);
    const ops = [{ type: "delete" as const, key: recordKey(r.id) }];
    const res = await store.txn([{ key: recordKey(r.id), op: "present" }], ops);
    if (!res.succeeded) throw notFound(`key ${r.id} not found`);
    records.delete(r.id);
    // The record is gone (durably); the objects of every version follow. A crash here leaves
    // objects no record explains: the next start quarantines them (see reconcile).
    await records.destroyAll(r);
  }

  /**
   * A version's (0: the primary's) public half as SPKI DER, PEM and JWK (kid `<id>:v<N>` past
   * version 1); FAILED_PRECONDITION for a secret key, NOT_FOUND for a version it does not have.
   */
  getPublicKey(keyId: string, version = 0): PublicKeyView {
    const r = this.opts.records.record(keyId);
    if (!r.publicKeySpki) throw precondition(`key ${r.id} is a secret key: it has no public key`);
    const n = versionForUse(r, version, "public key");
    const spki = spkiOfVersion(r, versionOf(r, n)!);
    if (!spki) throw notFound(`key ${r.id} version ${n} has no public key on record`);
    const k = createPublicKey({ key: spki, format: "der", type: "spki" });
    const jwk = { ...k.export({ format: "jwk" }), kid: n > 1 ? `${r.id}:v${n}` : r.id };
    return { keyId: r.id, spkiDer: spki, pem: k.export({ type: "spki", format: "pem" }).toString(), jwk: JSON.stringify(jwk), version: n };
  }
}
