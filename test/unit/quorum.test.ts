import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Code } from "../../src/errors";
import { getJson, openEmbeddedStore, type EmbeddedStore } from "../../src/store";
import { QUORUM_PREFIX, QuorumService, type QuorumRequest, type QuorumServiceOptions } from "../../src/users";
import { rejectsWith } from "../helpers/user-service";

const T0 = 1_700_000_000_000;
const POLICY = { DeleteUser: 3, ResetPassword: 2, ShareKey: 1, LockUser: 0 };

let root: string;
let store: EmbeddedStore;
let t: number;

function quorum(opts: Partial<QuorumServiceOptions> = {}): QuorumService {
  return new QuorumService({ store, now: () => t, ttlMs: 1000, policy: POLICY, ...opts });
}

async function stored(id: string): Promise<QuorumRequest> {
  return (await getJson<QuorumRequest>(store, QUORUM_PREFIX + id))!.value;
}

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), "hsmd-quorum-"));
  store = await openEmbeddedStore(join(root, "state"), { warn: () => undefined });
  t = T0;
});
afterEach(async () => {
  await store.close();
  rmSync(root, { recursive: true, force: true });
});

describe("quorum: policy and requests", () => {
  it("reads M from the policy; absent or <= 1 means no quorum", async () => {
    const q = quorum();
    expect(q.required("DeleteUser")).toBe(3);
    expect(q.required("ResetPassword")).toBe(2);
    expect(q.required("ShareKey")).toBe(1);
    expect(q.required("LockUser")).toBe(1);
    expect(q.required("Unknown")).toBe(1);
    expect(q.required("toString")).toBe(1);
    await rejectsWith(q.request("co1", "ShareKey", { keyId: "k" }), Code.FailedPrecondition, "operation ShareKey does not require quorum");
    await rejectsWith(q.request("co1", "Unknown", {}), Code.FailedPrecondition);
    await rejectsWith(q.request("co1", "DeleteUser", { name: 5 as unknown as string }), Code.InvalidArgument);
    expect(() => quorum({ policy: { DeleteUser: -1 } })).toThrow(/non-negative integer/);
    expect(() => quorum({ policy: { DeleteUser: 1.5 } })).toThrow(/non-negative integer/);
  });

  it("records a pending request in the store", async () => {
    const q = quorum();
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    expect(r).toMatchObject({ status: "pending", approvals: [], expiresAt: T0 + 1000, required: 3, requestedBy: "co1" });
    expect(await stored(r.id)).toEqual(r);
    expect(await quorum().get(r.id)).toEqual(r);
    await rejectsWith(q.get("00000000-0000-4000-8000-000000000000"), Code.NotFound);
    await rejectsWith(q.get("../users/admin"), Code.NotFound);
  });
});

describe("quorum: approvals", () => {
  it("is approved at M distinct approvals, not at M-1, and only then can be consumed, once", async () => {
    const q = quorum();
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    const a1 = await q.approve("co1", r.id);
    expect(a1).toMatchObject({ status: "pending", duplicate: false });
    expect(a1.approvals.map((a) => a.co)).toEqual(["co1"]);
    const a2 = await q.approve({ user: "co2" }, r.id);
    expect(a2.status).toBe("pending");
    expect(a2.message).toMatch(/2 of 3/);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice" }), Code.FailedPrecondition, /pending with 2 of 3 approvals/);
    expect((await stored(r.id)).status).toBe("pending");

    t += 500;
    const a3 = await q.approve("co3", r.id);
    expect(a3.status).toBe("approved");
    expect(a3.approvedAt).toBe(T0 + 500);
    expect(a3.expiresAt).toBe(T0 + 1500);
    expect((await stored(r.id)).status).toBe("approved");

    const done = await q.consume(r.id, "DeleteUser", { name: "alice" });
    expect(done.status).toBe("executed");
    expect((await stored(r.id)).status).toBe("executed");
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice" }), Code.FailedPrecondition, /already executed/);
    await rejectsWith(q.approve("co4", r.id), Code.FailedPrecondition, /already executed/);
  });

  it("counts a CO once: a repeated approval is a no-op that says so, sequential or concurrent", async () => {
    const q = quorum({ policy: { ResetPassword: 2 } });
    const r = await q.request("co1", "ResetPassword", { name: "bob" });
    await q.approve("co1", r.id);
    const again = await q.approve("co1", r.id);
    expect(again.duplicate).toBe(true);
    expect(again.message).toMatch(/co1 already approved .* counts once \(1 of 2 approvals\)/);
    expect(again.status).toBe("pending");
    const many = await Promise.all(Array.from({ length: 5 }, () => q.approve("co1", r.id)));
    expect(many.every((a) => a.status === "pending")).toBe(true);
    expect((await stored(r.id)).approvals).toHaveLength(1);
    expect((await stored(r.id)).status).toBe("pending");
    await rejectsWith(q.consume(r.id, "ResetPassword", { name: "bob" }), Code.FailedPrecondition);

    // Concurrent approvals by distinct COs are all counted (no lost update).
    const r2 = await q.request("co1", "ResetPassword", { name: "carol" });
    const q3 = quorum({ policy: { ResetPassword: 4 } });
    const r3 = await q3.request("co1", "ResetPassword", { name: "carol" });
    await Promise.all(["co1", "co2", "co3", "co4", "co1", "co2"].map((co) => q3.approve(co, r3.id)));
    expect((await stored(r3.id)).approvals.map((a) => a.co).sort()).toEqual(["co1", "co2", "co3", "co4"]);
    expect((await stored(r3.id)).status).toBe("approved");
    expect((await stored(r2.id)).approvals).toHaveLength(0);
  });

  it("refuses approvals after expiry, and the request shows and stays expired", async () => {
    const q = quorum({ policy: { DeleteUser: 2 } });
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    t += 1000; // exactly at the deadline: still in time
    await q.approve("co1", r.id);
    t += 1;
    const iso = new Date(T0 + 1000).toISOString();
    await rejectsWith(q.approve("co2", r.id), Code.FailedPrecondition, `quorum request ${r.id} expired at ${iso}: it cannot be approved; make a new request`);
    expect((await stored(r.id)).status).toBe("expired");
    expect((await stored(r.id)).approvals).toHaveLength(1);
    expect((await q.get(r.id)).status).toBe("expired");
    expect((await q.list({ status: "expired" })).map((x) => x.id)).toEqual([r.id]);
    expect(await q.list({ status: "pending" })).toEqual([]);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice" }), Code.FailedPrecondition, /expired at/);
    await rejectsWith(q.reject("co2", r.id), Code.FailedPrecondition, /expired at/);
  });

  it("an approved request must be executed within the time limit after approval", async () => {
    const q = quorum({ policy: { DeleteUser: 2 } });
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    await q.approve("co1", r.id);
    t += 200;
    await q.approve("co2", r.id);
    expect((await q.get(r.id)).status).toBe("approved");
    t += 1001;
    expect((await q.get(r.id)).status).toBe("expired");
    expect((await stored(r.id)).status).toBe("approved"); // only shown until a write or a sweep
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice" }), Code.FailedPrecondition, /expired at/);
    expect((await stored(r.id)).status).toBe("expired");
  });

  it("persists expiry in a sweep", async () => {
    const q = quorum({ policy: { DeleteUser: 2 } });
    const a = await q.request("co1", "DeleteUser", { name: "a" });
    t += 600;
    const b = await q.request("co1", "DeleteUser", { name: "b" });
    t += 401;
    expect((await q.expireStale()).length).toBe(1);
    expect((await stored(a.id)).status).toBe("expired");
    expect((await stored(b.id)).status).toBe("pending");
    expect((await q.expireStale()).length).toBe(0);
  });
});

