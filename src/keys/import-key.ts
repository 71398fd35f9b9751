/**
 * The BYOK import key, one for the whole cluster. With a key pair per node, GetImportParameters and
 * ImportKey sent round robin over a cluster's endpoints landed on different nodes, and the wrapped
 * material could not be unwrapped on the second (12 of 12 pairs failed). Now the pair is a record in
 * the state store, like a user key: generated once inside one node's HSM (RSA-3072, private half
 * CKA_SENSITIVE, CKA_UNWRAP only), its private half wrapped under the domain key
 * (CKM_AES_KEY_WRAP_PAD) by the same device functions user keys use, and committed with a
 * compare-and-swap so that concurrent first calls on several nodes make exactly one. Every node
 * materializes the record into its own HSM before it first uses it, so GetImportParameters answers
 * the same public key everywhere and ImportKey works on any node.
 */
import { randomUUID } from "node:crypto";
import { Code, HsmError, notFound, precondition } from "../errors";
import type { KeyAlgorithm, KeyDevice, OaepHash, WrappedMaterial } from "../pkcs11";
import type { StateStore } from "../store";

/** Store key of the cluster's import key record. */
export const IMPORT_KEY_RECORD = "meta/import-key";
/** CKA_ID of the import key pair in every node's HSM (hsmd's own objects are named hsmd-…). */
export const IMPORT_KEY_ID = "hsmd-import";

const IMPORT_ALG: KeyAlgorithm = { type: "rsa", bits: 3072 };

/** The import key as the store holds it (no secret: the private half is wrapped under the domain key). */
export interface ImportKeyRecord {
  /** CKA_ID of the pair in each HSM. */
  id: string;
  /** Changes when the pair is made again; names this generation in logs. */
  generation: string;
  /** RSA-3072 public key, SPKI DER. */
  spki: Buffer;
  /** RSA-OAEP hash of the wrapping (chosen by the device that made it; every node uses the same). */
  oaepHash: OaepHash;
  material: WrappedMaterial;
  createdAt: string;
  createdBy?: string;
}

interface StoredImportKey {
  id: string;
  generation: string;
  spki: string;
  oaepHash: OaepHash;
  material: { alg: "AES_KWP"; wrappingKeyId: string; blob: string };
  createdAt: string;
  createdBy?: string;
}

function encode(r: ImportKeyRecord): Buffer {
  const s: StoredImportKey = { ...r, spki: r.spki.toString("base64"), material: { ...r.material, blob: r.material.blob.toString("base64") } };
  return Buffer.from(JSON.stringify(s), "utf8");
}

function decode(b: Buffer): ImportKeyRecord {
  const s = JSON.parse(b.toString("utf8")) as StoredImportKey;
  return { ...s, spki: Buffer.from(s.spki, "base64"), material: { ...s.material, blob: Buffer.from(s.material.blob, "base64") } };
}

/** Options of {@link ClusterImportKey}. */
export interface ClusterImportKeyOptions {
  device: KeyDevice;
  store: StateStore;
  /** CKA_ID of the domain key the private half is wrapped under. */
  domainKeyId: string;
  /** This node's id (recorded as the maker). */
  nodeId?: string;
  log?: (msg: string) => void;
}

/** Gets, makes and materializes the cluster's import key (see the module comment). */
export class ClusterImportKey {
  /** The record this process has materialized into its HSM (once per process). */
  private ready: Promise<ImportKeyRecord> | undefined;

  constructor(private readonly opts: ClusterImportKeyOptions) {}

  /**
   * The import key, materialized in this node's HSM: the store's record, or a new one when there is
   * none yet (made here; if another node committed one first, that one).
   */
  async get(): Promise<ImportKeyRecord> {
    if (!this.ready) {
      const p = this.prepare(true);
      this.ready = p;
      p.catch(() => {
        if (this.ready === p) this.ready = undefined;
      });
    }
    return this.ready;
  }

