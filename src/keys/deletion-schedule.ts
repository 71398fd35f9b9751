/**
 * The due pass of key states (issue 13): destroys keys whose deletion date passed, and moves
 * imported keys whose valid_to passed to PENDING_IMPORT. Every node runs it (a DueTimer each
 * lifecycle.checkIntervalMs); exactly once cluster-wide comes from the store: each change is a txn
 * comparing the record's mod revision, so when nodes race only one write lands, and only the node
 * whose write landed writes the audit entry. The device objects follow the record on every node
 * (the applier destroys them when the delete, or the change to PENDING_IMPORT, arrives).
 */
import type { KeyAliases } from "./aliases";
import { Code, HsmError } from "../errors";
import type { StateStore } from "../store";
import { expired } from "./key-states";
import type { KeyRecords } from "./key-records";
import { decodeRecord, recordKey, stateOf, type KeyRecord } from "./record";
import { updateRecord } from "./record-update";

/** A daemon-originated audit entry (the audit log's AuditEntry fields this pass sets). */
export interface DueAuditEntry {
  operation: string;
  keyId: string;
  status: "OK";
  detail: string;
}

/** What a due pass needs. */
export interface DuePassDeps {
  store: StateStore;
  records: KeyRecords;
  /** Writes a daemon-originated audit entry (durably). */
  audit?: (entry: DueAuditEntry) => Promise<unknown>;
  log?: (msg: string) => void;
  /** The aliases (aliases.ts): a destroyed key's go in the txn that deletes its record, as with DeleteKey. */
  aliases?: Pick<KeyAliases, "namesOf" | "deleteOpsFor" | "deletedWithKey">;
}

/** What one pass did on this node (the writes that landed here). */
export interface DuePassResult {
  destroyed: string[];
  expired: string[];
}

const due = (at: string | undefined, now: number) => at !== undefined && at !== "" && Date.parse(at) <= now;

/** Is the record's deletion due at `now`? */
export const deletionDue = (r: KeyRecord, now: number) => stateOf(r) === "PENDING_DELETION" && due(r.deletionDate, now);
/** Is the record's expiry (valid_to) due at `now`? A key pending deletion keeps its material until it is destroyed or the deletion is cancelled. */
export const expiryDue = (r: KeyRecord, now: number) => (stateOf(r) === "ENABLED" || stateOf(r) === "DISABLED") && due(r.validTo, now);

/**
 * Deletes the record if, as the store holds it now, its deletion is due: a txn comparing its mod
 * revision, so a cancel (or another node's delete) that landed first wins. Answers whether this call deleted it.
 */
export async function destroyIfDue(deps: DuePassDeps, id: string, now: number): Promise<boolean> {
  const key = recordKey(id);
  const e = await deps.store.get(key);
  if (!e) return false;
  const r = decodeRecord(e.value);
  if (!deletionDue(r, now)) return false;
  const aliasNames = deps.aliases?.namesOf(id) ?? [];
  const res = await deps.store.txn([{ key, op: "modRevision", equals: e.modRevision }], [{ type: "delete", key }, ...(deps.aliases?.deleteOpsFor(id) ?? [])]);
  if (!res.succeeded) return false;
  deps.records.delete(id);
  deps.aliases?.deletedWithKey(aliasNames, res.revision);
  await deps.audit?.({ operation: "ScheduledKeyDeletion", keyId: id, status: "OK", detail: `key destroyed: its deletion date ${r.deletionDate} passed` });
  return true;
}

/** Moves the record to PENDING_IMPORT (material removed) if its valid_to passed, through updateRecord; answers whether this call wrote it. */
export async function expireIfDue(deps: DuePassDeps, id: string, now: number): Promise<boolean> {
  let validTo = "";
  const { changed } = await updateRecord(deps, id, (r) => {
    if (!expiryDue(r, now)) return undefined;
    validTo = r.validTo ?? "";
    return expired(r);
  });
  if (changed) await deps.audit?.({ operation: "KeyMaterialExpired", keyId: id, status: "OK", detail: `valid_to ${validTo} passed: material destroyed, key PENDING_IMPORT` });
  return changed;
}

/**
 * One pass at `now` over this node's records (no store scan: the records in memory say which are
 * due; the store decides). A failure on one key is logged and the pass goes on; the next pass retries.
 */
export async function duePass(deps: DuePassDeps, now: number): Promise<DuePassResult> {
  const out: DuePassResult = { destroyed: [], expired: [] };
  const toDelete: string[] = [];
  const toExpire: string[] = [];
  for (const r of deps.records.values()) {
    if (deletionDue(r, now)) toDelete.push(r.id);
    else if (expiryDue(r, now)) toExpire.push(r.id);
  }
  for (const id of toDelete) {
    try {
      if (await destroyIfDue(deps, id, now)) out.destroyed.push(id);
    } catch (e) {
      deps.log?.(`deletion of key ${id}: ${(e as Error).message}; the next pass retries`);
    }
  }
  for (const id of toExpire) {
    try {
      if (await expireIfDue(deps, id, now)) out.expired.push(id);
    } catch (e) {
      if (!(e instanceof HsmError && e.code === Code.NotFound)) deps.log?.(`expiry of key ${id}: ${(e as Error).message}; the next pass retries`);
    }
  }
  return out;
}
