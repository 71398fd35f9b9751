/**
 * What a crypto stream leaves in the audit log (read back from the daemon's hash-chained file), each
 * through a second gRPC server over the test daemon's services (the daemon itself wires the audit's
 * UseTally: see audit-tally-stream.test.ts): without a tally, one entry for the open, one per operation (OK or not, under the stream's request
 * id and with the message's id), one for the end with its outcome; with a tally (here a recording one),
 * the successful operations go to the tally, each denial and error still gets its own entry, and the
 * tally's stream is flushed before the end is recorded. Never the message or key material.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CryptoServiceClient } from "../../src/gen/hsm/v1/crypto";
import type { BuiltGrpcServer, GrpcListener, StreamTally, StreamUse } from "../../src/grpc";
import { type HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { TestStream, cryptoClient, outcome, serveOver, type StreamOp } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { officerClient, userClient } from "../helpers/users";

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;
let aliceKey: string;
let bobKey: string;
const SECRET = Buffer.from("this message must never reach the audit log 7f3a");

const sign = (keyId: string, algorithm = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256): StreamOp => ({
  $case: "sign",
  value: { keyId, algorithm, message: SECRET, messageType: 0, signatureFormat: 0, macLength: 0 },
});
interface Entry {
  operation: string;
  status: string;
  user?: string;
  keyId?: string;
  requestId?: string;
  detail?: string;
}
const entriesOf = (requestId: string): Entry[] =>
  readFileSync(td.daemon.config.audit.file, "utf8")
    .split("\n")
    .filter((l) => l.includes(requestId))
    .map((l) => JSON.parse(l) as Entry);

/** Three signs with alice's key, one on bob's (NOT_FOUND), one with a bad algorithm (INVALID_ARGUMENT), then half-close. */
async function runStream(client: CryptoServiceClient, requestId: string): Promise<void> {
  const s = new TestStream(client, alice.exportSession()!.token, { "x-request-id": requestId });
  for (const id of [1, 2, 3]) expect(outcome(await s.request(id, sign(aliceKey))).code).toBe("OK");
  expect(outcome(await s.request(4, sign(bobKey))).code).toBe("NOT_FOUND");
  expect(outcome(await s.request(5, sign(aliceKey, 99 as SigningAlgorithm))).code).toBe("INVALID_ARGUMENT");
  s.close();
  expect((await s.ended).codeName).toBe("OK");
}

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
  aliceKey = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "a" })).id;
  bobKey = (await bob.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "b" })).id;
}, 120_000);

afterAll(async () => {
  alice?.close();
  bob?.close();
  await td?.cleanup();
});

describe("without a tally: one entry per operation", () => {
  it("the open, each operation (with the message id), the end with its outcome", async () => {
    const { built, listener } = await serveOver(td);
    const client = cryptoClient(`127.0.0.1:${listener.port}`);
    await runStream(client, "stream-audit-1");
    client.close();
    built.server.forceShutdown();
    listener.destroyAll();
    const got = entriesOf("stream-audit-1").map((e) => ({ operation: e.operation, status: e.status, user: e.user, keyId: e.keyId, detail: e.detail }));
    expect(got).toEqual([
      { operation: "CryptoStream", status: "OK", user: "alice", keyId: undefined, detail: expect.stringMatching(/^stream [0-9a-f-]{36} opened$/) },
      ...[1, 2, 3].map((id) => ({ operation: "Sign", status: "OK", user: "alice", keyId: aliceKey, detail: `stream message ${id}` })),
      { operation: "Sign", status: "NOT_FOUND", user: "alice", keyId: bobKey, detail: "stream message 4" },
      { operation: "Sign", status: "INVALID_ARGUMENT", user: "alice", keyId: aliceKey, detail: "stream message 5" },
      { operation: "CryptoStream", status: "OK", user: "alice", keyId: undefined, detail: expect.stringMatching(/^stream [0-9a-f-]{36} ended: 5 operations, 2 failed$/) },
    ]);
    expect(readFileSync(td.daemon.config.audit.file).includes(SECRET)).toBe(false);
  });

  it("a refused open is one entry with the refusal (a bad token, a crypto officer)", async () => {
    const client = cryptoClient(td.grpc);
    const bad = new TestStream(client, "not-a-real-token-at-all-0000000000000000000", { "x-request-id": "stream-audit-refused-1" });
    expect((await bad.ended).codeName).toBe("UNAUTHENTICATED");
    // Refused at metadata time by the call guard, before the handler, as a unary call is.
    expect(entriesOf("stream-audit-refused-1").map((e) => [e.operation, e.status, e.detail])).toEqual([["CryptoStream", "UNAUTHENTICATED", "refused before the request was read"]]);
    const co = await officerClient(td);
    const s = new TestStream(client, co.exportSession()!.token, { "x-request-id": "stream-audit-refused-2" });
    expect((await s.ended).codeName).toBe("PERMISSION_DENIED");
    expect(entriesOf("stream-audit-refused-2").map((e) => [e.operation, e.status, e.user, e.detail])).toEqual([
      ["CryptoStream", "PERMISSION_DENIED", "admin", expect.stringMatching(/^stream [0-9a-f-]{36} refused at open$/)],
    ]);
    co.close();
    client.close();
  });
});

describe("with a tally: successes counted there, denials and errors on their own", () => {
  let built: BuiltGrpcServer;
  let listener: GrpcListener;
  const counted: StreamUse[] = [];
  const ended: string[] = [];
  beforeAll(async () => {
    const tally: StreamTally = {
      count: (use) => void counted.push(use),
      endStream: async (stream) => void ended.push(stream),
    };
    ({ built, listener } = await serveOver(td, { tally }));
  });
  afterAll(async () => {
    built?.server.forceShutdown();
    listener?.destroyAll();
  });

  it("three uses counted with stream, user, role, peer, key and method; two errors and the open and end in the log", async () => {
    const client = cryptoClient(`127.0.0.1:${listener.port}`);
    await runStream(client, "stream-audit-2");
    client.close();
    expect(counted).toHaveLength(3);
    const stream = counted[0]!.stream;
    for (const u of counted) expect(u).toEqual({ stream, user: "alice", role: "CU", peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), keyId: aliceKey, method: "Sign" });
    expect(ended).toEqual([stream]);
    expect(entriesOf("stream-audit-2").map((e) => [e.operation, e.status, e.detail])).toEqual([
      ["CryptoStream", "OK", `stream ${stream} opened`],
      ["Sign", "NOT_FOUND", "stream message 4"],
      ["Sign", "INVALID_ARGUMENT", "stream message 5"],
      ["CryptoStream", "OK", `stream ${stream} ended: 5 operations, 2 failed`],
    ]);
  });
});