  /**
   * The import key `id` names, materialized here, for ImportKey: NOT_FOUND unless it is the
   * cluster's import key (the client must call GetImportParameters first).
   */
  async forImport(id: string): Promise<ImportKeyRecord> {
    const missing = () => notFound(`import key ${id || "(empty)"} not found: call GetImportParameters`);
    if (id !== IMPORT_KEY_ID) throw missing();
    if (!this.ready) {
      // Never made here: only a record another node made will do (ImportKey makes none).
      const p = this.prepare(false).then((r) => {
        if (!r) throw missing();
        return r;
      });
      this.ready = p;
      p.catch(() => {
        if (this.ready === p) this.ready = undefined;
      });
    }
    return this.ready;
  }

  /** Forgets what this process materialized (its HSM lost the objects, e.g. a removed node). */
  reset(): void {
    this.ready = undefined;
  }

  private async read(): Promise<ImportKeyRecord | undefined> {
    const { store } = this.opts;
    const e = (store.getFresh ? await store.getFresh(IMPORT_KEY_RECORD) : undefined) ?? (await store.get(IMPORT_KEY_RECORD));
    return e ? decode(e.value) : undefined;
  }

  private prepare(create: true): Promise<ImportKeyRecord>;
  private prepare(create: false): Promise<ImportKeyRecord | undefined>;
  private async prepare(create: boolean): Promise<ImportKeyRecord | undefined> {
    const { device } = this.opts;
    const existing = await this.read();
    if (existing) {
      await this.materialize(existing);
      return existing;
    }
    if (!create) return undefined;
    if (!device.supportsOaep("sha256") && !device.supportsOaep("sha1")) {
      throw precondition("the device supports CKM_RSA_PKCS_OAEP with neither SHA-256 nor SHA-1: key import is not available");
    }
    const made = await this.make();
    const res = await this.opts.store.txn([{ key: IMPORT_KEY_RECORD, op: "absent" }], [{ type: "put", key: IMPORT_KEY_RECORD, value: encode(made) }]);
    if (res.succeeded) {
      this.opts.log?.(`import key ${made.id} (generation ${made.generation}) created and recorded`);
      return made;
    }
    // Another node recorded one first: use that one (its objects replace the pair made here).
    const winner = await this.read();
    if (!winner) throw new HsmError(Code.Unavailable, "the import key record changed while it was being made; retry", { transient: true });
    await this.materialize(winner);
    return winner;
  }

  /** Generates the pair in this HSM and wraps its private half under the domain key, as a user key's create does. */
  private async make(): Promise<ImportKeyRecord> {
    const { device, domainKeyId } = this.opts;
    const id = IMPORT_KEY_ID;
    // Whatever this HSM holds under the id (a pair of an older version, or one a crash left) is not the record's.
    await device.destroy(id);
    try {
      const { spki } = await device.generate(id, IMPORT_ALG, ["unwrap"]);
      const material = await device.sealForRecord(id, IMPORT_ALG, ["unwrap"], domainKeyId);
      if (!spki || !material) throw precondition("the device cannot wrap an RSA private key under the domain key: the import key cannot be shared by the cluster");
      return {
        id,
        generation: randomUUID(),
        spki,
        oaepHash: device.supportsOaep("sha256") ? "sha256" : "sha1",
        material,
        createdAt: new Date().toISOString(),
        ...(this.opts.nodeId ? { createdBy: this.opts.nodeId } : {}),
      };
    } catch (e) {
      await device.destroy(id).catch(() => undefined);
      throw e;
    }
  }

  /** Puts the record's pair in this HSM, replacing whatever it held under the id (once per process). */
  private async materialize(r: ImportKeyRecord): Promise<void> {
    const { device } = this.opts;
    if (!device.supportsOaep(r.oaepHash)) {
      throw precondition(`the cluster's import key is used with RSA-OAEP ${r.oaepHash.toUpperCase()}, which this node's device does not do (CKM_RSA_PKCS_OAEP): import through another node`);
    }
    await device.destroy(r.id);
    await device.materialize(r.id, IMPORT_ALG, ["unwrap"], r.material, r.spki);
  }
}
