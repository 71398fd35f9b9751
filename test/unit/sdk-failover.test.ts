import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { client, endpointsOf, newAuth, rejection, seen, startNode, useFakeNodes } from "../helpers/fake-nodes";

// Unit tests of the client's failover and retries against in-process fake daemons (test/helpers/fake-nodes.ts).
// Re-login, health, the retry policy and the options: sdk-relogin-policy.test.ts.
useFakeNodes();

describe("many endpoints", () => {
  it("spreads calls over every endpoint, a host name among them", async () => {
    const auth = newAuth();
    const [a, b, c] = [await startNode("a", auth), await startNode("b", auth), await startNode("c", auth)];
    const hsm = client({ endpoints: [a.endpoint, `localhost:${b.port}`, c.endpoint] });
    expect(hsm.endpoints).toEqual([a.endpoint, `localhost:${b.port}`, c.endpoint]);
    expect(hsm.endpoint).toBe(a.endpoint);

    const answeredBy = new Set<string>();
    for (let i = 0; i < 30; i++) answeredBy.add((await hsm.getKey({ keyId: "k" })).id);
    expect([...answeredBy].sort()).toEqual(["a", "b", "c"]);
    for (const n of [a, b, c]) expect(n.seen.GetKey).toBeGreaterThan(0);
    expect(seen("GetKey", a, b, c)).toBe(30);
    expect(hsm.stats).toEqual({ calls: 30, retries: 0, failures: 0, relogins: 0 });
  });

  it("keeps `endpoint` as one endpoint", async () => {
    const a = await startNode("a", newAuth());
    const hsm = client({ endpoint: a.endpoint });
    expect(hsm.endpoints).toEqual([a.endpoint]);
    expect((await hsm.getKey({ keyId: "k" })).id).toBe("a");
  });
});

