/**
 * The audit tally behind a real crypto stream: a second gRPC server over a test daemon's services
 * (real SoftHSM2 token, real audit log) with the audit's own UseTally, as the daemon wires it. Many
 * successful signs on one stream leave ONE counted entry in the hash chain, between the stream's open
 * and end entries, with each denial on its own; the chain verifies, and hsmctl audit tail (through
 * the daemon's QueryAuditLog) shows the count.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { verify as nodeVerify } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditLog, UseTally, parseTallyDetail, verifyAuditLog } from "../../src/audit";
import { type CliIo, runHsmctl } from "../../src/cli";
import type { BuiltGrpcServer, GrpcListener } from "../../src/grpc";
import { type HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { TestStream, cryptoClient, outcome, serveOver, type StreamOp } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { OFFICER_PASSWORD, officerClient, userClient } from "../helpers/users";

let td: TestDaemon;
let alice: HsmClient;
let officer: HsmClient;
let aliceKey: string;
let tally: UseTally;
let built: BuiltGrpcServer;
let listener: GrpcListener;
let home: string;
const MESSAGE = Buffer.from("tally me");
const SIGNS = 200;

const sign = (keyId: string): StreamOp => ({
  $case: "sign",
  value: { keyId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: MESSAGE, messageType: 0, signatureFormat: 0, macLength: 0 },
});

/** hsmctl in this process against the test daemon, as the officer. */
async function hsmctl(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const io = {
    stdin: process.stdin,
    stdout: { write: (s: string) => ((stdout += s), true), isTTY: false },
    stderr: { write: (s: string) => ((stderr += s), true), isTTY: false },
    env: { HOME: home, HSMCTL_ENDPOINTS: td.grpc, HSMCTL_INSECURE_PLAINTEXT: "1", HSMCTL_SESSION_FILE: join(home, "session.json"), HSMCTL_PASSWORD: OFFICER_PASSWORD },
  } as unknown as CliIo;
  const code = await runHsmctl(argv, io);
  return { code, stdout, stderr };
}

beforeAll(async () => {
  td = await startTestDaemon();
  home = mkdtempSync(join(tmpdir(), "hsmd-tally-cli-"));
  alice = await userClient(td, "alice");
  officer = await officerClient(td);
  aliceKey = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "tallied" })).id;
  // A window far longer than the test: the stream's end is what writes its counts.
  tally = new UseTally(td.daemon.audit, { windowMs: 60_000 });
  ({ built, listener } = await serveOver(td, { tally }));
}, 120_000);

afterAll(async () => {
  built?.server.forceShutdown();
  listener?.destroyAll();
  await tally?.close();
  alice?.close();
  officer?.close();
  await td?.cleanup();
  if (home) rmSync(home, { recursive: true, force: true });
});

describe("the audit tally on a real stream", () => {
  it(`${SIGNS} signs leave one counted entry between the open and the end; the denial its own; the chain verifies; hsmctl shows the count`, async () => {
    const client = cryptoClient(`127.0.0.1:${listener.port}`);
    const s = new TestStream(client, alice.exportSession()!.token, { "x-request-id": "tally-stream-1" });
    const answers = await Promise.all(Array.from({ length: SIGNS }, (_, i) => s.request(i + 1, sign(aliceKey))));
    expect(answers.map((a) => outcome(a).code)).toEqual(Array(SIGNS).fill("OK"));
    // A counted success is a real signature (checked with Node's crypto against the key's public half).
    const pem = (await alice.getPublicKey({ keyId: aliceKey })).pem;
    const first = answers[0]!.result;
    expect(first?.$case).toBe("sign");
    expect(nodeVerify("sha256", MESSAGE, pem, Buffer.from((first as { value: { signature: Uint8Array } }).value.signature))).toBe(true);
    expect(outcome(await s.request(SIGNS + 1, sign("no-such-key"))).code).toBe("NOT_FOUND");
    s.close();
    expect((await s.ended).codeName).toBe("OK");
    client.close();

    const lines = readFileSync(td.daemon.config.audit.file, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, string>);
    const open = lines.find((l) => l.requestId === "tally-stream-1" && l.detail?.endsWith(" opened"));
    const streamId = /^stream (\S+) opened$/.exec(open?.detail ?? "")?.[1];
    expect(streamId).toBeDefined();
    const mine = lines.filter((l) => l.requestId === "tally-stream-1" || l.requestId === streamId);
    expect(mine.map((l) => [l.operation, l.status, l.keyId, l.detail?.replace(/ in \S+$/, "")])).toEqual([
      ["CryptoStream", "OK", undefined, `stream ${streamId} opened`],
      ["Sign", "NOT_FOUND", "no-such-key", `stream message ${SIGNS + 1}`],
      ["CryptoStream", "OK", aliceKey, `Sign×${SIGNS}`],
      ["CryptoStream", "OK", undefined, `stream ${streamId} ended: ${SIGNS + 1} operations, 1 failed`],
    ]);
    const counted = mine[2]!;
    expect(counted).toMatchObject({ user: "alice", role: "CU", requestId: streamId });
    expect(parseTallyDetail(counted.detail)!.counts).toEqual({ Sign: SIGNS });
    const text = readFileSync(td.daemon.config.audit.file, "utf8");
    for (const form of [MESSAGE.toString(), MESSAGE.toString("base64"), MESSAGE.toString("hex")]) expect(text).not.toContain(form);

    expect(await verifyAuditLog(td.daemon.config.audit.file)).toMatchObject({ ok: true });
    expect((await hsmctl(["login", "--username", "admin"])).code).toBe(0);
    const tail = await hsmctl(["audit", "tail", "--operation", "CryptoStream", "--key-id", aliceKey]);
    expect(tail.code).toBe(0);
    expect(tail.stdout).toContain(`Sign×${SIGNS} in `);
  });

  it("once the audit log cannot be written, a stream's successes answer UNAVAILABLE too: no use goes unaccounted", async () => {
    const file = join(home, "breaking-audit.log");
    const log = await AuditLog.open(file, { node: "tally-test", fsync: "never" });
    const t = new UseTally(log, { windowMs: 60_000 });
    const own = await serveOver(td, { tally: t, audit: { log, file } });
    const client = cryptoClient(`127.0.0.1:${own.listener.port}`);
    try {
      const s = new TestStream(client, alice.exportSession()!.token);
      expect(outcome(await s.request(1, sign(aliceKey))).code).toBe("OK");
      // Pull the file out from under the log (as a dead disk would): the next entry cannot be written.
      await (log as unknown as { handle: { close(): Promise<void> } }).handle.close();
      expect(outcome(await s.request(2, sign("no-such-key"))).code).toBe("UNAVAILABLE");
      expect(log.failed).toBe(true);
      const after = outcome(await s.request(3, sign(aliceKey)));
      expect(after.code).toBe("UNAVAILABLE");
      expect(after.message).toMatch(/audit/i);
      s.close();
      await s.ended;
    } finally {
      client.close();
      own.built.server.forceShutdown();
      own.listener.destroyAll();
    }
  });
});
