/**
 * Recovery of the embedded store at open: replays its log (log-format.ts) into the in-memory state,
 * cuts off a torn final write that was never acknowledged, and refuses to open a log that is damaged
 * anywhere an acknowledged write may follow.
 */
import { closeSync, fchmodSync, fsyncSync, ftruncateSync, openSync, statSync } from "node:fs";
import { Code, HsmError } from "../errors";
import { type Change, eventOf, setEntry, type State } from "./embedded-state";
import { FORMAT_VERSION, scanLines } from "./log-format";
import type { StoreEntry } from "./types";

/** What the replay found: the last revision, the compaction revision, and the log's good size. */
export interface Replayed {
  rev: number;
  compactRev: number;
  bytes: number;
  baseBytes: number;
}

function corrupt(path: string, offset: number, why: string): HsmError {
  return new HsmError(
    Code.FailedPrecondition,
    `state store log ${path} is corrupt at byte offset ${offset}: ${why}. Refusing to open it: acknowledged ` +
      `writes may follow this point. Restore the directory from a backup, or move the file away to inspect it.`,
  );
}

/**
 * Replays the log into state. A bad final write (torn, or failing its checksum) is cut off with a
 * warning: it was never acknowledged. A bad frame followed by a good frame of a later write is
 * corruption, and so is any inconsistency in good frames (revision gaps, a broken snapshot).
 */
export function replayLog(path: string, state: State, warn: (m: string) => void): Replayed {
  let rev = 0;
  let compactRev = 0;
  let baseBytes = 0;
  let goodEnd = 0;
  /** "none": before any frame; "snap": inside a snapshot; "log": txn frames */
  let phase: "none" | "snap" | "log" = "none";
  let snapCount = 0;
  let snapExpected = 0;
  let bad: { offset: number; reason: string } | undefined;

  const set = (key: string, entry: StoreEntry | null) => setEntry(state, key, entry);

  for (const line of scanLines(path)) {
    const f = line.frame;
    if (bad) {
      // Past a bad frame only the rest of that same final write may follow (a power loss can persist
      // its pages out of order). A frame of a later write means the bad one had been fsync'd: corrupt.
      if (f && (f.t !== "txn" || f.b > rev + 1)) throw corrupt(path, bad.offset, bad.reason);
      continue;
    }
    if (!f) {
      if (phase === "snap") throw corrupt(path, line.offset, "damaged frame inside the snapshot");
      bad = {
        offset: line.offset,
        reason: line.complete ? "frame fails its checksum or is malformed" : "frame is incomplete (no end of line)",
      };
      continue;
    }
    switch (f.t) {
      case "snap":
        if (phase !== "none") throw corrupt(path, line.offset, "snapshot frame after the start of the log");
        if (f.fmt !== FORMAT_VERSION) throw corrupt(path, line.offset, `unknown snapshot format ${f.fmt}`);
        phase = "snap";
        rev = f.r;
        compactRev = f.r;
        snapExpected = f.n;
        break;
      case "ent":
        if (phase !== "snap") throw corrupt(path, line.offset, "snapshot entry outside a snapshot");
        if (f.m > rev || f.c > f.m || f.ver < 1) throw corrupt(path, line.offset, "snapshot entry with impossible revisions");
        set(f.k, { key: f.k, value: Buffer.from(f.v, "base64"), modRevision: f.m, createRevision: f.c, version: f.ver });
        snapCount++;
        break;
      case "end":
        if (phase !== "snap" || f.r !== rev || f.n !== snapExpected || snapCount !== snapExpected) {
          throw corrupt(path, line.offset, "snapshot end does not match its start");
        }
        phase = "log";
        baseBytes = line.offset + line.length;
        break;
      case "txn": {
        if (phase === "snap") throw corrupt(path, line.offset, "snapshot not closed before the log continues");
        phase = "log";
        if (f.r !== rev + 1) throw corrupt(path, line.offset, `revision ${f.r} follows revision ${rev}`);
        if (f.b > f.r) throw corrupt(path, line.offset, `frame of revision ${f.r} claims a batch starting at ${f.b}`);
        rev = f.r;
        const changes: Change[] = [];
        for (const op of f.ops) {
          const prev = state.entries.get(op[1]);
          if (op[0] === "p") {
            const entry: StoreEntry = {
              key: op[1],
              value: Buffer.from(op[2], "base64"),
              modRevision: rev,
              createRevision: prev ? prev.createRevision : rev,
              version: prev ? prev.version + 1 : 1,
            };
            set(op[1], entry);
            changes.push({ key: op[1], entry });
          } else {
            set(op[1], null);
            changes.push({ key: op[1], entry: null });
          }
        }
        state.history.append(changes.map((c) => eventOf(c, rev)));
        break;
      }
    }
    goodEnd = line.offset + line.length;
  }
  if (phase === "snap") {
    // A snapshot is renamed into place only once complete and fsync'd: an unfinished one is damage.
    throw corrupt(path, goodEnd, "the log ends inside its snapshot");
  }
  const size = statSync(path).size;
  if (goodEnd < size) {
    warn(`discarding ${size - goodEnd} byte(s) of an incomplete final write at offset ${goodEnd} of ${path} ` + `(${bad?.reason ?? "torn frame"}); it was never acknowledged`);
    const fd = openSync(path, "r+");
    try {
      ftruncateSync(fd, goodEnd);
      fchmodSync(fd, 0o600);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  return { rev, compactRev, bytes: goodEnd, baseBytes };
}
