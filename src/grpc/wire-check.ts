/**
 * A cheap look at a request's protobuf wire format before ts-proto decodes it. Decoding allocates
 * an object per element of a repeated field and trusts every tag: a 5 MiB BatchEncrypt of 2.6 M
 * empty items blocked the event loop for seconds, and malformed bytes made the generated decoder
 * throw (grpc-js then answers INTERNAL). This scan allocates nothing per element: it walks the
 * tags of the message and of its known sub-messages, refuses what is not a valid message of the
 * request's type (INVALID_ARGUMENT) and counts repeated fields against `limits.maxBatchItems`
 * (RESOURCE_EXHAUSTED), so that only well-formed requests of bounded shape reach the decoder.
 *
 * The shapes come from the .proto descriptors (@grpc/proto-loader), never from a hand list.
 */
import { isUtf8 } from "node:buffer";
import type { PackageDefinition } from "@grpc/proto-loader";

/** How a field travels on the wire (https://protobuf.dev/programming-guides/encoding/). */
export type FieldKind = "varint" | "fixed64" | "fixed32" | "bytes" | "string" | "message";

/** One field of a message, as far as the wire format cares. */
export interface FieldShape {
  /** The field's name in the .proto (snake_case), for messages a person reads. */
  readonly name: string;
  readonly kind: FieldKind;
  /** The .proto type (`bool`, `string`, `hsm.v1.SignRequest`), for messages. */
  readonly type: string;
  readonly repeated: boolean;
  /** The message type of a `message` field. */
  readonly message?: MessageShape;
  /** Position of the field in its message (0-based): where the scan keeps its element count. */
  readonly index: number;
}

/** A message type: its full name (`hsm.v1.SignRequest`) and its fields by number. */
export interface MessageShape {
  readonly name: string;
  readonly fields: ReadonlyMap<number, FieldShape>;
  /** The fields by number for numbers up to 32 (a lookup without hashing, for the scan's hot loop). */
  readonly byNumber: ReadonlyArray<FieldShape | undefined>;
}

/** What the scan enforces (from `limits` in the configuration). */
export interface WireLimits {
  /** Largest request, in bytes (`limits.maxMessageBytes`). */
  readonly maxMessageBytes: number;
  /** Most elements in one repeated field, batch items included (`limits.maxBatchItems`). */
  readonly maxBatchItems: number;
}

/** Why a request is refused before it is decoded. */
export interface WireProblem {
  readonly code: "INVALID_ARGUMENT" | "RESOURCE_EXHAUSTED";
  readonly message: string;
}

/** Deeper than this is refused: the hsm.v1 requests nest three levels at most. */
export const MAX_NESTING = 16;

const WIRE_TYPE_NAMES = ["varint", "64-bit", "length-delimited", "start-group", "end-group", "32-bit", "6", "7"];
const EXPECTED_WIRE: Record<FieldKind, number> = { varint: 0, fixed64: 1, fixed32: 5, bytes: 2, string: 2, message: 2 };
const KIND_OF: Record<string, FieldKind> = {
  TYPE_INT32: "varint",
  TYPE_INT64: "varint",
  TYPE_UINT32: "varint",
  TYPE_UINT64: "varint",
  TYPE_SINT32: "varint",
  TYPE_SINT64: "varint",
  TYPE_BOOL: "varint",
  TYPE_ENUM: "varint",
  TYPE_FIXED64: "fixed64",
  TYPE_SFIXED64: "fixed64",
  TYPE_DOUBLE: "fixed64",
  TYPE_FIXED32: "fixed32",
  TYPE_SFIXED32: "fixed32",
  TYPE_FLOAT: "fixed32",
  TYPE_STRING: "string",
  TYPE_BYTES: "bytes",
  TYPE_MESSAGE: "message",
};

interface DescriptorField {
  name: string;
  number: number;
  label: string;
  type: string;
  typeName: string;
}
interface Descriptor {
  name: string;
  field: DescriptorField[];
  nestedType: Descriptor[];
}

