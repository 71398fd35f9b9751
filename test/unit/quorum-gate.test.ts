import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { checkQueryArgs } from "../../src/audit";
import { Code, HsmError } from "../../src/errors";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";
import { QuorumPendingError, QuorumService, passQuorum } from "../../src/users";

let root: string;
let store: EmbeddedStore;

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), "hsmd-quorum-gate-"));
  store = await openEmbeddedStore(join(root, "state"), { warn: () => undefined });
});
afterEach(async () => {
  await store.close();
  rmSync(root, { recursive: true, force: true });
});

const quorum = () => new QuorumService({ store, ttlMs: 60_000, policy: { ResetPassword: 2, ShareKey: 1 } });

describe("the quorum gate (passQuorum)", () => {
  it("lets an operation without a quorum through with no audit detail and records nothing", async () => {
    const q = quorum();
    await expect(passQuorum(q, "co1", "ShareKey", { keyId: "k" }, "")).resolves.toEqual({});
    await expect(passQuorum(q, "co1", "LockUser", { username: "u" }, "")).resolves.toEqual({});
    expect(await q.list()).toEqual([]);
  });

  it("without a request id records a pending request and refuses with FAILED_PRECONDITION naming it", async () => {
    const q = quorum();
    const err = await passQuorum(q, "co1", "ResetPassword", { username: "alice" }, "").then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QuorumPendingError);
    const pending = err as QuorumPendingError;
    expect(pending).toBeInstanceOf(HsmError);
    expect(pending.code).toBe(Code.FailedPrecondition);
    expect(pending.required).toBe(2);
    expect(pending.message).toBe(
      `ResetPassword needs the approval of 2 crypto officers: quorum request ${pending.requestId} is pending; when approved, call ResetPassword again with quorum_request_id=${pending.requestId}`,
    );
    expect(pending.detail).toBe(`quorum request ${pending.requestId} recorded: needs 2 approvals`);
    const listed = await q.list();
    expect(listed.map((r) => [r.id, r.operation, r.status, r.requestedBy])).toEqual([[pending.requestId, "ResetPassword", "pending", "co1"]]);
  });

  it("with an approved request for the same params passes once (consuming it), then refuses", async () => {
    const q = quorum();
    const r = await q.request("co1", "ResetPassword", { username: "alice" });
    await q.approve("co1", r.id);
    await q.approve("co2", r.id);
    await expect(passQuorum(q, "co1", "ResetPassword", { username: "alice" }, r.id)).resolves.toEqual({ detail: `quorum request ${r.id} executed` });
    expect((await q.get(r.id)).status).toBe("executed");
    await expect(passQuorum(q, "co1", "ResetPassword", { username: "alice" }, r.id)).rejects.toMatchObject({ code: Code.FailedPrecondition });
  });

  it("refuses an approved request used for other params (PERMISSION_DENIED) and leaves it unspent", async () => {
    const q = quorum();
    const r = await q.request("co1", "ResetPassword", { username: "alice" });
    await q.approve("co1", r.id);
    await q.approve("co2", r.id);
    await expect(passQuorum(q, "co1", "ResetPassword", { username: "bob" }, r.id)).rejects.toMatchObject({ code: Code.PermissionDenied });
    expect((await q.get(r.id)).status).toBe("approved");
  });
});

describe("QueryAuditLog's argument checks (checkQueryArgs)", () => {
  it("accepts a limit up to 1000 and an after_seq up to 2^53 - 1", () => {
    expect(() => checkQueryArgs({ limit: 0, afterSeq: 0n })).not.toThrow();
    expect(() => checkQueryArgs({ limit: 1000, afterSeq: BigInt(Number.MAX_SAFE_INTEGER) })).not.toThrow();
  });

  it("refuses a larger limit or after_seq with INVALID_ARGUMENT naming the field", () => {
    expect(() => checkQueryArgs({ limit: 1001, afterSeq: 0n })).toThrow(expect.objectContaining({ code: Code.InvalidArgument, message: "limit must be at most 1000" }));
    expect(() => checkQueryArgs({ limit: 10, afterSeq: BigInt(Number.MAX_SAFE_INTEGER) + 1n })).toThrow(expect.objectContaining({ code: Code.InvalidArgument, message: "after_seq is out of range" }));
  });
});
