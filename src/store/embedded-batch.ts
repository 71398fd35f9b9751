/**
 * The embedded store's txn evaluation for one group-commit batch: each txn's compares are checked
 * against the state as the txns before it in the batch left it (arrival order, as if one at a time),
 * and each successful txn that changes something gets the next revision and one log frame. Pure: the
 * caller writes the frames durably and only then applies the commits.
 */
import type { Commit, Change } from "./embedded-state";
import { encodeFrame, type TxnOp } from "./log-format";
import type { Compare, Op, StoreEntry, TxnResult } from "./types";

/** The outcome of a batch: the last revision, the frames to append, the commits, one result per txn. */
export interface EvaluatedBatch {
  rev: number;
  lines: string[];
  committed: Commit[];
  results: TxnResult[];
}

/** Evaluates `batch` (in order) over `entries` at revision `startRev`; changes neither. */
export function evaluateBatch(entries: Map<string, StoreEntry>, startRev: number, batch: { compares: Compare[]; ops: Op[] }[]): EvaluatedBatch {
  const overlay = new Map<string, StoreEntry | null>();
  const lookup = (key: string): StoreEntry | undefined => {
    const o = overlay.get(key);
    if (o !== undefined) return o ?? undefined;
    return entries.get(key);
  };
  const firstRev = startRev + 1;
  let rev = startRev;
  const lines: string[] = [];
  const committed: Commit[] = [];
  const results: TxnResult[] = [];
  for (const p of batch) {
    const holds = p.compares.every((c) => {
      const e = lookup(c.key);
      switch (c.op) {
        case "absent":
          return e === undefined;
        case "present":
          return e !== undefined;
        case "modRevision":
          return (e?.modRevision ?? 0) === c.equals;
      }
    });
    if (!holds) {
      results.push({ succeeded: false, revision: rev });
      continue;
    }
    const changes: Change[] = [];
    const frameOps: TxnOp[] = [];
    const next = rev + 1;
    for (const op of p.ops) {
      const prev = lookup(op.key);
      if (op.type === "put") {
        changes.push({
          key: op.key,
          entry: {
            key: op.key,
            value: op.value,
            modRevision: next,
            createRevision: prev ? prev.createRevision : next,
            version: prev ? prev.version + 1 : 1,
          },
        });
        frameOps.push(["p", op.key, op.value.toString("base64")]);
      } else if (prev) {
        changes.push({ key: op.key, entry: null });
        frameOps.push(["d", op.key]);
      }
    }
    if (changes.length === 0) {
      // Nothing to change (e.g. deleting an absent key): no new revision, as in etcd.
      results.push({ succeeded: true, revision: rev });
      continue;
    }
    rev = next;
    for (const c of changes) overlay.set(c.key, c.entry);
    committed.push({ revision: rev, changes });
    lines.push(encodeFrame({ t: "txn", r: rev, b: firstRev, ops: frameOps }));
    results.push({ succeeded: true, revision: rev });
  }
  return { rev, lines, committed, results };
}