/**
 * The request shape of every unary method of every service in `pkg` (loaded with `keepCase: true`
 * so that fields carry their .proto names), keyed by the method's path (`/hsm.v1.CryptoService/Sign`).
 * With `streaming`, the shape of each message of the client-streaming methods instead
 * (`/hsm.v1.CryptoService/CryptoStream` → `hsm.v1.CryptoStreamRequest`).
 */
export function requestShapes(pkg: PackageDefinition, streaming = false): Map<string, MessageShape> {
  const built = new Map<Descriptor, MessageShape>();
  const top = new Map<string, Descriptor>();
  for (const [name, v] of Object.entries(pkg)) {
    const d = v as { format?: string; type?: Descriptor };
    if (d.format === "Protocol Buffer 3 DescriptorProto" && d.type) top.set(name, d.type);
  }
  const shape = (desc: Descriptor, fullName: string, scope: Descriptor[]): MessageShape => {
    const known = built.get(desc);
    if (known) return known;
    const fields = new Map<number, FieldShape>();
    const byNumber: Array<FieldShape | undefined> = new Array<FieldShape | undefined>(33).fill(undefined);
    const s: MessageShape = { name: fullName, fields, byNumber };
    built.set(desc, s);
    const pkgName = fullName.slice(0, fullName.lastIndexOf("."));
    for (const f of desc.field) {
      const kind = KIND_OF[f.type];
      if (!kind) throw new Error(`${fullName}.${f.name}: field type ${f.type} is not supported by the wire check`);
      let message: MessageShape | undefined;
      if (kind === "message") {
        const ref = f.typeName.replace(/^\./, "");
        const nested = [desc, ...scope].flatMap((d) => d.nestedType).find((n) => n.name === ref);
        const target = nested ?? top.get(ref) ?? top.get(`${pkgName}.${ref}`);
        if (!target) throw new Error(`${fullName}.${f.name}: unknown message type ${f.typeName}`);
        message = shape(target, nested ? `${fullName}.${ref}` : top.has(ref) ? ref : `${pkgName}.${ref}`, nested ? [desc, ...scope] : []);
      }
      const type = message?.name ?? f.type.replace(/^TYPE_/, "").toLowerCase();
      const field: FieldShape = { name: f.name, kind, type, repeated: f.label === "LABEL_REPEATED", message, index: fields.size };
      fields.set(f.number, field);
      if (f.number < byNumber.length) byNumber[f.number] = field;
    }
    return s;
  };
  const out = new Map<string, MessageShape>();
  for (const [name, v] of Object.entries(pkg)) {
    if ((v as { format?: string }).format) continue; // a message or enum, not a service
    for (const m of Object.values(v as Record<string, { path: string; requestType: { type: Descriptor }; requestStream: boolean }>)) {
      if (m.requestStream !== streaming) continue;
      const pkgName = name.slice(0, name.lastIndexOf("."));
      const full = `${pkgName}.${m.requestType.type.name}`;
      out.set(m.path, shape(top.get(full) ?? m.requestType.type, full, []));
    }
  }
  return out;
}

class Malformed extends Error {}
class OverLimit extends Error {}

/** What {@link readVarint} answers for a varint cut short by the end of the buffer, or longer than allowed. */
const CUT_SHORT = -1;
const TOO_LONG = -2;

/**
 * Reads a varint of at most `maxBytes` bytes at `pos` into `out` ([value, next]); answers
 * {@link CUT_SHORT} or {@link TOO_LONG} instead of throwing, so that the hot loop builds no message
 * text. Values past 2^53 lose precision (only lengths and tags are used, and those are bounded).
 */
