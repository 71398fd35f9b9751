/**
 * The embedded store's in-memory state: entries by key, their sorted keys (for prefix lists and
 * pagination), and the committed changes still in the log (for watch replay). The log replay at open
 * and the write path both change it through {@link setEntry} only.
 */
import type { EventHistory } from "./event-history";
import type { SortedKeys } from "./sorted-keys";
import type { StoreEntry, WatchEvent } from "./types";

/** One key's change in a committed txn. */
export interface Change {
  key: string;
  entry: StoreEntry | null; // null: deleted
}

/** One committed revision and what it changed. */
export interface Commit {
  revision: number;
  changes: Change[];
}

/** Entries, their sorted keys, and the events with revision > the compaction revision (watch replay). */
export interface State {
  entries: Map<string, StoreEntry>;
  keys: SortedKeys;
  history: EventHistory;
}

/** A copy whose value the caller may change without changing the store. */
export function copyEntry(e: StoreEntry): StoreEntry {
  return { ...e, value: Buffer.from(e.value) };
}

/** The watch event of one change at its revision. */
export function eventOf(change: Change, revision: number): WatchEvent {
  return change.entry ? { type: "put", key: change.key, value: change.entry.value, revision } : { type: "delete", key: change.key, revision };
}

/** Sets (or, with null, deletes) one key in the entries and the sorted keys together. */
export function setEntry(state: State, key: string, entry: StoreEntry | null): void {
  if (entry) {
    if (!state.entries.has(key)) state.keys.insert(key);
    state.entries.set(key, entry);
  } else if (state.entries.delete(key)) {
    state.keys.delete(key);
  }
}
