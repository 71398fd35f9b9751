/**
 * The audit entry: an allow-list of fields, their validation, the canonical serialization the hash
 * chain is computed over, and the parser used by open, verify and query.
 *
 * Only the fields named in {@link AUDIT_FIELDS} are ever copied out of the caller's object, so a
 * password, token, plaintext or key that rides along on it is dropped, never written.
 */
import { createHash } from "node:crypto";
import { Code, HsmError } from "../errors";

/** `prev` of the first line: 64 zeros. */
export const GENESIS_HASH = "0".repeat(64);

/** Longest `detail` accepted, in UTF-16 code units. */
export const MAX_DETAIL_LENGTH = 200;

/** The gRPC status names an entry's `status` may take. */
export const GRPC_STATUS_NAMES: readonly string[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/**
 * What the caller records about one RPC. This is an allow-list: {@link AuditLog.append} copies only
 * these properties; anything else on the object (a password, a token, plaintext) is ignored.
 * Strings must not contain control characters. An optional field given as `""` is treated as absent
 * (proto3 strings default to `""`).
 */
export interface AuditEntry {
  /** ISO 8601 time with a timezone (`2024-05-01T12:00:00.000Z`); the log sets the current time if absent. */
  time?: string;
  /** Node that served the RPC (1–128 chars); defaults to the log's `node`. */
  node?: string;
  /** Username of the caller, absent when unauthenticated (1–64 chars). */
  user?: string;
  /** Role of the caller (`CO`, `CU`, `AU`; letters, digits, `_`, `-`, 1–32 chars). */
  role?: string;
  /** RPC name, e.g. `hsmd.v1.Keys/CreateKey` (1–128 chars). */
  operation: string;
  /** Key the RPC acted on (1–128 chars). */
  keyId?: string;
  /** Other subject acted on, e.g. a username for user management (1–128 chars). */
  target?: string;
  /** gRPC status name of the answer: `OK`, `PERMISSION_DENIED`, … (see {@link GRPC_STATUS_NAMES}). */
  status: string;
  /** Request id, for correlating with other logs (1–128 chars). */
  requestId?: string;
  /** Peer address of the client (1–256 chars). */
  client?: string;
  /** Short free text such as `quorum approval 2/3` (1–200 chars). Never put secrets here. */
  detail?: string;
}

/** An entry as stored: `time` and `node` resolved. */
export type StoredAuditEntry = AuditEntry & { time: string; node: string };

/** One line of the log: the chain fields followed by the entry. */
export type AuditRecord = { seq: number; prev: string; hash: string } & StoredAuditEntry;

type Field = keyof AuditEntry;

/** Entry fields in the fixed order used for hashing and writing. */
export const AUDIT_FIELDS: readonly Field[] = ["time", "node", "user", "role", "operation", "keyId", "target", "status", "requestId", "client", "detail"];

const REQUIRED: ReadonlySet<Field> = new Set<Field>(["time", "node", "operation", "status"]);
const MAX: Record<Field, number> = {
  time: 40,
  node: 128,
  user: 64,
  role: 32,
  operation: 128,
  keyId: 128,
  target: 128,
  status: 32,
  requestId: 128,
  client: 256,
  detail: MAX_DETAIL_LENGTH,
};
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;
const ROLE = /^[A-Za-z][A-Za-z0-9_-]*$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const HEX64 = /^[0-9a-f]{64}$/;
const STATUS = new Set(GRPC_STATUS_NAMES);

/** True when `s` is an ISO 8601 timestamp with a timezone that Date can parse. */
export function isIsoTime(s: string): boolean {
  return ISO_TIME.test(s) && !Number.isNaN(Date.parse(s));
}

/** Why a field value is not acceptable, or undefined when it is. */
function fieldProblem(field: Field, value: unknown): string | undefined {
  if (typeof value !== "string") return `${field} must be a string`;
  if (value.length === 0) return `${field} must not be empty`;
  if (value.length > MAX[field]) return `${field} is longer than ${MAX[field]} characters`;
  if (CONTROL.test(value)) return `${field} contains a control character`;
  if (field === "time" && !isIsoTime(value)) return "time must be an ISO 8601 timestamp with a timezone";
  if (field === "status" && !STATUS.has(value)) return `status ${JSON.stringify(value)} is not a gRPC status name`;
  if (field === "role" && !ROLE.test(value)) return "role must be letters, digits, '_' or '-'";
  return undefined;
}

/**
 * Copies the allow-listed fields of `input` into a fresh object in canonical order, filling `time`
 * (now) and `node` (the log's) when absent, and validates them.
 *
 * @throws HsmError INVALID_ARGUMENT naming the first bad field.
 */
export function normalizeEntry(input: AuditEntry, node: string, now: () => Date = () => new Date()): StoredAuditEntry {
  if (input === null || typeof input !== "object") throw new HsmError(Code.InvalidArgument, "audit entry must be an object");
  const src = input as unknown as Record<string, unknown>;
  const out: Record<string, string> = {};
  for (const f of AUDIT_FIELDS) {
    let v = src[f];
    if (v === "" && !REQUIRED.has(f)) v = undefined;
    if (v === undefined && f === "time") v = now().toISOString();
    if (v === undefined && f === "node") v = node;
    if (v === undefined) {
      if (REQUIRED.has(f)) throw new HsmError(Code.InvalidArgument, `audit entry: ${f} is required`);
      continue;
    }
    const problem = fieldProblem(f, v);
    if (problem) throw new HsmError(Code.InvalidArgument, `audit entry: ${problem}`);
    out[f] = v as string;
  }
  return out as unknown as StoredAuditEntry;
}

/**
 * The canonical serialization the hash is computed over: `JSON.stringify` of
 * `{seq, prev, <entry fields in AUDIT_FIELDS order, absent ones omitted>}`.
 */
export function canonicalize(seq: number, prev: string, entry: StoredAuditEntry): string {
  const o: Record<string, unknown> = { seq, prev };
  const e = entry as unknown as Record<string, unknown>;
  for (const f of AUDIT_FIELDS) if (e[f] !== undefined) o[f] = e[f];
  return JSON.stringify(o);
}

/** sha256 hex of the UTF-8 of {@link canonicalize}. */
export function hashEntry(seq: number, prev: string, entry: StoredAuditEntry): string {
  return createHash("sha256")
    .update(canonicalize(seq, prev, entry), "utf8")
    .digest("hex");
}

/** Builds the record and the line (without the newline) written for it. */
export function makeRecord(seq: number, prev: string, entry: StoredAuditEntry): { record: AuditRecord; line: string } {
  const hash = hashEntry(seq, prev, entry);
  const record = { seq, prev, hash } as AuditRecord;
  const e = entry as unknown as Record<string, unknown>;
  const r = record as unknown as Record<string, unknown>;
  for (const f of AUDIT_FIELDS) if (e[f] !== undefined) r[f] = e[f];
  return { record, line: JSON.stringify(record) };
}

/** Result of {@link parseRecordLine}: a record, or the kind of problem and why. */
export type ParsedLine = { ok: true; record: AuditRecord } | { ok: false; kind: "malformed" | "edited"; message: string; seq?: number };

/**
 * Parses and checks one line on its own (not its place in the chain): JSON object, chain fields
 * well-formed (`malformed` otherwise), no field outside the allow-list and the hash matching the
 * content (`edited` otherwise), entry fields valid (`malformed` otherwise).
 */
export function parseRecordLine(text: string): ParsedLine {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { ok: false, kind: "malformed", message: "not valid JSON" };
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    return { ok: false, kind: "malformed", message: "not a JSON object" };
  }
  const o = v as Record<string, unknown>;
  const seq = o.seq;
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) {
    return { ok: false, kind: "malformed", message: "seq is missing or not a positive integer" };
  }
  if (typeof o.prev !== "string" || !HEX64.test(o.prev)) {
    return { ok: false, kind: "malformed", seq, message: "prev is missing or not 64 hex digits" };
  }
  if (typeof o.hash !== "string" || !HEX64.test(o.hash)) {
    return { ok: false, kind: "malformed", seq, message: "hash is missing or not 64 hex digits" };
  }
  const allowed = new Set<string>(["seq", "prev", "hash", ...AUDIT_FIELDS]);
  for (const k of Object.keys(o)) {
    if (!allowed.has(k)) return { ok: false, kind: "edited", seq, message: `field ${JSON.stringify(k)} is not an audit field` };
  }
  const canonical: Record<string, unknown> = { seq, prev: o.prev };
  for (const f of AUDIT_FIELDS) if (o[f] !== undefined) canonical[f] = o[f];
  const actual = createHash("sha256").update(JSON.stringify(canonical), "utf8").digest("hex");
  if (actual !== o.hash) {
    return { ok: false, kind: "edited", seq, message: "content does not match its hash (the entry was changed)" };
  }
  for (const f of AUDIT_FIELDS) {
    const val = o[f];
    if (val === undefined) {
      if (REQUIRED.has(f)) return { ok: false, kind: "malformed", seq, message: `${f} is missing` };
      continue;
    }
    const problem = fieldProblem(f, val);
    if (problem) return { ok: false, kind: "malformed", seq, message: problem };
  }
  return { ok: true, record: o as unknown as AuditRecord };
}
