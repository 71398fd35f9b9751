/**
 * Offline verification of an audit log's hash chain: finds the first line that was edited, deleted,
 * inserted, reordered or garbled, and says where.
 */
import { stat } from "node:fs/promises";
import { Code, HsmError } from "../errors";
import { GENESIS_HASH, parseRecordLine, type AuditRecord } from "./entry";
import { readLines, type FileLine } from "./lines";

/** The kinds of damage {@link verifyAuditLog} reports. */
export type AuditProblemKind = "malformed" | "edited" | "broken-chain" | "deleted" | "inserted" | "reordered" | "truncated";

/** Where and how the chain breaks. */
export interface AuditProblem {
  /** 1-based line number in the file (for `truncated`: the line after the last one). */
  line: number;
  /** `seq` written on that line, when it could be read. */
  seq?: number;
  /** What happened. */
  kind: AuditProblemKind;
  /** Explanation for a person. */
  message: string;
}

/** Result of {@link verifyAuditLog}. */
export type AuditVerifyResult = { ok: true; entries: number; lastHash: string; warnings: string[] } | { ok: false; entries: number; problem: AuditProblem; warnings: string[] };

/** Anchors saved outside the log, checked by {@link verifyAuditLog}. */
export interface AuditVerifyOptions {
  /**
   * A `lastHash` saved earlier (from a verify or `AuditLog.lastHash`). The log must still contain the
   * entry with this hash; entries appended after it are fine. Otherwise: `truncated`.
   */
  expectLastHash?: string;
  /** The log must hold at least this many entries (a count saved earlier). Otherwise: `truncated`. */
  minEntries?: number;
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Verifies the chain of the log at `path`, streaming it (memory does not grow with the file), and
 * reports the first problem:
 *
 * - `malformed`: a line that is not a JSON audit record (garbled, missing or ill-typed fields);
 * - `edited`: a line whose content does not match its own hash, or that carries a field outside the
 *   allow-list;
 * - `deleted`: `seq` jumps forward and the missing entries appear nowhere later (reported at the
 *   line after the gap);
 * - `reordered`: `seq` jumps forward and a missing entry appears later in the file (reported at the
 *   first line out of place);
 * - `inserted`: `seq` repeats or goes backwards (a copied or forged line; when a forged line precedes
 *   the genuine one with the same `seq`, the forged one is reported), or a copy of a later line sits
 *   in a gap, or a line with the right `seq` is not chained to its predecessor while the next line
 *   carries the same `seq` and is;
 * - `broken-chain`: a line with the right `seq` whose `prev` is not the previous line's hash, which is
 *   what an entry edited and re-hashed (the line before) or replaced looks like;
 * - `truncated`: only with an anchor, see below.
 *
 * What cannot be detected from the file alone: the hash chain proves the entries are an unbroken
 * prefix of what was written, not that nothing came after. Removing the last entries (or the whole
 * file's tail, or every entry, replacing the file with an empty one), or rewriting the whole log with
 * freshly computed hashes, leaves a valid chain. Hashes are unkeyed, so whoever can write the file
 * can forge a consistent chain. Against that, save `entries` and `lastHash` outside the host (a
 * ticket, another machine, a WORM store) and pass them back as `minEntries` / `expectLastHash`: a
 * log that lost its anchored entry or shrank below the count is reported `truncated`.
 *
 * A last line without a trailing newline is an append cut short by a crash (never acknowledged, and
 * removed when the log is next opened): it is not counted and is reported in `warnings`.
 *
 * @throws HsmError NOT_FOUND when the file does not exist, INVALID_ARGUMENT for a bad anchor.
 */
export async function verifyAuditLog(path: string, options: AuditVerifyOptions = {}): Promise<AuditVerifyResult> {
  const expect = options.expectLastHash?.toLowerCase();
  if (expect !== undefined && !HEX64.test(expect)) {
    throw new HsmError(Code.InvalidArgument, "expectLastHash must be 64 hex digits");
  }
  const minEntries = options.minEntries;
  if (minEntries !== undefined && (!Number.isSafeInteger(minEntries) || minEntries < 0)) {
    throw new HsmError(Code.InvalidArgument, "minEntries must be a non-negative integer");
  }
  try {
    await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new HsmError(Code.NotFound, `audit log ${path} does not exist`);
    throw err;
  }

  const warnings: string[] = [];
  const it = readLines(path);
  /** Next complete line, or undefined at the end (an unterminated last line ends the file). */
  const next = async (): Promise<FileLine | undefined> => {
    const r = await it.next();
    if (r.done) return undefined;
    if (!r.value.terminated) {
      warnings.push(`line ${r.value.line} has no trailing newline: an append cut short, not counted`);
      return undefined;
    }
    return r.value;
  };
  /** Next line's record if it parses, for look-ahead. */
  const peekRecord = async (): Promise<AuditRecord | undefined> => {
    const fl = await next();
    if (fl === undefined) return undefined;
    const p = parseRecordLine(fl.text);
    return p.ok ? p.record : undefined;
  };

  let entries = 0;
  let prevSeq = 0;
  let prevHash = GENESIS_HASH;
  let prevLine = 0;
  let lastLine = 0;
  let anchorFound = expect === GENESIS_HASH;
  const fail = (problem: AuditProblem): AuditVerifyResult => ({ ok: false, entries, problem, warnings });

  try {
    for (let fl = await next(); fl !== undefined; fl = await next()) {
      lastLine = fl.line;
      const parsed = parseRecordLine(fl.text);
      if (!parsed.ok) {
        return fail({ line: fl.line, seq: parsed.seq, kind: parsed.kind, message: parsed.message });
      }
      const r = parsed.record;
      const expected = prevSeq + 1;
      if (r.seq === expected && r.prev === prevHash) {
        entries++;
        prevSeq = r.seq;
        prevHash = r.hash;
        prevLine = fl.line;
        if (r.hash === expect) anchorFound = true;
        continue;
      }
      const at = { line: fl.line, seq: r.seq };

      if (r.seq > expected) {
        // A gap: deleted, or the missing entries come later (reordered), or this line is a copy.
        let copyAt: number | undefined;
        let missingAt: number | undefined;
        for (let rest = await next(); rest !== undefined && copyAt === undefined; rest = await next()) {
          const p = parseRecordLine(rest.text);
          if (!p.ok) continue;
          if (p.record.hash === r.hash) copyAt = rest.line;
          else if (missingAt === undefined && p.record.seq >= expected && p.record.seq < r.seq) missingAt = rest.line;
        }
        if (copyAt !== undefined) {
          return fail({ ...at, kind: "inserted", message: `a copy of the entry at line ${copyAt} (seq ${r.seq}), placed where seq ${expected} belongs` });
        }
        if (missingAt !== undefined) {
          return fail({
            ...at,
            kind: "reordered",
            message: `seq ${r.seq} comes before seq ${expected}, which appears later (line ${missingAt}): entries were moved`,
          });
        }
        const missing = r.seq - expected;
        return fail({
          ...at,
          kind: "deleted",
          message:
            missing === 1 ? `seq ${expected} is missing before this line: an entry was deleted` : `seq ${expected} to ${r.seq - 1} are missing before this line: ${missing} entries were deleted`,
        });
      }

      if (r.seq <= prevSeq) {
        if (r.hash === prevHash) {
          return fail({ ...at, kind: "inserted", message: `a copy of the previous line (seq ${r.seq})` });
        }
        if (r.seq === prevSeq) {
          const after = await peekRecord();
          if (after !== undefined && after.seq === r.seq + 1 && after.prev === r.hash) {
            // The next entry chains onto this one: the line before, with the same seq, is the intruder.
            return fail({
              line: prevLine,
              seq: prevSeq,
              kind: "inserted",
              message: `seq ${prevSeq} appears twice (lines ${prevLine} and ${fl.line}); the chain continues from line ${fl.line}, so this one was inserted`,
            });
          }
          return fail({ ...at, kind: "inserted", message: `seq ${r.seq} appears twice (lines ${prevLine} and ${fl.line}): an entry was inserted` });
        }
        return fail({
          ...at,
          kind: "inserted",
          message: `seq ${r.seq} goes backwards after seq ${prevSeq}: a copied or forged entry was inserted`,
        });
      }

      // Right seq, wrong prev.
      const after = await peekRecord();
      if (after !== undefined && after.seq === r.seq && after.prev === prevHash) {
        return fail({
          ...at,
          kind: "inserted",
          message: `not chained to the previous entry, and the next line carries the same seq ${r.seq} and is: this one was inserted`,
        });
      }
      return fail({
        ...at,
        kind: "broken-chain",
        message:
          prevLine === 0
            ? "the first entry's prev is not the genesis hash: the start of the log was removed or replaced"
            : `prev is not the hash of the entry at line ${prevLine}: that entry was edited and re-hashed, or this one replaced`,
      });
    }
  } finally {
    await it.return(undefined);
  }

  if (expect !== undefined && !anchorFound) {
    return fail({
      line: lastLine + 1,
      kind: "truncated",
      message: `no entry has the expected hash ${expect}: the log was truncated or rewritten`,
    });
  }
  if (minEntries !== undefined && entries < minEntries) {
    return fail({
      line: lastLine + 1,
      kind: "truncated",
      message: `${entries} entries, expected at least ${minEntries}: the log was truncated`,
    });
  }
  return { ok: true, entries, lastHash: prevHash, warnings };
}
