import { randomBytes, randomUUID } from "node:crypto";
import { Code, HsmError, invalid } from "../errors";
import { partsFromSpki, type KeyAlgorithm, type KeyDevice, type Usage } from "../pkcs11";
import { TxnGroup, type StateStore } from "../store";
import type { KeyRecords } from "./key-records";
import type { KeyPlacement } from "./placement";
import { decodeRecord, encodeRecord, recordKey, requestKey, toApiKey, type KeyRecord, type KeyVersion, type UserRef } from "./record";
import { HASH_LEN, algorithmOf, isSecret, signFor } from "./spec";
import type { Key } from "./types";

/** What every create path shares: the device, the store, this node's records and the domain key. */
export interface KeyFactoryOptions {
  device: KeyDevice;
  store: StateStore;
  records: KeyRecords;
  placement: KeyPlacement;
  /** CKA_ID of the domain key in the device. */
  domainKeyId: string;
  /** The group commit creates go through (default: one of this factory's own over `store`). */
  txns?: TxnGroup;
}

/** The record fields a create path decides; the factory adds id, dates and versions. */
export type NewKey = Omit<KeyRecord, "id" | "createdAt" | "currentVersion" | "versions" | "publicKeySpki"> & { publicKeySpki?: Buffer };

/**
 * The common tail of every create (generate, import, unwrap, derive): idempotency by client request
 * id, the record's wrapped copy, the durable commit, and the undo of the device side on any failure.
 */
export class KeyFactory {
  /** Concurrent creates' record + request-id txns, merged into fewer store txns. */
  private readonly txns: TxnGroup;

  constructor(private readonly opts: KeyFactoryOptions) {
    this.txns = opts.txns ?? new TxnGroup(opts.store);
  }

  /** Returns the key a request id already made, if any. */
  private async existingFor(rid: string | undefined, owner: UserRef | undefined): Promise<KeyRecord | undefined> {
    if (!rid) return undefined;
    const e = await this.opts.store.get(requestKey(scopedRequestId(rid, owner)));
    if (!e) return undefined;
    const id = e.value.toString("utf8");
    const r = this.opts.records.get(id) ?? (await this.opts.store.get(recordKey(id)).then((x: { value: Buffer } | undefined) => (x ? decodeRecord(x.value) : undefined)));
    if (!r) throw new HsmError(Code.AlreadyExists, `request_id was used for key ${id}, which has since been deleted`);
    return r;
  }

  /**
   * Common tail of every create: `make` puts the key in the device; then its material is wrapped for
   * the record and the record committed with its request id. Anything failing undoes the device side.
   */
  async create(base: NewKey, make: (id: string) => Promise<Buffer | undefined>): Promise<Key> {
    const { device, records, placement } = this.opts;
    const existing = await this.existingFor(base.requestId, base.owner);
    if (existing) return toApiKey(existing, base.owner?.userId);
    const id = randomUUID();
    const createdAt = new Date().toISOString();
    try {
      const { version, spki } = await this.makeVersion(id, base, make, 1, createdAt);
      const rec: KeyRecord = { ...base, id, createdAt, publicKeySpki: spki, currentVersion: 1, versions: [version] };
      // In a cluster the record names the node that made it: where a key only its device holds lives.
      const createdOn = (placement as { nodeId?: string }).nodeId;
      if (createdOn !== undefined) rec.createdOn = createdOn;
      const compares = [{ key: recordKey(id), op: "absent" as const }];
      const ops = [{ type: "put" as const, key: recordKey(id), value: encodeRecord(rec) }];
      if (base.requestId) {
        const rk = requestKey(scopedRequestId(base.requestId, base.owner));
        compares.push({ key: rk, op: "absent" });
        ops.push({ type: "put", key: rk, value: Buffer.from(id) });
      }
      // Grouped with concurrent creates (disjoint keys: a create's record id is new, and two creates
      // with one request id are never merged), and resolved only once committed.
      const res = await this.txns.submit(compares, ops);
      if (!res.succeeded) {
        // Lost a race with the same request id: the other create won; return its key.
        await device.destroy(id).catch(() => undefined);
        const other = await this.existingFor(base.requestId, base.owner);
        if (other) return toApiKey(other, base.owner?.userId);
        throw new HsmError(Code.Unavailable, "create conflicted with a concurrent write; retry", { transient: true });
      }
      records.set(rec, { createRevision: res.revision, modRevision: res.revision }, true);
      await placement.awaitCoverage(id, res.revision);
      return toApiKey(rec, rec.owner?.userId);
    } catch (e) {
      if (!records.has(id)) await device.destroy(id).catch(() => undefined);
      throw e;
    }
  }

