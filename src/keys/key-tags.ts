/** Key metadata (issue 13): a description and tags, their bounds, and the pure record changes that set them. */
import { invalid } from "../errors";
import type { KeyRecord } from "./record";

/** Characters a description holds at most. */
export const MAX_DESCRIPTION_LENGTH = 8192;
/** Tags a key holds at most (as KMS). */
export const MAX_TAGS = 50;
/** Characters of a tag key (1 to this) and of a tag value (0 to this). */
export const MAX_TAG_KEY_LENGTH = 128;
export const MAX_TAG_VALUE_LENGTH = 256;

/** Control, format, unassigned, private-use and surrogate characters (Unicode category C). */
const CONTROL_RE = /\p{C}/u;
/** The same, but tab and newlines, which a description may hold. */
const DESCRIPTION_BAD_RE = /[^\P{C}\t\n\r]/u;

const chars = (s: string) => [...s].length;

/** A description: at most {@link MAX_DESCRIPTION_LENGTH} characters, no control characters but tab and newlines (INVALID_ARGUMENT otherwise). */
export function checkDescription(d: string | undefined): string {
  const s = d ?? "";
  if (chars(s) > MAX_DESCRIPTION_LENGTH) throw invalid(`description is ${chars(s)} characters; the limit is ${MAX_DESCRIPTION_LENGTH}`);
  if (DESCRIPTION_BAD_RE.test(s)) throw invalid("description may not hold control characters (tab and newlines are allowed)");
  return s;
}

/** A tag key: 1 to {@link MAX_TAG_KEY_LENGTH} printable characters. */
export function checkTagKey(k: string, field = "tag key"): string {
  if (k.length === 0) throw invalid(`${field} is empty: a tag key is 1 to ${MAX_TAG_KEY_LENGTH} characters`);
  if (chars(k) > MAX_TAG_KEY_LENGTH) throw invalid(`${field} "${[...k].slice(0, 40).join("")}…" is longer than ${MAX_TAG_KEY_LENGTH} characters`);
  if (CONTROL_RE.test(k)) throw invalid(`${field} may hold printable characters only (no control characters)`);
  return k;
}

/** Tags to add: well-formed keys and values (INVALID_ARGUMENT naming the offending one). */
export function checkTags(tags: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(tags ?? {})) {
    checkTagKey(k);
    if (typeof v !== "string") throw invalid(`tag ${k}: the value must be a string`);
    if (chars(v) > MAX_TAG_VALUE_LENGTH) throw invalid(`tag ${k}: the value is longer than ${MAX_TAG_VALUE_LENGTH} characters`);
    if (CONTROL_RE.test(v)) throw invalid(`tag ${k}: the value may hold printable characters only (no control characters)`);
    out[k] = v;
  }
  if (Object.keys(out).length > MAX_TAGS) throw invalid(`a key holds at most ${MAX_TAGS} tags; ${Object.keys(out).length} were given`);
  return out;
}

/** The metadata fields of a new key's record (none set when empty). */
export function newKeyMetadata(req: { description?: string; tags?: Record<string, string> }): Pick<KeyRecord, "description" | "tags"> {
  const description = checkDescription(req.description);
  const tags = checkTags(req.tags);
  return { ...(description ? { description } : {}), ...(Object.keys(tags).length ? { tags } : {}) };
}

/** Sorted copy of a tag map (records compare by their JSON). */
const sorted = (t: Record<string, string>) => Object.fromEntries(Object.entries(t).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/** TagKey's change: adds or replaces `tags` (already checked); INVALID_ARGUMENT when the key would hold more than {@link MAX_TAGS}. */
export function withTags(r: KeyRecord, tags: Record<string, string>): KeyRecord | undefined {
  const next = sorted({ ...(r.tags ?? {}), ...tags });
  const n = Object.keys(next).length;
  if (n > MAX_TAGS) throw invalid(`key ${r.id} would hold ${n} tags; the limit is ${MAX_TAGS} (UntagKey some first)`);
  return JSON.stringify(next) === JSON.stringify(r.tags ?? {}) ? undefined : { ...r, tags: next };
}

/** UntagKey's change: removes `keys` (unknown ones are a no-op). */
export function withoutTags(r: KeyRecord, keys: string[]): KeyRecord | undefined {
  const cur = r.tags ?? {};
  if (!keys.some((k) => k in cur)) return undefined;
  const next = Object.fromEntries(Object.entries(cur).filter(([k]) => !keys.includes(k)));
  const { tags: _t, ...rest } = r;
  return Object.keys(next).length ? { ...rest, tags: next } : rest;
}

/** UpdateKeyDescription's change ("" removes it). */
export function withDescription(r: KeyRecord, description: string): KeyRecord | undefined {
  if ((r.description ?? "") === description) return undefined;
  const { description: _d, ...rest } = r;
  return description ? { ...rest, description } : rest;
}

/** ListKeys' tag filter: the key has tag `key` (with `value`, when not empty). */
export const hasTag = (r: KeyRecord, key: string, value: string | undefined): boolean => r.tags !== undefined && Object.hasOwn(r.tags, key) && (!value || r.tags[key] === value);
