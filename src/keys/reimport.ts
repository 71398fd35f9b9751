/**
 * Re-import (issue 13, KMS's ImportKeyMaterial into a PendingImport key): ImportKey with key_id set
 * brings the same material back to a key whose valid_to passed. The same material is proven: for
 * asymmetric keys the public key must be the record's, and the private key is proven to match it by
 * a signature made and verified in the HSM; for secret keys the check value computed in the HSM
 * must equal the one kept at the first import (check-value.ts). A secret key without one is refused.
 */
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import type { KeyAlgorithm, KeyDevice, Usage } from "../pkcs11";
import type { StateStore } from "../store";
import { sameCheckValue, secretCheckValue } from "./check-value";
import type { KeyFactory } from "./key-create";
import type { KeyRecords } from "./key-records";
import { stateOf, toApiKey, type KeyRecord, type UserRef } from "./record";
import { updateRecord } from "./record-update";
import type { Key, KeySpecName } from "./types";

/** What a re-import needs. */
export interface ReimportDeps {
  device: KeyDevice;
  store: StateStore;
  records: KeyRecords;
  factory: KeyFactory;
  domainKeyId: string;
}

/** The checked request. `unwrap` puts the imported material in the device under an id. */
export interface ReimportRequest {
  keyId: string;
  alg: KeyAlgorithm;
  spec: KeySpecName;
  usages: Usage[];
  spki: Buffer | undefined;
  /** "" : the key no longer expires. */
  validTo: string;
  unwrap: (id: string, usages: Usage[]) => Promise<void>;
}

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x) => b.includes(x));

/** Why the record cannot take this re-import (FAILED_PRECONDITION / INVALID_ARGUMENT), or nothing. */
function refuse(r: KeyRecord, req: ReimportRequest): void {
  const s = stateOf(r);
  if (s !== "PENDING_IMPORT") throw precondition(`key ${r.id} is ${s}, not PENDING_IMPORT: only a key whose material expired takes its material again`);
  if (r.spec !== req.spec) throw invalid(`spec must be the key's own (${r.spec}) to import its material again`);
  if (!sameSet(r.usages, req.usages)) throw invalid(`usages must be the key's own (${r.usages.join(", ")}) to import its material again`);
  if (!req.spki && !r.checkValue) {
    throw precondition(
      `key ${r.id} is a secret key with no check value (imported before hsmd kept one): hsmd cannot prove that new material is the same key, so it does not import it again; import a new key instead`,
    );
  }
  if (r.versions.length !== 1) throw precondition(`key ${r.id} has ${r.versions.length} versions: only single-version keys can be imported again`);
  if (req.spki && (!r.publicKeySpki || !req.spki.equals(r.publicKeySpki))) throw invalid(`public_key_spki is not key ${r.id}'s public key: re-import takes the same material the key had`);
}

/**
 * Imports the same material into a PENDING_IMPORT key (its owner only): proven in the device, sealed
 * under the domain key for the record, then the record back to ENABLED with its new valid_to, by a
 * compare-and-put (a concurrent change is never lost). The device objects made for the proof are
 * destroyed afterwards: the key is materialized from its record on first use, as on any other node.
 */
export async function reimportKey(deps: ReimportDeps, req: ReimportRequest, owner: UserRef | undefined): Promise<Key> {
  const { device, records, factory } = deps;
  const known = records.record(req.keyId);
  const mine = !owner || known.owner?.userId === owner.userId;
  if (!mine) {
    const shared = known.shares?.some((s) => s.userId === owner.userId) ?? false;
    if (!shared) throw notFound(`key ${req.keyId} not found`);
    throw new HsmError(Code.PermissionDenied, `only the owner of key ${req.keyId} can import its material again`);
  }
  refuse(known, req);
  const id = known.id;
  await device.destroy(id).catch(() => undefined);
  try {
    if (req.spki) {
      await req.unwrap(id, req.usages);
      await factory.provePair(id, req.alg, req.usages, req.spki, (tmp) => req.unwrap(tmp, ["sign"]));
    } else {
      const cv = await secretCheckValue(device, req.alg, req.unwrap);
      if (!sameCheckValue(cv, known.checkValue)) throw invalid(`wrapped_key_material is not key ${id}'s material (its check value differs): re-import takes the same material the key had`);
      await req.unwrap(id, req.usages);
    }
    const material = await device.sealForRecord(id, req.alg, req.usages, deps.domainKeyId);
    if (!material) throw precondition(`the device cannot wrap ${req.alg.type} keys under the domain key: key ${id} cannot be imported again`);
    const { record } = await updateRecord(deps, id, (r) => {
      refuse(r, req);
      const { validTo: _v, ...rest } = r;
      return { ...rest, state: "ENABLED", ...(req.validTo ? { validTo: req.validTo } : {}), versions: r.versions.map((v) => ({ ...v, residency: "wrapped" as const, material })) };
    });
    return toApiKey(record, owner?.userId);
  } finally {
    // Materialized again on demand from the record (the materializer never counted these objects).
    await device.destroy(id).catch(() => undefined);
    records.dropObjects(id);
  }
}