  /**
   * The device side of a new key version (every create's, and a rotation's): `make` puts the key in
   * the device under `id`; a secret's length is checked (it must round-trip under the domain key);
   * its material is wrapped under the domain key for the record from the new key's transient object,
   * which the device then replaces by the kept one that nothing can wrap (see Device.sealForRecord).
   * A key the device cannot wrap stays in it only (residency "device"). The caller destroys `id`'s
   * objects on failure.
   */
  async makeVersion(
    id: string,
    base: Pick<NewKey, "spec" | "usages" | "publicOnly" | "publicKeySpki">,
    make: (id: string) => Promise<Buffer | undefined>,
    n: number,
    createdAt: string,
  ): Promise<{ version: KeyVersion; spki?: Buffer }> {
    const { device } = this.opts;
    const spki = (await make(id)) ?? base.publicKeySpki;
    const alg = algorithmOf(base.spec);
    if (isSecret(alg)) {
      const len = await device.secretLength(id, this.opts.domainKeyId);
      // SoftHSM2 2.6's AES-KWP wrap zero-pads other lengths instead of following RFC 5649, so the
      // record's copy would not round-trip exactly.
      if (len === undefined) throw invalid("secret key material must be a multiple of 8 bytes long: the device cannot wrap other lengths faithfully under the domain key");
      if (alg.type === "aes" && len !== alg.bits / 8) throw invalid(`an AES-${alg.bits} key is ${alg.bits / 8} bytes; the material is ${len}`);
      const min = alg.type === "hmac" ? HASH_LEN[alg.hash] : 0;
      if (len < min) throw invalid(`an HMAC-${(alg as { hash: string }).hash.toUpperCase()} key must be at least ${min} bytes (RFC 2104 §3, and the device's minimum); the material is ${len}`);
    }
    if (base.publicOnly) return { version: { version: n, createdAt, residency: "public" }, spki };
    const material = await device.sealForRecord(id, alg, base.usages, this.opts.domainKeyId);
    return { version: material ? { version: n, createdAt, residency: "wrapped", material } : { version: n, createdAt, residency: "device" }, spki };
  }

  /** The public key given for an imported or unwrapped private key must match its spec. */
  checkPairSpki(alg: KeyAlgorithm, spki: Buffer): Buffer {
    if (spki.length === 0) throw invalid("public_key_spki is required for an asymmetric key: the service stores and checks it");
    const parts = partsFromSpki(spki);
    if (JSON.stringify(parts.alg) !== JSON.stringify(alg)) throw invalid(`public_key_spki is a ${JSON.stringify(parts.alg)} key; spec says ${JSON.stringify(alg)}`);
    return spki;
  }

  /**
   * Proves that the private key just put in the device matches `spki`: creates the public object, and
   * signs a random challenge with a temporary sign-only copy of the private key, verified in the device.
   */
  async provePair(id: string, alg: KeyAlgorithm, usages: Usage[], spki: Buffer, makeSigner: (tmpId: string) => Promise<void>): Promise<void> {
    const device = this.opts.device;
    await device.createPublic(id, spki, [...usages, "verify"].filter((u, i, a) => a.indexOf(u) === i) as Usage[]);
    const tmp = randomUUID();
    try {
      await makeSigner(tmp);
      const challenge = randomBytes(32);
      const spec = alg.type === "rsa" ? signFor("RSA_PKCS1_SHA256", alg, false) : alg.type === "ec" ? ({ name: "ECDSA", hash: "sha256", input: "message" } as const) : ({ name: "EDDSA" } as const);
      const sig = await device.sign(tmp, spec, challenge);
      // The public object may lack CKA_VERIFY when the usages don't include it: verify with a temp copy.
      const pubTmp = randomUUID();
      await device.createPublic(pubTmp, spki, ["verify"]);
      try {
        if (!(await device.verify(pubTmp, spec, challenge, sig))) throw invalid("public_key_spki does not match the private key");
      } finally {
        await device.destroy(pubTmp);
      }
    } finally {
      await device.destroy(tmp);
    }
  }
}

/** Request ids are per owner: one user's retry never returns another user's key. */
function scopedRequestId(rid: string, owner: UserRef | undefined): string {
  return owner ? `${owner.userId}/${rid}` : rid;
}
