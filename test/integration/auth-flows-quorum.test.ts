/**
 * The whole M-of-N quorum flow (`DeleteUser: 2, ShareKey: 2`) through real gRPC against a real
 * in-process daemon on a fresh SoftHSM2 token (users, sessions, lockout, revocation, the audit log and
 * expiring sessions: auth-flows.test.ts; shared fixtures: test/helpers/auth-flows.ts).
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, KeySpec, QuorumStatus } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { USER_PASSWORD } from "../helpers/users";
import { CO, CU, closeClients, ECDSA, expectError, login, OFFICER2_PASSWORD, officer, officers, useTrackedClients } from "../helpers/auth-flows";

useTrackedClients();

describe("quorum (DeleteUser: 2, ShareKey: 2)", () => {
  let td: TestDaemon;
  let co: HsmClient;
  let co2: HsmClient;

  beforeAll(async () => {
    td = await startTestDaemon({ config: { auth: { quorum: { operations: { DeleteUser: 2, ShareKey: 2 } } } } });
    co = await officer(td);
    const o2 = await co.createUser({ username: "officer2", role: CO, password: OFFICER2_PASSWORD, mustChangePassword: false });
    expect(o2).toMatchObject({ role: CO, mustChangePassword: false });
    co2 = await login(td, "officer2", OFFICER2_PASSWORD);
    for (const u of ["victim-a", "victim-b", "victim-c"]) await co.createUser({ username: u, role: CU, password: USER_PASSWORD });
  });
  afterAll(async () => {
    closeClients();
    officers.clear();
    await td?.cleanup();
  });

  it("DeleteUser needs 2 distinct approvals, runs once, and only for the user that was approved", async () => {
    const e = await expectError(co.deleteUser({ username: "victim-a" }), "FAILED_PRECONDITION", "DeleteUser needs the approval of 2 crypto officers", "quorum_request_id=");
    const id = e.quorumRequestId;
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(e.details).toContain(`quorum request ${id} is pending`);
    expect(e.details).toContain(`quorum_request_id=${id}`);

    const q = await co2.getQuorumRequest({ id: id! });
    expect(q).toMatchObject({ id, operation: "DeleteUser", params: { username: "victim-a" }, requestedBy: "admin", required: 2, status: QuorumStatus.QUORUM_STATUS_PENDING, approvals: [] });

    // Not yet approved.
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", `quorum request ${id} is pending with 0 of 2 approvals`, "cannot run yet");

    const first = await co.approveQuorumRequest({ id: id! });
    expect(first).toMatchObject({ duplicate: false, message: "approval recorded (1 of 2 approvals)" });
    expect(first.request?.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", "1 of 2 approvals");

    // The same officer approving again counts once.
    const dup = await co.approveQuorumRequest({ id: id! });
    expect(dup.duplicate).toBe(true);
    expect(dup.message).toContain("counts once");
    expect(dup.request?.approvals.map((a) => a.officer)).toEqual(["admin"]);
    expect(dup.request?.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", "1 of 2 approvals", "cannot run yet");

    const second = await co2.approveQuorumRequest({ id: id! });
    expect(second).toMatchObject({ duplicate: false });
    expect(second.request?.status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);
    expect(second.request?.approvals.map((a) => a.officer)).toEqual(["admin", "officer2"]);
    expect(second.message).toContain("is approved");

    // An approval to delete victim-a never deletes victim-b (and is not used up by the attempt).
    await expectError(
      co.deleteUser({ username: "victim-b", quorumRequestId: id }),
      "PERMISSION_DENIED",
      `quorum request ${id} approved DeleteUser(username="victim-a")`,
      `not DeleteUser(username="victim-b")`,
    );
    expect((await co.getUser({ username: "victim-b" })).username).toBe("victim-b");

    // Either approving officer may run it.
    await co2.deleteUser({ username: "victim-a", quorumRequestId: id });
    await expectError(co.getUser({ username: "victim-a" }), "NOT_FOUND", "user victim-a not found");
    expect((await co.getQuorumRequest({ id: id! })).status).toBe(QuorumStatus.QUORUM_STATUS_EXECUTED);

    // Used once: the same id does not delete a new user of the same name.
    await co.createUser({ username: "victim-a", role: CU, password: USER_PASSWORD });
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", `quorum request ${id} was already executed`);
    expect((await co.getUser({ username: "victim-a" })).username).toBe("victim-a");
    await expectError(co.approveQuorumRequest({ id: id! }), "FAILED_PRECONDITION", "already executed");

    // The audit log tells the story.
    const audit = (await co.queryAuditLog({ operation: "DeleteUser", limit: 1000 })).entries.filter((x) => x.target === "victim-a");
    expect(audit.find((x) => x.status === "FAILED_PRECONDITION" && x.detail.includes(`quorum request ${id} recorded`))).toBeDefined();
    expect(audit.find((x) => x.status === "OK" && x.user === "officer2" && x.detail === `quorum request ${id} executed`)).toBeDefined();
    const approvals = (await co.queryAuditLog({ operation: "ApproveQuorumRequest", limit: 1000 })).entries.filter((x) => x.target === id);
    expect(approvals.map((x) => `${x.user}:${x.status}`)).toEqual(["admin:OK", "admin:OK", "officer2:OK", "admin:FAILED_PRECONDITION"]);
  });

  it("a rejected request cannot be approved or run", async () => {
    const id = (await expectError(co.deleteUser({ username: "victim-c" }), "FAILED_PRECONDITION")).quorumRequestId!;
    await co.approveQuorumRequest({ id });
    const rejected = await co2.rejectQuorumRequest({ id });
    expect(rejected).toMatchObject({ status: QuorumStatus.QUORUM_STATUS_REJECTED, rejectedBy: "officer2" });
    await expectError(co2.approveQuorumRequest({ id }), "FAILED_PRECONDITION", `quorum request ${id} was rejected by officer2`);
    await expectError(co.deleteUser({ username: "victim-c", quorumRequestId: id }), "FAILED_PRECONDITION", "was rejected by officer2", "cannot be executed");
    expect((await co.getUser({ username: "victim-c" })).username).toBe("victim-c");
    expect((await co.listQuorumRequests({ status: QuorumStatus.QUORUM_STATUS_REJECTED })).requests.map((r) => r.id)).toContain(id);
  });

  it("unknown quorum request ids are NOT_FOUND", async () => {
    await expectError(co.approveQuorumRequest({ id: "00000000-0000-4000-8000-000000000000" }), "NOT_FOUND", "not found");
    await expectError(co.deleteUser({ username: "victim-c", quorumRequestId: "not-an-id" }), "NOT_FOUND", "quorum request not-an-id not found");
  });

  it("a crypto user cannot approve, reject or list quorum requests (PERMISSION_DENIED)", async () => {
    const id = (await expectError(co.deleteUser({ username: "victim-c" }), "FAILED_PRECONDITION")).quorumRequestId!;
    const cu = await login(td, "victim-b", USER_PASSWORD);
    await expectError(cu.approveQuorumRequest({ id }), "PERMISSION_DENIED", "ApproveQuorumRequest is for crypto officer", "victim-b is a crypto user");
    await expectError(cu.rejectQuorumRequest({ id }), "PERMISSION_DENIED", "RejectQuorumRequest is for crypto officer");
    await expectError(cu.listQuorumRequests(), "PERMISSION_DENIED", "ListQuorumRequests is for crypto officer");
    // Someone else's request is invisible to a CU.
    await expectError(cu.getQuorumRequest({ id }), "NOT_FOUND", `quorum request ${id} not found`);
    const q = await co.getQuorumRequest({ id });
    expect(q.approvals).toEqual([]);
    expect(q.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
  });

  it("ShareKey by a CU owner needs the quorum: COs approve, the CU calls again with the id, and the other CU can sign", async () => {
    await co.createUser({ username: "share-owner", role: CU, password: USER_PASSWORD });
    await co.createUser({ username: "share-peer", role: CU, password: USER_PASSWORD });
    const owner = await login(td, "share-owner", USER_PASSWORD);
    const peer = await login(td, "share-peer", USER_PASSWORD);
    const key = await owner.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "to-share" });
    const message = Buffer.from("signed by the peer after the quorum");

    await expectError(peer.sign({ keyId: key.id, algorithm: ECDSA, message }), "NOT_FOUND", `key ${key.id} not found`);

    const e = await expectError(owner.shareKey({ keyId: key.id, username: "share-peer" }), "FAILED_PRECONDITION", "ShareKey needs the approval of 2 crypto officers");
    const id = e.quorumRequestId!;
    expect(e.details).toContain(`quorum_request_id=${id}`);

    // The requester may follow its own request; another CU may not see it.
    expect(await owner.getQuorumRequest({ id })).toMatchObject({
      operation: "ShareKey",
      params: { keyId: key.id, username: "share-peer" },
      requestedBy: "share-owner",
      status: QuorumStatus.QUORUM_STATUS_PENDING,
    });
    await expectError(peer.getQuorumRequest({ id }), "NOT_FOUND");
    await expectError(owner.shareKey({ keyId: key.id, username: "share-peer", quorumRequestId: id }), "FAILED_PRECONDITION", "cannot run yet");

    await co.approveQuorumRequest({ id });
    expect((await co2.approveQuorumRequest({ id })).request?.status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);

    // Bound to the key and the user it names.
    await co.createUser({ username: "share-other", role: CU, password: USER_PASSWORD });
    await expectError(owner.shareKey({ keyId: key.id, username: "share-other", quorumRequestId: id }), "PERMISSION_DENIED", "not ShareKey(");

    const shared = await owner.shareKey({ keyId: key.id, username: "share-peer", quorumRequestId: id });
    expect(shared.sharedWith).toEqual(["share-peer"]);
    expect((await owner.getQuorumRequest({ id })).status).toBe(QuorumStatus.QUORUM_STATUS_EXECUTED);

    const { signature } = await peer.sign({ keyId: key.id, algorithm: ECDSA, message });
    const { pem } = await peer.getPublicKey({ keyId: key.id });
    expect(verifySignature("sha256", message, createPublicKey(pem), signature)).toBe(true);

    // A shared user uses the key but may not share it on.
    await expectError(peer.shareKey({ keyId: key.id, username: "share-other" }), "PERMISSION_DENIED", "only its owner share-owner may");
    // UnshareKey needs no quorum.
    const unshared = await owner.unshareKey({ keyId: key.id, username: "share-peer" });
    expect(unshared.sharedWith).toEqual([]);
    await expectError(peer.sign({ keyId: key.id, algorithm: ECDSA, message }), "NOT_FOUND");
  });
});
