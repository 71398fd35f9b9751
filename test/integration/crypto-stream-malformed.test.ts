/**
 * Bad crypto stream messages are answered one by one and the stream survives them: bytes that do not
 * decode (sent through a raw bidi call; answered under the id field 1 still gives, else 0), a message
 * over `limits.maxMessageBytes`, a message without an operation, an id already in flight; then a
 * small fast-check fuzz over CryptoStreamRequest on one stream (every message answered, the daemon
 * alive after).
 */
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CryptoStreamRequest, CryptoStreamResponse } from "../../src/gen/hsm/v1/crypto";
import { hsmStreamRequestShapes } from "../../src/grpc";
import { HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { outcome } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { requestBodyArb, type FuzzPools } from "../helpers/proto-fuzz";
import { rawClient } from "../helpers/raw-grpc";
import { userClient } from "../helpers/users";

const PATH = "/hsm.v1.CryptoService/CryptoStream";
const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const SEED = Number(process.env.FUZZ_SEED ?? 20261203);
// Small limits, so that a message over limits.maxMessageBytes (4 × 2048 + 65536 bytes) is cheap to send.
const LIMITS = { maxPayloadBytes: 1024, maxBatchItems: 4 };

let td: TestDaemon;
let alice: HsmClient;
let raw: grpc.Client;
let p256: string;
let rsa: string;

/** A raw bidi stream: writes any bytes, decodes every answer. */
class RawStream {
  readonly call: grpc.ClientDuplexStream<Buffer, Buffer>;
  readonly answers: CryptoStreamResponse[] = [];
  readonly ended: Promise<grpc.StatusObject>;
  private wanted: { n: number; resolve: () => void } | undefined;
  constructor(token: string) {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    this.call = raw.makeBidiStreamRequest(
      PATH,
      (b: Buffer) => b,
      (b: Buffer) => b,
      md,
    );
    this.ended = new Promise((r) => this.call.on("status", r));
    this.call.on("error", () => undefined);
    this.call.on("data", (b: Buffer) => {
      this.answers.push(CryptoStreamResponse.decode(b));
      if (this.wanted && this.answers.length >= this.wanted.n) this.wanted.resolve();
    });
  }
  write(bytes: Uint8Array): void {
    this.call.write(Buffer.from(bytes));
  }
  send(req: Partial<CryptoStreamRequest>): void {
    this.write(CryptoStreamRequest.encode(CryptoStreamRequest.fromPartial(req)).finish());
  }
  /** Resolves once `n` answers in all have come (or the stream ended). */
  until(n: number): Promise<void> {
    if (this.answers.length >= n) return Promise.resolve();
    return Promise.race([new Promise<void>((resolve) => (this.wanted = { n, resolve })), this.ended.then(() => undefined)]);
  }
  /** The answers carrying `id`. */
  of(id: number): ReturnType<typeof outcome>[] {
    return this.answers.filter((a) => a.id === id).map(outcome);
  }
}

const signOp = (keyId: string, algorithm = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256) => ({ $case: "sign" as const, value: { keyId, algorithm, message: Buffer.from("m") } });

beforeAll(async () => {
  td = await startTestDaemon({ limits: LIMITS });
  alice = await userClient(td, "alice");
  p256 = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "p256" })).id;
  rsa = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa" })).id;
  raw = rawClient(td.grpc);
}, 120_000);

afterAll(async () => {
  raw?.close();
  alice?.close();
  await td?.cleanup();
});

