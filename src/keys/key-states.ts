/**
 * Key states (issue 13, as KMS's KeyState): ENABLED, DISABLED, PENDING_DELETION, PENDING_IMPORT.
 * Only ENABLED keys are used for crypto ({@link needEnabled}); the transitions are pure record
 * changes for updateRecord (record-update.ts), so concurrent changes are never lost.
 */
import { invalid, precondition } from "../errors";
import { stateOf, type KeyRecord } from "./record";

/** What scheduling a deletion needs to know (config.lifecycle). */
export interface DeletionWindow {
  /** Length of a day (ms): shorter only in tests. */
  dayMs: number;
  deletionWindowDays: { min: number; max: number };
}

/**
 * FAILED_PRECONDITION unless the key is ENABLED: the message names the key, its state and what
 * brings it back. Every device use (KeyRecords.withKey) and GetPublicKey go through it.
 */
export function needEnabled(r: KeyRecord): void {
  const s = stateOf(r);
  if (s === "ENABLED") return;
  if (s === "DISABLED") throw precondition(`key ${r.id} is DISABLED: EnableKey to use it`);
  if (s === "PENDING_DELETION") throw precondition(`key ${r.id} is PENDING_DELETION (destroyed at ${r.deletionDate ?? "?"}): CancelKeyDeletion then EnableKey to use it`);
  if (s === "PENDING_IMPORT") throw precondition(`key ${r.id} is PENDING_IMPORT (its material expired at ${r.validTo ?? "?"}): ImportKey with key_id ${r.id} and the same material to use it again`);
  throw precondition(`key ${r.id} is in state ${String(s)}: it cannot be used`);
}

/** EnableKey's change: DISABLED → ENABLED; ENABLED is a no-op; the other states are refused. */
export function enabled(r: KeyRecord): KeyRecord | undefined {
  const s = stateOf(r);
  if (s === "ENABLED") return undefined;
  if (s === "PENDING_DELETION") throw precondition(`key ${r.id} is PENDING_DELETION: cancel the deletion first (CancelKeyDeletion), then EnableKey`);
  if (s === "PENDING_IMPORT") throw precondition(`key ${r.id} is PENDING_IMPORT: import its material again (ImportKey with key_id ${r.id})`);
  return { ...r, state: "ENABLED" };
}

/** DisableKey's change: ENABLED → DISABLED; DISABLED is a no-op; the other states are refused. */
export function disabled(r: KeyRecord): KeyRecord | undefined {
  const s = stateOf(r);
  if (s === "DISABLED") return undefined;
  if (s === "PENDING_DELETION") throw precondition(`key ${r.id} is PENDING_DELETION: it is already unusable; CancelKeyDeletion first to keep it`);
  if (s === "PENDING_IMPORT") throw precondition(`key ${r.id} is PENDING_IMPORT: it is already unusable; import its material again (ImportKey with key_id ${r.id})`);
  return { ...r, state: "DISABLED" };
}

/** The window of a ScheduleKeyDeletion in days: 0 means the max; outside the bounds INVALID_ARGUMENT naming them. */
export function windowDays(days: number, w: DeletionWindow): number {
  const { min, max } = w.deletionWindowDays;
  if (days === 0) return max;
  if (!Number.isInteger(days) || days < min || days > max) throw invalid(`pending_window_days must be ${min} to ${max} (lifecycle.deletionWindowDays; 0 means ${max}); got ${days}`);
  return days;
}

/**
 * ScheduleKeyDeletion's change: → PENDING_DELETION with deletionDate `now + days`, the state it left
 * kept for CancelKeyDeletion. A key already pending deletion is refused (cancel first to change the window).
 */
export function scheduledForDeletion(r: KeyRecord, deletionDate: string): KeyRecord {
  const s = stateOf(r);
  if (s === "PENDING_DELETION") throw precondition(`key ${r.id} is already PENDING_DELETION (destroyed at ${r.deletionDate}): CancelKeyDeletion first to change the window`);
  return { ...r, state: "PENDING_DELETION", deletionDate, stateBeforeDeletion: s };
}

/** CancelKeyDeletion's change: PENDING_DELETION → the state the key had before (DISABLED for records that did not keep it). */
export function deletionCancelled(r: KeyRecord): KeyRecord {
  const s = stateOf(r);
  if (s !== "PENDING_DELETION") throw precondition(`key ${r.id} is ${s}, not PENDING_DELETION: there is no deletion to cancel`);
  const { deletionDate: _d, stateBeforeDeletion: before, ...rest } = r;
  return { ...rest, state: before && before !== "PENDING_DELETION" ? before : "DISABLED" };
}

/** ImportKey's valid_to: "" (never expires) or an RFC 3339 time in the future (INVALID_ARGUMENT otherwise); answered normalized (ISO 8601, UTC). */
export function checkValidTo(v: string | undefined, now = Date.now()): string {
  if (!v) return "";
  const t = RFC3339_RE.test(v) ? Date.parse(v) : Number.NaN;
  if (Number.isNaN(t)) throw invalid(`valid_to "${v.slice(0, 40)}" is not an RFC 3339 time (for example 2030-01-31T12:00:00Z)`);
  if (t <= now) throw invalid(`valid_to ${v} is not in the future: give a later time, or none for a key that never expires`);
  return new Date(t).toISOString();
}
const RFC3339_RE = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** Whether the record's wrapped material was removed (PENDING_IMPORT): nothing to materialize or prove. */
export const lacksMaterial = (r: KeyRecord): boolean => stateOf(r) === "PENDING_IMPORT";

/** The expiry's change: → PENDING_IMPORT with every version's wrapped material removed. */
export function expired(r: KeyRecord): KeyRecord {
  return { ...r, state: "PENDING_IMPORT", versions: r.versions.map(({ material: _m, ...v }) => v) };
}
