/**
 * Requests refused before their handler, through real gRPC to a real daemon with the default limits:
 * malformed protobuf answers INVALID_ARGUMENT naming the type and what is wrong (grpc-js alone
 * answers INTERNAL "Error deserializing request"), item counts and message sizes are checked on the
 * wire before decoding (RESOURCE_EXHAUSTED naming the limit), the documented limits hold together
 * (a full batch of full items passes), and every refusal is accounted for in the audit log.
 */
import { readFileSync } from "node:fs";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditRecord } from "../../src/audit";
import { BatchEncryptRequest, BatchEncryptResponse, EncryptionAlgorithm, SignRequest, SigningAlgorithm } from "../../src/gen/hsm/v1/crypto";
import { KeySpec } from "../../src/gen/hsm/v1/keys";
import { LIMIT_DEFAULTS } from "../../src/config";
import { loginToken } from "../helpers/cluster";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { rawCall, rawClient } from "../helpers/raw-grpc";
import { USER_PASSWORD, userClient } from "../helpers/users";

let td: TestDaemon;
let raw: grpc.Client;
let token: string;
let aesId: string;
let ecId: string;
/** Sign requests this file refuses as malformed (each must be accounted for in the audit log). */
let signRefusals = 0;

const SIGN = "/hsm.v1.CryptoService/Sign";
const BATCH_ENCRYPT = "/hsm.v1.CryptoService/BatchEncrypt";
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;

const auditLines = (): AuditRecord[] =>
  readFileSync(td.daemon.config.audit.file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);

/** A BatchEncrypt of `n` items of `payload` bytes each, padded with an unknown field to exactly `size` bytes when given. */
function batchEncrypt(n: number, payload: number, size?: number): Buffer {
  const body = Buffer.from(
    BatchEncryptRequest.encode(BatchEncryptRequest.fromPartial({ items: Array.from({ length: n }, () => ({ keyId: aesId, algorithm: GCM, plaintext: Buffer.alloc(payload, 7) })) })).finish(),
  );
  if (size === undefined) return body;
  // Field 15, length-delimited: skipped by the decoder, counted by the size check.
  for (let len = size - body.length - 2; len > 0; len--) {
    const pad = Buffer.concat([Buffer.from([(15 << 3) | 2]), varint(len), Buffer.alloc(len)]);
    if (body.length + pad.length === size) return Buffer.concat([body, pad]);
  }
  throw new Error(`cannot pad to ${size}`);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return Buffer.from(out);
}

beforeAll(async () => {
  td = await startTestDaemon();
  const alice = await userClient(td, "alice");
  aesId = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "aes" })).id;
  ecId = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "ec" })).id;
  alice.close();
  token = await loginToken(td.grpc, "alice", USER_PASSWORD);
  raw = rawClient(td.grpc);
});
afterAll(async () => {
  raw?.close();
  await td?.cleanup();
});

