/**
 * The listing index of this node's key records: for each crypto user, the ids of the keys it owns
 * and of those it may see (owned or shared with it), each an ordered set, so that ListKeys pages a
 * user's keys and DeleteUser counts them without scanning every record (a million per cluster).
 * {@link KeyRecords} keeps it current as records come and go; it holds ids only, never records.
 */
import { SortedKeys } from "../store";
import type { KeyRecord } from "./record";

/** The user ids a record is indexed under: its owner and every user it is shared with. */
function viewersOf(r: KeyRecord): string[] {
  const out: string[] = [];
  if (r.owner?.userId) out.push(r.owner.userId);
  for (const s of r.shares ?? []) if (s.userId && !out.includes(s.userId)) out.push(s.userId);
  return out;
}

/**
 * Key ids by owner and by viewer (owner or share), and all ids, each in ascending order. Adding a
 * record twice is harmless (sets); a record's index entries go with {@link remove} given the record
 * as it was added (KeyRecords passes its previous copy before adding the new one). Callers that
 * need certainty re-check access on the records a page names: an entry is an id, not a grant.
 */
export class OwnerIndex {
  /** userId → ids of the keys it owns. */
  private readonly owned = new Map<string, SortedKeys>();
  /** userId → ids of the keys it owns or that are shared with it. */
  private readonly visible = new Map<string, SortedKeys>();
  /** Every indexed id (records without an owner too: those made before users existed). */
  private readonly all = new SortedKeys();

  /** Ids indexed, all users together. */
  get size(): number {
    return this.all.size;
  }

  /** Indexes a record under its owner and the users it is shared with. */
  add(r: KeyRecord): void {
    this.all.insert(r.id);
    if (r.owner?.userId) setOf(this.owned, r.owner.userId).insert(r.id);
    for (const u of viewersOf(r)) setOf(this.visible, u).insert(r.id);
  }

  /** Removes a record's entries (the record as it was added). */
  remove(r: KeyRecord): void {
    this.all.delete(r.id);
    if (r.owner?.userId) dropFrom(this.owned, r.owner.userId, r.id);
    for (const u of viewersOf(r)) dropFrom(this.visible, u, r.id);
  }

  /** How many keys the user (by id) owns. */
  ownedCount(userId: string): number {
    return this.owned.get(userId)?.size ?? 0;
  }

  /** How many keys the user (by id) may see: owned, or shared with it. */
  visibleCount(userId: string): number {
    return this.visible.get(userId)?.size ?? 0;
  }

  /**
   * Up to `limit` ids of the keys owned by or shared with the user, ascending, strictly after `after`
   * ("" for the first page).
   */
  page(userId: string, after: string, limit: number): string[] {
    const set = this.visible.get(userId);
    return set ? take(set, after, limit) : [];
  }

  /** Up to `limit` of every indexed id, ascending, strictly after `after` (listing with no viewer). */
  pageAll(after: string, limit: number): string[] {
    return take(this.all, after, limit);
  }
}

function setOf(m: Map<string, SortedKeys>, userId: string): SortedKeys {
  let s = m.get(userId);
  if (!s) {
    s = new SortedKeys();
    m.set(userId, s);
  }
  return s;
}

function dropFrom(m: Map<string, SortedKeys>, userId: string, id: string): void {
  const s = m.get(userId);
  if (!s) return;
  s.delete(id);
  if (s.size === 0) m.delete(userId);
}

function take(set: SortedKeys, after: string, limit: number): string[] {
  const out: string[] = [];
  if (limit <= 0) return out;
  for (const id of set.from(after, true)) {
    out.push(id);
    if (out.length >= limit) break;
  }
  return out;
}