describe("bad messages are answered alone; the stream goes on", () => {
  it("undecodable bytes: INVALID_ARGUMENT under the id field 1 gives (else 0); over maxMessageBytes: RESOURCE_EXHAUSTED", async () => {
    const s = new RawStream(alice.exportSession()!.token);
    s.write(Buffer.from([0x08, 0x07, 0x12, 0x05, 0x0a, 0x01])); // id 7, sign: 5 bytes announced, 2 there
    s.write(Buffer.from([0x08, 0x09, 0x12, 0x04, 0x0a, 0x02, 0xff, 0xfe])); // id 9, sign.key_id not UTF-8
    s.write(Buffer.from([0xff, 0xff, 0xff])); // not even a tag: id 0
    s.write(Buffer.from([0x12, 0x00, 0x08, 0x0b, 0x1b])); // id 11 after an empty sign, then a group tag
    s.write(Buffer.concat([Buffer.from([0x08, 0x0c, 0x22, 0xa0, 0x8d, 0x06]), Buffer.alloc(100_000)])); // id 12, an encrypt of 100000 bytes
    s.send({ id: 13, op: signOp(p256) });
    await s.until(6);
    expect(s.of(7)).toEqual([{ code: "INVALID_ARGUMENT", message: expect.stringMatching(/^request is not a valid hsm\.v1\.CryptoStreamRequest: sign needs 5 bytes/) }]);
    expect(s.of(9)).toEqual([{ code: "INVALID_ARGUMENT", message: expect.stringContaining("sign.key_id is not valid UTF-8") }]);
    expect(s.of(0)).toEqual([{ code: "INVALID_ARGUMENT", message: expect.stringContaining("not a valid hsm.v1.CryptoStreamRequest") }]);
    expect(s.of(11)).toEqual([{ code: "INVALID_ARGUMENT", message: expect.stringContaining("protobuf group") }]);
    expect(s.of(12)).toEqual([{ code: "RESOURCE_EXHAUSTED", message: expect.stringContaining("(limits.maxMessageBytes)") }]);
    expect(s.of(13)).toEqual([{ code: "OK", case: "sign" }]);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
  });

  it("no operation: INVALID_ARGUMENT naming the id; an id already in flight: INVALID_ARGUMENT, the first answered OK", async () => {
    const s = new RawStream(alice.exportSession()!.token);
    s.send({ id: 5 });
    // An RSA signature takes the device a while: the second message with id 20 comes while the first runs.
    s.send({ id: 20, op: signOp(rsa, SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256) });
    s.send({ id: 20, op: signOp(p256) });
    await s.until(3);
    expect(s.of(5)).toEqual([{ code: "INVALID_ARGUMENT", message: expect.stringMatching(/^message 5 has no operation: set one of sign, verify/) }]);
    expect(s.of(20)).toHaveLength(2);
    expect(s.of(20)).toContainEqual({ code: "INVALID_ARGUMENT", message: "id 20 is already in flight on this stream: give each operation in flight its own id" });
    expect(s.of(20)).toContainEqual({ code: "OK", case: "sign" });
    // Once answered, the id may be used again.
    s.send({ id: 20, op: signOp(p256) });
    await s.until(4);
    expect(s.of(20)[2]).toEqual({ code: "OK", case: "sign" });
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
  });
});

describe("fuzz", () => {
  it(`${RUNS} fuzzed CryptoStreamRequests on one stream: every one answered, the daemon serves after`, async () => {
    const shape = hsmStreamRequestShapes().get(PATH)!;
    const pools: FuzzPools = { keyIds: [p256, rsa], usernames: ["alice"], labels: ["p256"], blobs: [Buffer.from("m")] };
    const bodies = fc.sample(requestBodyArb(shape, pools), { numRuns: RUNS, seed: SEED });
    const s = new RawStream(alice.exportSession()!.token);
    for (const b of bodies) s.write(b.body);
    await s.until(bodies.length);
    expect(s.answers).toHaveLength(bodies.length);
    const codes = new Map<string, number>();
    for (const a of s.answers) codes.set(outcome(a).code, (codes.get(outcome(a).code) ?? 0) + 1);
    console.log(`crypto stream fuzz (seed ${SEED}): ${bodies.length} messages, answers by status: ${JSON.stringify(Object.fromEntries(codes))}`);
    expect(codes.has("INTERNAL")).toBe(false);
    s.send({ id: 4_000_000_000, op: signOp(p256) });
    await s.until(bodies.length + 1);
    expect(s.of(4_000_000_000)).toEqual([{ code: "OK", case: "sign" }]);
    s.call.end();
    expect((await s.ended).code).toBe(grpc.status.OK);
    expect((await alice.generateRandom({ length: 4 })).random).toHaveLength(4);
  });
});