describe("retries", () => {
  it("retries an UNAVAILABLE answer on another endpoint, and counts it", async () => {
    const auth = newAuth();
    const down = await startNode("down", auth, { mode: "unavailable" });
    const up = await startNode("up", auth);
    // Two attempts only: each call succeeds only if its retry goes to the other endpoint.
    const hsm = client({ endpoints: endpointsOf(down, up), retry: { maxAttempts: 2, initialBackoffMs: 1 } });
    for (let i = 0; i < 10; i++) expect((await hsm.getKey({ keyId: "k" })).id).toBe("up");
    expect(down.seen.GetKey).toBeGreaterThan(0);
    expect(hsm.stats).toEqual({ calls: 10, retries: down.seen.GetKey, failures: 0, relogins: 0 });
  });

  it("fails over from a node that was shut down", async () => {
    const auth = newAuth();
    const [a, b, c] = [await startNode("a", auth), await startNode("b", auth), await startNode("c", auth)];
    const hsm = client({ endpoints: endpointsOf(a, b, c), retry: { initialBackoffMs: 1 } });
    for (let i = 0; i < 6; i++) await hsm.sign({ keyId: "k", message: Buffer.from("m") });
    expect(c.seen.Sign).toBeGreaterThan(0);
    c.server.forceShutdown();
    const before = c.seen.Sign;
    for (let i = 0; i < 12; i++) expect(["a", "b"]).toContain((await hsm.sign({ keyId: "k", message: Buffer.from("m") })).keyId);
    expect(c.seen.Sign).toBe(before);
    expect(hsm.stats.failures).toBe(0);
  });

  it("does not retry a call that is not idempotent", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { initialBackoffMs: 1 } });
    expect((await rejection(hsm.deleteKey({ keyId: "k" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect((await rejection(hsm.createUser({ username: "u" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect((await rejection(hsm.approveQuorumRequest({ id: "q" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("DeleteKey", a, b)).toBe(1);
    expect(seen("CreateUser", a, b)).toBe(1);
    expect(seen("ApproveQuorumRequest", a, b)).toBe(1);
    expect(hsm.stats).toEqual({ calls: 3, retries: 0, failures: 3, relogins: 0 });
  });

  it("retries a create only when it carries a requestId", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { maxAttempts: 3, initialBackoffMs: 1 } });

    expect((await rejection(hsm.generateKey({ label: "x" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("GenerateKey", a, b)).toBe(1);
    expect((await rejection(hsm.unwrapKey({ label: "x" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("UnwrapKey", a, b)).toBe(1);

    expect((await rejection(hsm.generateKey({ label: "x", requestId: "r-1" }))).code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("GenerateKey", a, b)).toBe(1 + 3);
    expect(hsm.stats.retries).toBe(2);

    b.mode = "ok";
    for (let i = 0; i < 4; i++) expect((await hsm.generateKey({ label: "x", requestId: `r-${i}` })).id).toBe("b");
    for (let i = 0; i < 4; i++) expect((await hsm.importKey({ label: "x", requestId: `i-${i}` })).id).toBe("b");
  });

  it("stops after maxAttempts", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { maxAttempts: 4, initialBackoffMs: 1, maxBackoffMs: 5 } });
    const err = await rejection(hsm.listKeys({}));
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("ListKeys", a, b)).toBe(4);
    // Alternating: no endpoint is tried twice before the other.
    expect(a.seen.ListKeys).toBe(2);
    expect(b.seen.ListKeys).toBe(2);
    expect(hsm.stats).toEqual({ calls: 1, retries: 3, failures: 1, relogins: 0 });
  });

  it("keeps every attempt within the call's one deadline", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    const maxAttempts = 50;
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { maxAttempts, initialBackoffMs: 20, maxBackoffMs: 200 } });
    const err = await rejection(hsm.getKey({ keyId: "k" }, { deadlineMs: 300 }));
    expect([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]).toContain(err.code);
    const attempts = seen("GetKey", a, b);
    expect(attempts).toBeGreaterThanOrEqual(1);
    expect(attempts).toBeLessThanOrEqual(maxAttempts);
    expect(hsm.stats.retries).toBe(attempts - 1);
  });

  it("does not retry a call that ran out of its deadline", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "hang" });
    const b = await startNode("b", auth, { mode: "hang" });
    const hsm = client({ endpoints: endpointsOf(a, b) });
    expect((await rejection(hsm.getKey({ keyId: "k" }, { deadlineMs: 100 }))).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(seen("GetKey", a, b)).toBe(1);
    expect(hsm.stats.retries).toBe(0);
  });

  it("retries RESOURCE_EXHAUSTED when a device is out of sessions, not when a limit is hit", async () => {
    const auth = newAuth();
    const busy = await startNode("busy", auth, { mode: "busy" });
    const free = await startNode("free", auth);
    const hsm = client({ endpoints: endpointsOf(busy, free), retry: { maxAttempts: 2, initialBackoffMs: 1 } });
    for (let i = 0; i < 6; i++) expect((await hsm.sign({ keyId: "k" })).keyId).toBe("free");
    expect(busy.seen.Sign).toBeGreaterThan(0);

    busy.mode = "limit";
    free.mode = "limit";
    const err = await rejection(hsm.batchSign({ items: [{}, {}, {}, {}, {}] }));
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(seen("BatchSign", busy, free)).toBe(1);
  });

  it("stops retrying when the call is aborted", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { initialBackoffMs: 60_000, maxBackoffMs: 60_000 } });
    const controller = new AbortController();
    // The caller gives up while the first attempt is on the server, which then answers UNAVAILABLE.
    a.onCall = b.onCall = () => controller.abort(new Error("user gave up"));
    const err = await rejection(hsm.getKey({ keyId: "k" }, { signal: controller.signal, deadlineMs: 600_000 }));
    expect(err.code).toBe(grpc.status.CANCELLED);
    expect((err.cause as Error).message).toBe("user gave up");
    expect(seen("GetKey", a, b)).toBe(1);
    expect(hsm.stats).toEqual({ calls: 1, retries: 0, failures: 1, relogins: 0 });
  });

  it("does not wait for a backoff that would end past the deadline", async () => {
    const auth = newAuth();
    const a = await startNode("a", auth, { mode: "unavailable" });
    const b = await startNode("b", auth, { mode: "unavailable" });
    // Every backoff is far longer than the deadline (bar a jitter draw under 1e-7 of the ceiling).
    const hsm = client({ endpoints: endpointsOf(a, b), retry: { initialBackoffMs: 1e10, maxBackoffMs: 1e10 } });
    const err = await rejection(hsm.getKey({ keyId: "k" }, { deadlineMs: 1_000 }));
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(seen("GetKey", a, b)).toBe(1);
  });
});
