import { exhausted, invalid } from "../errors";

/** Limits enforced at the edge of every call (named in configuration). */
export interface KeyLimits {
  maxPayloadBytes: number;
  maxBatchItems: number;
  maxLabelLength: number;
  maxRandomBytes: number;
  maxPageSize: number;
  maxRequestIdLength: number;
  maxOaepLabelBytes: number;
}

const LABEL_RE = /^[\p{L}\p{N} ._:/@+=-]+$/u;
/** A key id: the UUIDs hsmd gives keys, or any id of 1 to 64 URL-safe characters. */
export const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** A key label: required, at most limits.maxLabelLength characters of a safe set (INVALID_ARGUMENT otherwise). */
export function checkLabel(limits: KeyLimits, label: string): string {
  if (!label) throw invalid("label is required");
  if ([...label].length > limits.maxLabelLength) throw invalid(`label is longer than ${limits.maxLabelLength} characters`);
  if (!LABEL_RE.test(label)) throw invalid("label may hold letters, digits, spaces and . _ : / @ + = - only");
  return label;
}

/** A create's client request id ("" = none), at most limits.maxRequestIdLength characters. */
export function checkRequestId(limits: KeyLimits, rid: string): string | undefined {
  if (!rid) return undefined;
  if (rid.length > limits.maxRequestIdLength) throw invalid(`request_id is longer than ${limits.maxRequestIdLength} characters`);
  return rid;
}

/** A payload field: RESOURCE_EXHAUSTED over limits.maxPayloadBytes, INVALID_ARGUMENT when empty (unless allowed). */
export function checkPayload(limits: KeyLimits, name: string, b: Buffer, allowEmpty = false): Buffer {
  if (b.length > limits.maxPayloadBytes) throw exhausted(`${name} is ${b.length} bytes; the limit is ${limits.maxPayloadBytes} (limits.maxPayloadBytes)`);
  if (!allowEmpty && b.length === 0) throw invalid(`${name} is empty`);
  return b;
}

/** A batch's items: not empty, at most limits.maxBatchItems (RESOURCE_EXHAUSTED). */
export function checkBatch<T>(limits: KeyLimits, items: T[]): T[] {
  if (items.length === 0) throw invalid("items is empty");
  if (items.length > limits.maxBatchItems) throw exhausted(`batch has ${items.length} items; the limit is ${limits.maxBatchItems} (limits.maxBatchItems)`);
  return items;
}

/** Throws INVALID_ARGUMENT naming `field` unless `id` is a well-formed key id. */
export function checkKeyId(id: string, field = "key_id"): void {
  if (!id) throw invalid(`${field} is required`);
  if (!ID_RE.test(id)) throw invalid(`${field} "${id.slice(0, 80)}" is not a key id`);
}
