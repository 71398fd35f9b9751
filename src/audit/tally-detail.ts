/**
 * The `detail` of a stream tally entry: the window's counts per operation and its span, as
 * `Sign×1234 Verify×12 in 2026-12-03T13:00:00.000Z/2026-12-03T13:00:01.000Z` (an ISO 8601 interval,
 * start/end). Kept in `detail` rather than new entry fields so the hash chain's format, `verify`,
 * `QueryAuditLog`, `hsmctl audit tail` and every other reader of the log carry it unchanged.
 */
import { MAX_DETAIL_LENGTH } from "./entry";

/** The operation name used for the counts: letters, digits, `_ . : / -` (anything else becomes `_`), at most 64 characters. */
export function tallyMethod(method: string): string {
  const m = method.replace(/[^A-Za-z0-9_.:/-]/g, "_").slice(0, 64);
  return m === "" ? "_" : m;
}

/**
 * The detail(s) for one window: one string in every real case (a key serves at most five kinds of
 * operation, well under {@link MAX_DETAIL_LENGTH}); when the counts cannot fit in one, they are
 * split over as many details as needed, each with the same span, so that none is ever cut.
 */
export function tallyDetails(counts: ReadonlyMap<string, number>, start: number, end: number): string[] {
  const span = ` in ${new Date(start).toISOString()}/${new Date(end).toISOString()}`;
  const room = MAX_DETAIL_LENGTH - span.length;
  const out: string[] = [];
  let cur = "";
  for (const [method, n] of counts) {
    const part = `${method}×${n}`;
    if (cur !== "" && cur.length + 1 + part.length > room) {
      out.push(cur + span);
      cur = "";
    }
    cur = cur === "" ? part : `${cur} ${part}`;
  }
  if (cur !== "") out.push(cur + span);
  return out;
}

/** The counts and span read back from a tally detail. */
export interface TallyDetail {
  /** Successful operations per operation name, in the window. */
  counts: Record<string, number>;
  /** The window's first and last instant, ISO 8601. */
  start: string;
  end: string;
}

const DETAIL = /^((?:[A-Za-z0-9_.:/-]+×\d+ )*[A-Za-z0-9_.:/-]+×\d+) in (\S+)\/(\S+)$/;

/**
 * Reads a tally entry's `detail` back (for tools and tests summing the counts of `CryptoStream`
 * entries); undefined when `detail` is not one.
 */
export function parseTallyDetail(detail: string | undefined): TallyDetail | undefined {
  const m = detail === undefined ? null : DETAIL.exec(detail);
  if (!m) return undefined;
  const counts: Record<string, number> = {};
  for (const part of m[1]!.split(" ")) {
    const at = part.lastIndexOf("×");
    counts[part.slice(0, at)] = (counts[part.slice(0, at)] ?? 0) + Number(part.slice(at + 1));
  }
  return { counts, start: m[2]!, end: m[3]! };
}
