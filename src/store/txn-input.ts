/** Validation both state stores apply to a txn's input, so they refuse the same things the same way. */
import { invalid } from "../errors";
import type { Compare, Op } from "./types";

/** Throws INVALID_ARGUMENT unless `key` is a non-empty string. */
export function validateKey(key: unknown, what: string): asserts key is string {
  if (typeof key !== "string" || key.length === 0) throw invalid(`${what}: key must be a non-empty string`);
}

/**
 * Checks a txn's compares and ops (keys, compare kinds, integer revisions, one op per key, Buffer
 * values) and answers copies: the caller may reuse its buffers before the txn commits.
 */
export function checkTxnInput(compares: Compare[], ops: Op[]): { compares: Compare[]; ops: Op[] } {
  for (const c of compares) {
    validateKey(c.key, "compare");
    if (c.op !== "absent" && c.op !== "present" && c.op !== "modRevision") {
      throw invalid(`compare on ${String((c as { key: unknown }).key)}: unknown op ${String((c as { op: unknown }).op)}`);
    }
    if (c.op === "modRevision" && !Number.isSafeInteger(c.equals)) throw invalid(`compare on ${c.key}: modRevision must be an integer`);
  }
  const seen = new Set<string>();
  const owned: Op[] = ops.map((op) => {
    validateKey(op.key, op.type);
    if (seen.has(op.key)) throw invalid(`txn touches key ${op.key} more than once`);
    seen.add(op.key);
    if (op.type === "put") {
      if (!(op.value instanceof Uint8Array)) throw invalid(`put ${op.key}: value must be a Buffer`);
      return { type: "put", key: op.key, value: Buffer.from(op.value) };
    }
    if (op.type !== "delete") throw invalid(`unknown op type ${String((op as { type: unknown }).type)}`);
    return { type: "delete", key: op.key };
  });
  return { compares: compares.map((c) => ({ ...c })), ops: owned };
}
