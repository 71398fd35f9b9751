/**
 * The on-disk format of the embedded store: one frame per line,
 *
 *     <16 hex digits: SHA-256 of the JSON, truncated> <space> <JSON> "\n"
 *
 * JSON never contains a raw newline, so "\n" only ever ends a frame. Frame kinds:
 *
 *   {"t":"txn","r":R,"b":B,"ops":[["p",key,base64],["d",key]]}  one committed txn at revision R, written
 *                                                                 in the write+fsync batch that began at B
 *   {"t":"snap","fmt":1,"r":R,"n":N}                              a compacted log opens with a snapshot of
 *   {"t":"ent","k":key,"v":base64,"m":mod,"c":create,"ver":V}     N entries at revision R, closed by
 *   {"t":"end","r":R,"n":N}                                       this frame
 */
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";

export const FORMAT_VERSION = 1;
const HASH_HEX = 16;
const NL = 0x0a;

export type TxnOp = ["p", string, string] | ["d", string];
export type Frame =
  | { t: "txn"; r: number; b: number; ops: TxnOp[] }
  | { t: "snap"; fmt: number; r: number; n: number }
  | { t: "ent"; k: string; v: string; m: number; c: number; ver: number }
  | { t: "end"; r: number; n: number };

function digest(json: string): string {
  return createHash("sha256").update(json).digest("hex").slice(0, HASH_HEX);
}

export function encodeFrame(frame: Frame): string {
  const json = JSON.stringify(frame);
  return `${digest(json)} ${json}\n`;
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isStr = (v: unknown): v is string => typeof v === "string";

/** Parses one line (without its "\n"); undefined when the checksum or the structure is wrong. */
export function decodeFrame(line: Buffer): Frame | undefined {
  if (line.length < HASH_HEX + 3 || line[HASH_HEX] !== 0x20) return undefined;
  const json = line.toString("utf8", HASH_HEX + 1);
  if (digest(json) !== line.toString("latin1", 0, HASH_HEX)) return undefined;
  let f: unknown;
  try {
    f = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof f !== "object" || f === null) return undefined;
  const o = f as Record<string, unknown>;
  switch (o["t"]) {
    case "txn": {
      const ops = o["ops"];
      if (!isInt(o["r"]) || !isInt(o["b"]) || !Array.isArray(ops) || ops.length === 0) return undefined;
      for (const op of ops as unknown[]) {
        if (!Array.isArray(op)) return undefined;
        const ok = (op[0] === "p" && op.length === 3 && isStr(op[1]) && isStr(op[2])) || (op[0] === "d" && op.length === 2 && isStr(op[1]));
        if (!ok) return undefined;
      }
      return f as Frame;
    }
    case "snap":
      return isInt(o["fmt"]) && isInt(o["r"]) && isInt(o["n"]) ? (f as Frame) : undefined;
    case "ent":
      return isStr(o["k"]) && isStr(o["v"]) && isInt(o["m"]) && isInt(o["c"]) && isInt(o["ver"]) ? (f as Frame) : undefined;
    case "end":
      return isInt(o["r"]) && isInt(o["n"]) ? (f as Frame) : undefined;
    default:
      return undefined;
  }
}

export interface ScannedLine {
  offset: number;
  /** bytes of the line including its "\n" (a torn final line has none) */
  length: number;
  /** false for a final line without its "\n" (torn) */
  complete: boolean;
  /** undefined: torn, checksum failure or malformed */
  frame: Frame | undefined;
}

/** Reads a file line by line in bounded chunks (a snapshot may be far larger than a JS string). */
export function* scanLines(path: string, chunkSize = 8 << 20): Generator<ScannedLine> {
  const fd = openSync(path, "r");
  try {
    let carry = Buffer.alloc(0);
    let carryOffset = 0;
    const buf = Buffer.allocUnsafe(chunkSize);
    for (;;) {
      const n = readSync(fd, buf, 0, chunkSize, null);
      if (n === 0) break;
      let data = carry.length ? Buffer.concat([carry, buf.subarray(0, n)]) : Buffer.from(buf.subarray(0, n));
      let start = 0;
      for (;;) {
        const nl = data.indexOf(NL, start);
        if (nl < 0) break;
        yield { offset: carryOffset + start, length: nl + 1 - start, complete: true, frame: decodeFrame(data.subarray(start, nl)) };
        start = nl + 1;
      }
      carryOffset += start;
      carry = data.subarray(start);
      data = Buffer.alloc(0);
    }
    if (carry.length > 0) yield { offset: carryOffset, length: carry.length, complete: false, frame: undefined };
  } finally {
    closeSync(fd);
  }
}