describe("malformed protobuf", () => {
  const good = () => Buffer.from(SignRequest.encode(SignRequest.fromPartial({ keyId: ecId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from("hello") })).finish());
  const cases: Array<[string, () => Buffer, string]> = [
    ["a message cut in the middle of a field", () => good().subarray(0, good().length - 3), "message needs 5 bytes"],
    ["a length running past the end", () => Buffer.from([0x1a, 0x7f, 1, 2, 3]), "message needs 127 bytes at byte 2, but the message has 3 left"],
    ["wire type 7", () => Buffer.from([(3 << 3) | 7]), "message has the invalid wire type 7"],
    ["field number 0", () => Buffer.from([0x02, 0x00]), "byte 0 is not a valid tag (field number 0)"],
    ["a protobuf group", () => Buffer.from([(9 << 3) | 3, (9 << 3) | 4]), "field 9 uses a protobuf group"],
    ["a tag cut short", () => Buffer.from([0x80]), "a tag at byte 0 is cut short"],
    ["key_id that is not UTF-8", () => Buffer.concat([Buffer.from([0x0a, 2, 0xff, 0xfe]), good()]), "key_id is not valid UTF-8"],
    ["key_id sent as a varint", () => Buffer.from([0x08, 0x01]), "key_id is sent as varint, but its type (string) is sent as length-delimited"],
    ["a varint of 11 bytes", () => Buffer.from([0x10, ...Array(10).fill(0xff), 0x01]), "the value of algorithm at byte 1 is longer than 10 bytes"],
  ];
  it.each(cases)("%s: INVALID_ARGUMENT naming hsm.v1.SignRequest and the problem", async (_name, body, phrase) => {
    const a = await rawCall(raw, SIGN, body(), token);
    signRefusals++;
    expect({ code: a.codeName, details: a.details }).toEqual({ code: "INVALID_ARGUMENT", details: expect.stringContaining("request is not a valid hsm.v1.SignRequest: ") });
    expect(a.details).toContain(phrase);
  });

  it("a malformed request of every hsm.v1 method is INVALID_ARGUMENT naming its own type (Login too, without a session)", async () => {
    const paths = [
      "/hsm.v1.UserService/Login",
      "/hsm.v1.KeyService/GenerateKey",
      "/hsm.v1.AuditService/QueryAuditLog",
      "/hsm.v1.ClusterService/ApproveJoin",
      "/hsm.v1.QuorumService/ApproveQuorumRequest",
    ];
    const types = ["LoginRequest", "GenerateKeyRequest", "QueryAuditLogRequest", "ApproveJoinRequest", "ApproveQuorumRequestRequest"];
    for (const [i, path] of paths.entries()) {
      const a = await rawCall(raw, path, Buffer.from([0x0a, 0x05, 0x61]), i === 0 ? undefined : token);
      expect([a.codeName, a.details]).toEqual(["INVALID_ARGUMENT", expect.stringMatching(new RegExp(`^request is not a valid hsm\\.v1\\.${types[i]}: `))]);
    }
  });
});

describe("item counts and sizes before decoding", () => {
  it("a 5 MiB BatchEncrypt of 2.6 M empty items is refused before decoding: RESOURCE_EXHAUSTED naming limits.maxBatchItems", async () => {
    const n = (5 * 1024 * 1024) / 2;
    const a = await rawCall(raw, BATCH_ENCRYPT, Buffer.alloc(n * 2, Buffer.from([0x0a, 0x00])), token);
    expect([a.codeName, a.details]).toEqual(["RESOURCE_EXHAUSTED", `batch has ${n} items; the limit is 256 (limits.maxBatchItems)`]);
    // Refused on the wire, not after decoding 2.6 M items (the decoded refusal is audited as "batch of N").
    const e = auditLines().filter((l) => l.operation === "BatchEncrypt");
    expect(e.at(-1)).toMatchObject({ status: "RESOURCE_EXHAUSTED", detail: `refused before decoding: batch has ${n} items; the limit is 256 (limits.maxBatchItems)` });
    expect(e.at(-1)!.user).toBeUndefined();
  });

  it("another repeated field is bounded the same way (usages of GenerateKey, packed)", async () => {
    // GenerateKeyRequest.usages = 3, packed: 300 varints.
    const body = Buffer.concat([Buffer.from([(3 << 3) | 2]), varint(300), Buffer.alloc(300, 1)]);
    const a = await rawCall(raw, "/hsm.v1.KeyService/GenerateKey", body, token);
    expect([a.codeName, a.details]).toEqual(["RESOURCE_EXHAUSTED", "usages has 300 entries; a repeated field holds at most 256 (limits.maxBatchItems)"]);
  });

  it("257 items is RESOURCE_EXHAUSTED naming limits.maxBatchItems; an item one byte over limits.maxPayloadBytes fails alone", async () => {
    const a = await rawCall(raw, BATCH_ENCRYPT, batchEncrypt(257, 1), token);
    expect([a.codeName, a.details]).toEqual(["RESOURCE_EXHAUSTED", "batch has 257 items; the limit is 256 (limits.maxBatchItems)"]);
    const b = await rawCall(raw, BATCH_ENCRYPT, batchEncrypt(2, LIMIT_DEFAULTS.maxPayloadBytes + 1), token);
    expect(b.codeName).toBe("OK");
    const results = BatchEncryptResponse.decode(b.response!).results;
    expect(results.map((r) => r.result?.$case === "error" && [r.result.value.code, r.result.value.message])).toEqual([
      [8, "plaintext is 65537 bytes; the limit is 65536 (limits.maxPayloadBytes)"],
      [8, "plaintext is 65537 bytes; the limit is 65536 (limits.maxPayloadBytes)"],
    ]);
  });

  it("a full batch (256 items × 64 KiB) of exactly limits.maxMessageBytes passes; one byte more is refused naming limits.maxMessageBytes", async () => {
    const max = td.daemon.config.limits.maxMessageBytes;
    expect(max).toBe(256 * (65536 + 1024) + 65536);
    const ok = await rawCall(raw, BATCH_ENCRYPT, batchEncrypt(256, 65536, max), token);
    expect(ok.codeName).toBe("OK");
    const results = BatchEncryptResponse.decode(ok.response!).results;
    expect(results).toHaveLength(256);
    expect(results.every((r) => r.result?.$case === "ok" && r.result.value.ciphertext.length === 65536 + 16)).toBe(true);
    const over = await rawCall(raw, BATCH_ENCRYPT, batchEncrypt(256, 65536, max + 1), token);
    expect([over.codeName, over.details]).toEqual(["RESOURCE_EXHAUSTED", `request is ${max + 1} bytes; the limit is ${max} (limits.maxMessageBytes)`]);
  });
});