describe("quorum: rejection and consumption", () => {
  it("a rejected request stays rejected: no approval, no consumption, no expiry", async () => {
    const q = quorum({ policy: { DeleteUser: 2 } });
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    await q.approve("co1", r.id);
    const rej = await q.reject("co2", r.id);
    expect(rej).toMatchObject({ status: "rejected", rejectedBy: "co2", rejectedAt: T0 });
    await rejectsWith(q.approve("co3", r.id), Code.FailedPrecondition, `quorum request ${r.id} was rejected by co2: it cannot be approved`);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice" }), Code.FailedPrecondition, /was rejected by co2/);
    expect((await q.reject("co3", r.id)).rejectedBy).toBe("co2");
    t += 10_000;
    expect((await q.get(r.id)).status).toBe("rejected");
    expect((await stored(r.id)).approvals).toHaveLength(1);

    // An approved, not yet executed request can still be vetoed.
    const r2 = await q.request("co1", "DeleteUser", { name: "bob" });
    await q.approve("co1", r2.id);
    await q.approve("co2", r2.id);
    await q.reject("co3", r2.id);
    await rejectsWith(q.consume(r2.id, "DeleteUser", { name: "bob" }), Code.FailedPrecondition, /rejected/);
  });

  it("consumes only for the approved operation and params, exactly once under concurrency", async () => {
    const q = quorum({ policy: { DeleteUser: 2, ResetPassword: 2 } });
    const r = await q.request("co1", "DeleteUser", { name: "alice" });
    await q.approve("co1", r.id);
    await q.approve("co2", r.id);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "bob" }), Code.PermissionDenied, `quorum request ${r.id} approved DeleteUser(name="alice"), not DeleteUser(name="bob")`);
    await rejectsWith(q.consume(r.id, "ResetPassword", { name: "alice" }), Code.PermissionDenied, /not ResetPassword/);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice", force: "true" }), Code.PermissionDenied);
    await rejectsWith(q.consume(r.id, "DeleteUser", { name: "alice", zone: "x" }), Code.PermissionDenied);
    await rejectsWith(q.consume(r.id, "DeleteUser", {}), Code.PermissionDenied);
    expect((await stored(r.id)).status).toBe("approved");

    const attempts = await Promise.allSettled(Array.from({ length: 5 }, () => quorum({ policy: { DeleteUser: 2 } }).consume(r.id, "DeleteUser", { name: "alice" })));
    expect(attempts.filter((a) => a.status === "fulfilled")).toHaveLength(1);
    for (const a of attempts) if (a.status === "rejected") expect((a.reason as { code: Code }).code).toBe(Code.FailedPrecondition);
    expect((await stored(r.id)).status).toBe("executed");
    expect((await stored(r.id)).executedAt).toBe(T0);
  });

  it("lists requests by status", async () => {
    const q = quorum({ policy: { DeleteUser: 2 } });
    const p = await q.request("co1", "DeleteUser", { name: "a" });
    const ap = await q.request("co1", "DeleteUser", { name: "b" });
    const rj = await q.request("co1", "DeleteUser", { name: "c" });
    await q.approve("co1", ap.id);
    await q.approve("co2", ap.id);
    await q.reject("co1", rj.id);
    expect((await q.list()).map((x) => x.id).sort()).toEqual([p.id, ap.id, rj.id].sort());
    expect((await q.list({ status: "pending" })).map((x) => x.id)).toEqual([p.id]);
    expect((await q.list({ status: "approved" })).map((x) => x.id)).toEqual([ap.id]);
    expect((await q.list({ status: "rejected" })).map((x) => x.id)).toEqual([rj.id]);
  });
});
