/** Compare-and-put updates of one key record (the pattern every record change uses). */
import { Code, HsmError, notFound } from "../errors";
import type { StateStore } from "../store";
import type { KeyRecords } from "./key-records";
import { decodeRecord, encodeRecord, type KeyRecord, recordKey } from "./record";

/** What {@link updateRecord} needs. */
export interface RecordUpdateDeps {
  store: StateStore;
  records: KeyRecords;
}

/**
 * Reads the record from the store (with its material), applies `change`, and writes it back only if
 * nobody wrote it meanwhile (a txn comparing its mod revision), retrying on a race. `change` returns
 * the next record, or undefined for "nothing to change" (no write); it may throw (an HsmError) to
 * refuse the change, and runs again on every retry, so it must be pure. `extra` adds puts or deletes
 * to the same txn (an alias row, an idempotency entry). Answers the record as stored afterwards, and
 * whether this call wrote it. NOT_FOUND when the key has no record; UNAVAILABLE (transient) after 20 races.
 */
export async function updateRecord(
  deps: RecordUpdateDeps,
  keyId: string,
  change: (r: KeyRecord) => KeyRecord | undefined,
  extra: (next: KeyRecord) => Array<{ type: "put"; key: string; value: Buffer } | { type: "delete"; key: string }> = () => [],
): Promise<{ record: KeyRecord; changed: boolean; revision?: number }> {
  const { store, records } = deps;
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await store.get(recordKey(keyId));
    if (!e) throw notFound(`key ${keyId} not found`);
    const r = decodeRecord(e.value);
    const next = change(r);
    if (!next) return { record: r, changed: false };
    const res = await store.txn([{ key: recordKey(keyId), op: "modRevision", equals: e.modRevision }], [{ type: "put", key: recordKey(keyId), value: encodeRecord(next) }, ...extra(next)]);
    if (res.succeeded) {
      records.set(next);
      return { record: next, changed: true, revision: res.revision };
    }
  }
  throw new HsmError(Code.Unavailable, `key ${keyId}: too many concurrent updates, retry`, { transient: true });
}
