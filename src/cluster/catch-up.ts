/**
 * A cluster node's start-up catch-up: from the revision it had applied when it stopped (its
 * watermark row, else its local `applied-revision` file) it proves only the records that changed
 * since, when the store can still tell those changes (StateStore.hasHistorySince); otherwise, when
 * asked (`hsmd start --full-check`) or when that revision is unknown, it runs the full check: every
 * record proven. Proving a record unwraps it once into the device (KeyRecords.prove), so a bad record
 * is found at start, not at first use. Work is bounded (APPLY_CONCURRENCY).
 */
import { type KeyRecord, decodeRecord, lacksMaterial, recordKey, residencyOf } from "../keys";
import type { StateStore } from "../store";
import { APPLY_CONCURRENCY } from "./slots";

/** Records read per store call by the full check. */
const FULL_CHECK_PAGE = 500;
const KEYS_PREFIX = "keys/";

/** Runs `fn` over `items`, APPLY_CONCURRENCY at a time. */
async function bounded<T>(items: T[], fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(APPLY_CONCURRENCY, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** What the catch-up needs of the key records (KeyService.records). */
export interface CatchUpRecords {
  ids(): Iterable<string>;
  has(id: string): boolean;
  /** The revision that last changed a record (undefined when unknown: it is proven). */
  modRevision(id: string): number | undefined;
  /** Unwraps a record that carries its material once into the device; throws when it cannot. */
  prove(r: KeyRecord): Promise<void>;
}

/** What {@link catchUp} works on. */
export interface CatchUpOptions {
  store: StateStore;
  records: CatchUpRecords;
  /** The revision this node had applied when it stopped (undefined: unknown). */
  since: number | undefined;
  /** `hsmd start --full-check`: prove every record whatever the store can tell. */
  fullCheck?: boolean;
  /** Records that could not be proven (id → reason), shown by the status pages. */
  failures?: Map<string, string>;
  log?: (msg: string) => void;
}

/** What the catch-up did. */
export interface CatchUpResult {
  /** "catch-up": only the records changed since `since`; "full": every record. */
  mode: "catch-up" | "full";
  /** Why the full check ran (undefined for a catch-up). */
  reason?: string;
  since: number | undefined;
  /** Records proven (those that failed not counted). */
  proven: number;
  /** Ids of records that could not be proven. */
  failed: string[];
  ms: number;
}

/** Why the full check must run instead of a catch-up from `since`, or undefined when a catch-up is enough. */
export async function fullCheckReason(store: StateStore, since: number | undefined, asked: boolean): Promise<string | undefined> {
  if (asked) return "asked for (--full-check)";
  if (since === undefined) return "this node's applied revision is unknown (no watermark row, no applied-revision file)";
  if (!store.hasHistorySince) return "the store cannot tell which records changed since a revision";
  const known = await store.hasHistorySince(since).catch(() => false);
  return known ? undefined : `the store has compacted past revision ${since}`;
}

/**
 * Proves the records that changed since `since` (or every record, see {@link fullCheckReason}), each
 * read with its material from the store, APPLY_CONCURRENCY at a time, and logs what it did. Keys that
 * live only in the device that generated them are never proven (they cannot be unwrapped elsewhere).
 */
export async function catchUp(o: CatchUpOptions): Promise<CatchUpResult> {
  const t0 = Date.now();
  const reason = await fullCheckReason(o.store, o.since, !!o.fullCheck);
  const since = o.since ?? 0;
  const failed: string[] = [];
  let proven = 0;
  let seen = 0;
  const one = async (r: KeyRecord) => {
    if (!o.records.has(r.id) || residencyOf(r) === "device" || lacksMaterial(r)) return; // deleted meanwhile (the applier follows), or not provable here
    const id = r.id;
    try {
      await o.records.prove(r);
      o.failures?.delete(id);
      proven++;
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      o.failures?.set(id, msg);
      failed.push(id);
      o.log?.(`${reason === undefined ? "catch-up" : "full check"}: key ${id} cannot be materialized: ${msg}`);
    }
  };
  if (reason === undefined) {
    // Only the changed records, each read with its material (the local copy holds none).
    const ids: string[] = [];
    for (const id of o.records.ids()) {
      const mod = o.records.modRevision(id);
      if (mod === undefined || mod > since) ids.push(id);
    }
    seen = ids.length;
    await bounded(ids, async (id) => {
      const e = await o.store.get(recordKey(id));
      if (e) await one(decodeRecord(e.value));
    });
  } else {
    // Every record, read page by page with its material.
    let after: string | undefined;
    for (;;) {
      const page = await o.store.list(KEYS_PREFIX, { startAfter: after, limit: FULL_CHECK_PAGE });
      if (!page.length) break;
      after = page[page.length - 1]!.key;
      seen += page.length;
      await bounded(
        page.map((e) => decodeRecord(e.value)),
        one,
      );
    }
  }
  const ms = Date.now() - t0;
  const tail = `${proven} proven in ${ms} ms${failed.length ? `, ${failed.length} FAILED: ${failed.join(", ")}` : ""}`;
  if (reason === undefined) o.log?.(`catch-up: ${seen} records changed since revision ${since}: ${tail}`);
  else o.log?.(`full check: ${reason}: ${seen} records: ${tail}`);
  return { mode: reason === undefined ? "catch-up" : "full", reason, since: o.since, proven, failed, ms };
}