describe("through the SDK", () => {
  it("BatchEncrypt of 256 × 64 KiB answers 256 results (the answer is ~16 MiB: more than a grpc-js client reads by default)", async () => {
    const alice = await userClient(td, "alice");
    try {
      const plaintext = Buffer.alloc(65536, 1);
      const { results } = await alice.batchEncrypt({ items: Array.from({ length: 256 }, () => ({ keyId: aesId, algorithm: GCM, plaintext })) });
      expect(results.filter((r) => r.result?.$case === "ok")).toHaveLength(256);
    } finally {
      alice.close();
    }
  });
});

describe("found by the fuzzer", () => {
  it("a request_id outside printable ASCII no longer kills the call with UNKNOWN: the create runs once and is audited with it", async () => {
    const alice = await userClient(td, "alice");
    try {
      const first = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "non-ascii-request-id", requestId: "ключ-\u{4c1a7}" });
      const again = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "non-ascii-request-id", requestId: "ключ-\u{4c1a7}" });
      expect(again.id).toBe(first.id);
      const entries = auditLines().filter((l) => l.operation === "GenerateKey" && l.keyId === first.id);
      expect(entries.map((l) => [l.status, l.requestId])).toEqual([
        ["OK", "ключ-\u{4c1a7}"],
        ["OK", "ключ-\u{4c1a7}"],
      ]);
    } finally {
      alice.close();
    }
  });
});

describe("after all of the above", () => {
  it("the daemon still serves, and a flood of malformed requests is answered and audited rate-limited", async () => {
    const flood = 200;
    const answers = await Promise.all(Array.from({ length: flood }, () => rawCall(raw, SIGN, Buffer.from([0x0f]), token)));
    expect(new Set(answers.map((a) => a.codeName))).toEqual(new Set(["INVALID_ARGUMENT"]));
    signRefusals += flood;
    const good = SignRequest.encode(SignRequest.fromPartial({ keyId: ecId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from("still here") })).finish();
    expect((await rawCall(raw, SIGN, Buffer.from(good), token)).codeName).toBe("OK");

    // Stopping flushes the open counts; every refused Sign is then either an entry or in a count.
    await td.stop();
    const refused = auditLines().filter((l) => l.operation === "Sign" && l.status === "INVALID_ARGUMENT");
    const counted = refused.reduce((n, l) => n + (/^(\d+) more like it from 127\.0\.0\.1 within 1000 ms/.exec(l.detail ?? "")?.map(Number)[1] ?? 1), 0);
    expect(counted).toBe(signRefusals);
    expect(refused.length).toBeLessThan(signRefusals / 4);
    for (const l of refused) expect(l.detail).toMatch(/^(refused before decoding: request is not a valid hsm\.v1\.SignRequest: |\d+ more like it)/);
  });
});
