/**
 * Who may touch a key: its owner, or a crypto user it is shared with (for crypto only). A pure
 * decision on a record, so that the guard can take it twice (on this node's copy, then on the
 * store's) and so that it is unit-testable without a store.
 */
import type { KeyRecord } from "../keys";

/**
 * `owner`: any action; `shared`: crypto only (owner-only actions answer PERMISSION_DENIED);
 * `none`: the caller must not learn the key exists (NOT_FOUND, the same as an unknown id).
 */
export type KeyAccess = "owner" | "shared" | "none";

/** The access `userId` has to `record` (undefined: no such key). */
export function keyAccess(record: KeyRecord | undefined, userId: string): KeyAccess {
  if (!record) return "none";
  if (record.owner?.userId === userId) return "owner";
  return record.shares?.some((s) => s.userId === userId) ? "shared" : "none";
}
