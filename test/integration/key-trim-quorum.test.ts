/**
 * TrimKeyVersions behind a quorum (`auth.quorum.operations.TrimKeyVersions: 2`), through real gRPC
 * against a real daemon on a SoftHSM2 token: the owner's trim is held until two crypto officers
 * approve it, runs once with the approved request id, and only for the key that was approved.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, KeySpec, QuorumStatus, Role } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { officerClient, userClient } from "../helpers/users";

const OFFICER2_PASSWORD = "second-officer-pw-1";

let td: TestDaemon;
let co: HsmClient;
let co2: HsmClient;
let alice: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon({ config: { auth: { quorum: { operations: { TrimKeyVersions: 2 } } } } });
  co = await officerClient(td);
  await co.createUser({ username: "officer2", role: Role.ROLE_CRYPTO_OFFICER, password: OFFICER2_PASSWORD, mustChangePassword: false });
  co2 = new HsmClient({ endpoint: td.grpc });
  await co2.login("officer2", OFFICER2_PASSWORD);
  alice = await userClient(td, "alice");
});
afterAll(async () => {
  for (const c of [co, co2, alice]) c?.close();
  await td?.cleanup();
});

/** A key of alice's with version 1 below its floor (something to trim). */
async function trimmable(): Promise<string> {
  const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "trim-q" });
  await alice.rotateKey({ keyId: k.id });
  await alice.setMinDecryptionVersion({ keyId: k.id, minDecryptionVersion: 2 });
  return k.id;
}

describe("TrimKeyVersions: 2", () => {
  it("waits for two approvals, then trims once, and only the approved key", async () => {
    const keyId = await trimmable();
    const other = await trimmable();
    const e = await expectError(alice.trimKeyVersions({ keyId }), "FAILED_PRECONDITION", "TrimKeyVersions needs the approval of 2 crypto officers", "quorum_request_id=");
    const id = e.quorumRequestId!;
    expect((await co.getQuorumRequest({ id })).params).toEqual({ keyId });
    await expectError(alice.trimKeyVersions({ keyId, quorumRequestId: id }), "FAILED_PRECONDITION", "0 of 2 approvals");
    await co.approveQuorumRequest({ id });
    await co2.approveQuorumRequest({ id });
    expect((await co.getQuorumRequest({ id })).status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);
    await expectError(alice.trimKeyVersions({ keyId: other, quorumRequestId: id }), "PERMISSION_DENIED", "approved TrimKeyVersions");
    const t = await alice.trimKeyVersions({ keyId, quorumRequestId: id });
    expect([t.versionCount, t.version]).toEqual([1, 2]);
    expect((await alice.listKeyVersions({ keyId })).versions.map((v) => v.version)).toEqual([2]);
    expect((await alice.listKeyVersions({ keyId: other })).versions.map((v) => v.version)).toEqual([1, 2]);
    expect((await co.getQuorumRequest({ id })).status).toBe(QuorumStatus.QUORUM_STATUS_EXECUTED);
  });
});
