/** Reading the audit log back, filtered and paged, for crypto officers. */
import { Code, HsmError } from "../errors";
import { isIsoTime, parseRecordLine, type AuditRecord } from "./entry";
import { readLines } from "./lines";

/** Default page size of {@link queryAuditLog}. */
export const DEFAULT_QUERY_LIMIT = 100;
/** Largest page size of {@link queryAuditLog}; larger limits are reduced to it. */
export const MAX_QUERY_LIMIT = 1000;

/**
 * QueryAuditLog's argument checks, made before the log is read: INVALID_ARGUMENT for a limit over
 * {@link MAX_QUERY_LIMIT} (the API refuses it rather than reduce it) and for an `afterSeq` (the
 * wire's uint64) past 2^53, which no sequence number reaches.
 */
export function checkQueryArgs(args: { limit: number; afterSeq: bigint }): void {
  if (args.limit > MAX_QUERY_LIMIT) throw new HsmError(Code.InvalidArgument, `limit must be at most ${MAX_QUERY_LIMIT}`);
  if (args.afterSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw new HsmError(Code.InvalidArgument, "after_seq is out of range");
}

/** Filters and paging of {@link queryAuditLog}. All filters must match (AND). */
export interface AuditQuery {
  /** Entries at or after this ISO 8601 time (inclusive). */
  from?: string;
  /** Entries before this ISO 8601 time (exclusive). */
  to?: string;
  /** Entries by this user (exact match). */
  user?: string;
  /** Entries about this key (exact match). */
  keyId?: string;
  /** Only entries whose `target` is this (e.g. the username a failed login tried). */
  target?: string;
  /** Entries for this RPC name (exact match). */
  operation?: string;
  /** Page size: default 100, at most 1000. */
  limit?: number;
  /** Only entries with `seq` greater than this: pass the previous page's `nextAfterSeq`. */
  afterSeq?: number;
}

/** One page of {@link queryAuditLog}. */
export interface AuditPage {
  /** Matching records in file order (oldest first, newest last). */
  entries: AuditRecord[];
  /** Present when more entries match: pass it as `afterSeq` to get the next page. */
  nextAfterSeq?: number;
  /** Lines that could not be read as a valid record and were left out (run verify to see why). */
  skipped: number;
}

/**
 * Returns the entries of the log at `path` matching `query`, oldest first, at most `limit` of them.
 * Streams the file line by line, so a big log is never loaded whole; stops at the first match past
 * the page. A missing file is an empty log. Lines that fail their own hash check (edited, garbled) are
 * left out and counted in `skipped`; a last line without a newline (an unfinished append) is ignored.
 *
 * @throws HsmError INVALID_ARGUMENT for a bad time, limit or afterSeq.
 */
export async function queryAuditLog(path: string, query: AuditQuery = {}): Promise<AuditPage> {
  const from = parseTime("from", query.from);
  const to = parseTime("to", query.to);
  const limitIn = query.limit ?? DEFAULT_QUERY_LIMIT;
  if (!Number.isSafeInteger(limitIn) || limitIn < 1) throw new HsmError(Code.InvalidArgument, "limit must be a positive integer");
  const limit = Math.min(limitIn, MAX_QUERY_LIMIT);
  const afterSeq = query.afterSeq ?? 0;
  if (!Number.isSafeInteger(afterSeq) || afterSeq < 0) {
    throw new HsmError(Code.InvalidArgument, "afterSeq must be a non-negative integer");
  }

  const entries: AuditRecord[] = [];
  let skipped = 0;
  let nextAfterSeq: number | undefined;
  try {
    for await (const fl of readLines(path)) {
      if (!fl.terminated) break;
      const p = parseRecordLine(fl.text);
      if (!p.ok) {
        skipped++;
        continue;
      }
      const r = p.record;
      if (r.seq <= afterSeq) continue;
      if (query.user !== undefined && r.user !== query.user) continue;
      if (query.keyId !== undefined && r.keyId !== query.keyId) continue;
      if (query.target !== undefined && r.target !== query.target) continue;
      if (query.operation !== undefined && r.operation !== query.operation) continue;
      if (from !== undefined || to !== undefined) {
        const t = Date.parse(r.time);
        if (from !== undefined && t < from) continue;
        if (to !== undefined && t >= to) continue;
      }
      if (entries.length === limit) {
        nextAfterSeq = entries[entries.length - 1].seq;
        break;
      }
      entries.push(r);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { entries: [], skipped: 0 };
    throw err;
  }
  return nextAfterSeq === undefined ? { entries, skipped } : { entries, nextAfterSeq, skipped };
}

function parseTime(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string" || !isIsoTime(value)) {
    throw new HsmError(Code.InvalidArgument, `${name} must be an ISO 8601 time with a timezone`);
  }
  return Date.parse(value);
}