function readVarint(buf: Uint8Array, pos: number, maxBytes: number, out: number[]): number {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < maxBytes; i++) {
    if (pos + i >= buf.length) return CUT_SHORT;
    const b = buf[pos + i]!;
    value += (b & 0x7f) * mul;
    mul *= 128;
    if ((b & 0x80) === 0) {
      out[0] = value;
      out[1] = pos + i + 1;
      return 0;
    }
  }
  return TOO_LONG;
}

/**
 * Checks `buf` as a message of type `shape`: size, every tag and wire type, lengths within the
 * message, known fields of the wire type their type needs, strings valid UTF-8, nesting, and the
 * count of every repeated field. Answers the first problem, or undefined when the request may be
 * decoded. Linear in the size of `buf`; allocates only for messages that have repeated fields, and
 * builds message text only for the problem it answers.
 */
export function checkWire(buf: Uint8Array, shape: MessageShape, limits: WireLimits): WireProblem | undefined {
  if (buf.length > limits.maxMessageBytes) {
    return { code: "RESOURCE_EXHAUSTED", message: `request is ${buf.length} bytes; the limit is ${limits.maxMessageBytes} (limits.maxMessageBytes)` };
  }
  const v: number[] = [0, 0];
  /** Throws the problem of a varint {@link readVarint} could not read. */
  const badVarint = (r: number, pos: number, maxBytes: number, what: string): never => {
    throw new Malformed(r === CUT_SHORT ? `${what} at byte ${pos} is cut short by the end of the message` : `${what} at byte ${pos} is longer than ${maxBytes} bytes`);
  };
  const nameOf = (s: MessageShape, path: string, no: number): string => {
    const f = s.fields.get(no);
    return f ? `${path}${f.name}` : `${path}field ${no}`;
  };
  // The loop below runs once per field of the request (millions for a hostile batch): no closures,
  // no strings, no allocation unless it throws.
  const scan = (start: number, end: number, s: MessageShape, depth: number, path: string): void => {
    if (depth > MAX_NESTING) throw new Malformed(`${path || "the message"} is nested deeper than ${MAX_NESTING} levels`);
    let counts: number[] | undefined;
    let pos = start;
    while (pos < end) {
      const at = pos;
      let tag = buf[pos]!;
      let r = 0;
      if (tag < 0x80)
        pos++; // one-byte tags (fields 1 to 15): the common case, read inline
      else {
        r = readVarint(buf, pos, 5, v);
        if (r !== 0) badVarint(r, pos, 5, "a tag");
        tag = v[0]!;
        pos = v[1]!;
      }
      if (tag > 0xffffffff) throw new Malformed(`the tag at byte ${at} is out of range`);
      const no = tag >>> 3;
      const wt = tag & 7;
      if (no === 0) throw new Malformed(`byte ${at} is not a valid tag (field number 0)`);
      if (wt === 3 || wt === 4) throw new Malformed(`${nameOf(s, path, no)} uses a protobuf group (wire type ${wt}), which proto3 messages do not have`);
      if (wt > 5) throw new Malformed(`${nameOf(s, path, no)} has the invalid wire type ${wt} (at byte ${at})`);
      let len = 0;
      if (wt === 2 && pos < end && buf[pos]! < 0x80)
        len = buf[pos++]!; // a length under 128, inline
      else if (wt === 0 || wt === 2) {
        r = readVarint(buf, pos, 10, v);
        if (r !== 0) badVarint(r, pos, 10, `the ${wt === 0 ? "value" : "length"} of ${nameOf(s, path, no)}`);
        if (wt === 2) len = v[0]!;
        pos = v[1]!;
      } else len = wt === 1 ? 8 : 4;
      if (len > end - pos) throw new Malformed(`${nameOf(s, path, no)} needs ${len} bytes at byte ${pos}, but the ${path ? "enclosing message" : "message"} has ${end - pos} left`);
      const body = pos;
      pos += len;
      const f = no < s.byNumber.length ? s.byNumber[no] : s.fields.get(no);
      if (!f) continue; // an unknown field: skipped by the decoder, as proto3 wants
      const packed = f.repeated && wt === 2 && (f.kind === "varint" || f.kind === "fixed32" || f.kind === "fixed64");
      if (!packed && wt !== EXPECTED_WIRE[f.kind]) {
        throw new Malformed(`${nameOf(s, path, no)} is sent as ${WIRE_TYPE_NAMES[wt]}, but its type (${f.type}) is sent as ${WIRE_TYPE_NAMES[EXPECTED_WIRE[f.kind]]}`);
      }
      if (f.repeated) {
        counts ??= new Array<number>(s.fields.size + 1).fill(0);
        const n = (counts[f.index] += packed ? packedCount(body, pos, f.kind, s, path, no) : 1);
        // Past the limit the rest is only counted (cheap), so the refusal says how many there are.
        if (n > limits.maxBatchItems) continue;
      }
      if (f.kind === "string" && !isUtf8(buf.subarray(body, pos))) throw new Malformed(`${nameOf(s, path, no)} is not valid UTF-8`);
      if (f.kind === "message") scan(body, pos, f.message!, depth + 1, `${nameOf(s, path, no)}.`);
    }
    if (counts) {
      for (const f of s.fields.values()) {
        const n = counts[f.index]!;
        if (n <= limits.maxBatchItems) continue;
        const batch = depth === 0 && f.name === "items" && f.kind === "message";
        throw new OverLimit(
          batch
            ? `batch has ${n} items; the limit is ${limits.maxBatchItems} (limits.maxBatchItems)`
            : `${path}${f.name} has ${n} entries; a repeated field holds at most ${limits.maxBatchItems} (limits.maxBatchItems)`,
        );
      }
    }
  };
  const packedCount = (from: number, to: number, kind: FieldKind, s: MessageShape, path: string, no: number): number => {
    const name = nameOf(s, path, no);
    if (kind === "fixed32" || kind === "fixed64") {
      const size = kind === "fixed32" ? 4 : 8;
      if ((to - from) % size !== 0) throw new Malformed(`packed ${name} is ${to - from} bytes, not a multiple of ${size}`);
      return (to - from) / size;
    }
    let n = 0;
    let run = 0;
    for (let i = from; i < to; i++) {
      run++;
      if (run > 10) throw new Malformed(`a value in packed ${name} is longer than 10 bytes`);
      if ((buf[i]! & 0x80) === 0) {
        n++;
        run = 0;
      }
    }
    if (run !== 0) throw new Malformed(`packed ${name} ends in the middle of a value`);
    return n;
  };
  try {
    scan(0, buf.length, shape, 0, "");
    return undefined;
  } catch (e) {
    if (e instanceof OverLimit) return { code: "RESOURCE_EXHAUSTED", message: e.message };
    if (e instanceof Malformed) return { code: "INVALID_ARGUMENT", message: `request is not a valid ${shape.name}: ${e.message}` };
    throw e;
  }
}

/**
 * Field 1 of a message as a uint32 (the crypto stream's `id`), read without trusting the rest: the
 * last occurrence before the first byte that cannot be read, else 0. So that a stream message that
 * does not decode is still answered under the id its client gave it.
 */
export function peekId(buf: Uint8Array): number {
  const v: number[] = [0, 0];
  let id = 0;
  let pos = 0;
  while (pos < buf.length) {
    if (readVarint(buf, pos, 5, v) !== 0) return id;
    const tag = v[0]!;
    pos = v[1]!;
    const wt = tag & 7;
    if (wt === 0) {
      if (readVarint(buf, pos, 10, v) !== 0) return id;
      if (tag / 8 === 1) id = v[0]! % 4_294_967_296;
      pos = v[1]!;
    } else if (wt === 2) {
      if (readVarint(buf, pos, 10, v) !== 0) return id;
      pos = v[1]! + v[0]!;
    } else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else return id;
  }
  return id;
}
