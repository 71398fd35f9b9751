/**
 * fast-check arbitraries for hsm.v1 requests, built from the .proto descriptors (the same shapes the
 * daemon's wire check uses, src/grpc/wire-check.ts), so a new RPC or field is fuzzed without editing
 * a list: random messages from each type's fields (values drawn partly from pools of real ids and
 * names, so that calls get past validation), mutations of such messages (flipped, cut, extended,
 * spliced bytes) and plain random bytes.
 */
import fc from "fast-check";
import { hsmRequestShapes, type FieldShape, type MessageShape } from "../../src/grpc";

/** Every unary hsm.v1 method (path → request shape), read from proto/ as the daemon's wire check does. */
export const hsmMethods = hsmRequestShapes;

/** Values the generator mixes in, so that some requests name things that exist. */
export interface FuzzPools {
  keyIds: string[];
  usernames: string[];
  labels: string[];
  /** Byte strings worth trying (a real SPKI, a real ciphertext, …). */
  blobs: Buffer[];
}

function varint(n: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

const tag = (no: number, wt: number) => varint(BigInt(no * 8 + wt));
const lenField = (no: number, body: Uint8Array) => Buffer.concat([Buffer.from(tag(no, 2)), Buffer.from(varint(BigInt(body.length))), body]);

/** One encoded field occurrence. */
type Encoded = Buffer;

function stringArb(f: FieldShape, pools: FuzzPools): fc.Arbitrary<string> {
  const n = f.name;
  const named = n.endsWith("key_id") || n === "id" ? pools.keyIds : n.includes("username") || n === "user" ? pools.usernames : n === "label" ? pools.labels : [];
  const random = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: "binary", maxLength: 20 }), fc.constantFrom("", "a".repeat(300), "2026-01-01T00:00:00Z", "../etc"));
  return named.length ? fc.oneof({ arbitrary: fc.constantFrom(...named), weight: 3 }, { arbitrary: random, weight: 1 }) : random;
}

function scalarArb(f: FieldShape): fc.Arbitrary<bigint> {
  switch (f.type) {
    case "bool":
      return fc.constantFrom(0n, 1n, 2n);
    case "enum":
    case "int32":
      return fc.oneof(fc.bigInt({ min: 0n, max: 15n }), fc.bigInt({ min: -(2n ** 31n), max: 2n ** 31n - 1n }));
    case "uint32":
      return fc.oneof(fc.bigInt({ min: 0n, max: 300n }), fc.bigInt({ min: 0n, max: 2n ** 32n - 1n }));
    default:
      return fc.oneof(fc.bigInt({ min: 0n, max: 300n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
  }
}

function fieldArb(no: number, f: FieldShape, pools: FuzzPools, depth: number): fc.Arbitrary<Encoded> {
  switch (f.kind) {
    case "string":
      return stringArb(f, pools).map((s) => lenField(no, Buffer.from(s, "utf8")));
    case "bytes":
      return fc.oneof(fc.uint8Array({ maxLength: 80 }), pools.blobs.length ? fc.constantFrom(...pools.blobs) : fc.uint8Array({ maxLength: 8 })).map((b) => lenField(no, b));
    case "message":
      return (depth >= 3 ? fc.constant(new Uint8Array(0)) : messageArb(f.message!, pools, depth + 1)).map((b) => lenField(no, b));
    case "varint":
      return scalarArb(f).map((v) => Buffer.from([...tag(no, 0), ...varint(v)]));
    case "fixed32":
      return fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Buffer.concat([Buffer.from(tag(no, 5)), b]));
    case "fixed64":
      return fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.concat([Buffer.from(tag(no, 1)), b]));
  }
}

/** A well-formed message of `shape`: each field absent or present (repeated ones 0 to 4 times), in random order. */
export function messageArb(shape: MessageShape, pools: FuzzPools, depth = 0): fc.Arbitrary<Uint8Array> {
  const parts = [...shape.fields].map(([no, f]) =>
    f.repeated ? fc.array(fieldArb(no, f, pools, depth), { maxLength: 4 }) : fc.option(fieldArb(no, f, pools, depth), { nil: undefined }).map((x) => (x ? [x] : [])),
  );
  if (parts.length === 0) return fc.constant(new Uint8Array(0));
  return fc
    .tuple(...parts)
    .chain((groups) => fc.shuffledSubarray(groups.flat(), { minLength: groups.flat().length }))
    .map((fields) => Buffer.concat(fields));
}

/** A message of `shape` with its bytes changed: a flipped byte, cut short, extended, or with random bytes spliced in. */
export function mutatedArb(shape: MessageShape, pools: FuzzPools): fc.Arbitrary<Uint8Array> {
  return fc
    .tuple(messageArb(shape, pools), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.constantFrom("flip", "truncate", "extend", "splice"))
    .map(([msg, at, byte, extra, how]) => {
      const b = Buffer.from(msg);
      const i = b.length ? at % b.length : 0;
      if (how === "flip" && b.length) b[i] = b[i]! ^ (byte || 1);
      if (how === "truncate") return b.subarray(0, i);
      if (how === "extend") return Buffer.concat([b, extra]);
      if (how === "splice") return Buffer.concat([b.subarray(0, i), extra, b.subarray(i)]);
      return b;
    });
}

/** Any of the three kinds of request body for `shape`. */
export function requestBodyArb(shape: MessageShape, pools: FuzzPools): fc.Arbitrary<{ kind: string; body: Uint8Array }> {
  return fc.oneof(
    messageArb(shape, pools).map((body) => ({ kind: "message", body })),
    mutatedArb(shape, pools).map((body) => ({ kind: "mutated", body })),
    fc.uint8Array({ maxLength: 200 }).map((body) => ({ kind: "random", body })),
  );
}
