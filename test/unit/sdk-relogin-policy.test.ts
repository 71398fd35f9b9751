import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { ClusterServiceService } from "../../src/gen/hsm/v1/cluster";
import { DEFAULT_RETRY, HsmClient, HsmClientError, RPC_IDEMPOTENCY, backoffMs, isIdempotent, isTransient, type HsmClientOptions } from "../../src/sdk";
import { client, endpointsOf, newAuth, rejection, SERVICES, seen, startNode, useFakeNodes } from "../helpers/fake-nodes";

// Unit tests of the client's re-login, health checks, retry policy and options against in-process
// fake daemons (test/helpers/fake-nodes.ts). Failover and retries: sdk-failover.test.ts.
useFakeNodes();

describe("re-login", () => {
  const credentialsOf = (counter: { calls: number }) => async () => {
    counter.calls += 1;
    return { username: "app", password: "app-password" };
  };

  it("logs in again once with the credentials and repeats the call", async () => {
    const auth = { ...newAuth(), enforce: true };
    const a = await startNode("a", auth);
    const b = await startNode("b", auth);
    const asked = { calls: 0 };
    const hsm = client({ endpoints: endpointsOf(a, b), credentials: credentialsOf(asked) });
    expect((await hsm.getKey({ keyId: "k" })).id).toMatch(/^[ab]$/);
    expect(auth.logins).toBe(1);
    expect(asked.calls).toBe(1);
    expect(hsm.session?.username).toBe("app");
    expect(hsm.stats).toEqual({ calls: 2, retries: 1, failures: 0, relogins: 1 });

    // Later the token is revoked: the next call logs in again, a non-idempotent one too.
    auth.token = "revoked-elsewhere";
    await hsm.deleteKey({ keyId: "k" });
    expect(seen("DeleteKey", a, b)).toBe(2);
    expect(auth.logins).toBe(2);
    expect(hsm.stats.relogins).toBe(2);
  });

  it("lets UNAUTHENTICATED through without credentials", async () => {
    const auth = { ...newAuth(), enforce: true };
    const a = await startNode("a", auth);
    const hsm = client({ endpoint: a.endpoint });
    hsm.useToken("stale");
    const err = await rejection(hsm.getKey({ keyId: "k" }));
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(auth.logins).toBe(0);
    expect(hsm.stats).toEqual({ calls: 1, retries: 0, failures: 1, relogins: 0 });
  });

  it("shares one re-login among concurrent calls", async () => {
    const auth = { ...newAuth(), enforce: true };
    const a = await startNode("a", auth);
    const b = await startNode("b", auth);
    const c = await startNode("c", auth);
    const concurrent = 10;
    // Login answers only once every call has been refused: they all wait on the same re-login.
    let release!: () => void;
    auth.loginGate = new Promise<void>((resolve) => (release = resolve));
    const asked = { calls: 0 };
    const hsm = client({ endpoints: endpointsOf(a, b, c), credentials: credentialsOf(asked) });
    hsm.useToken("expired");
    const pending = Promise.all(Array.from({ length: concurrent }, (_, i) => hsm.encrypt({ keyId: `k${i}` })));
    await expect.poll(() => auth.refused).toBe(concurrent);
    release();
    const results = await pending;
    expect(results).toHaveLength(concurrent);
    expect(auth.logins).toBe(1);
    expect(asked.calls).toBe(1);
    expect(hsm.stats).toMatchObject({ retries: concurrent, failures: 0, relogins: 1 });
  });

  it("lets a second UNAUTHENTICATED through: one re-login per call", async () => {
    const auth = { ...newAuth(), enforce: true, loginWorks: false };
    const a = await startNode("a", auth);
    const hsm = client({ endpoint: a.endpoint, credentials: credentialsOf({ calls: 0 }) });
    expect((await rejection(hsm.getKey({ keyId: "k" }))).code).toBe(grpc.status.UNAUTHENTICATED);
    expect(auth.logins).toBe(1);
    expect(a.seen.GetKey).toBe(2);
  });

  it("reports credentials that cannot be had as UNAUTHENTICATED", async () => {
    const auth = { ...newAuth(), enforce: true };
    const a = await startNode("a", auth);
    const hsm = client({
      endpoint: a.endpoint,
      credentials: () => Promise.reject(new Error("the vault is sealed")),
    });
    const err = await rejection(hsm.getKey({ keyId: "k" }));
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.details).toBe("the vault is sealed");
    expect(auth.logins).toBe(0);
  });
});

describe("health", () => {
  it("keeps a NOT_SERVING node out of rotation until it serves again", async () => {
    const auth = newAuth();
    const sick = await startNode("sick", auth, { mode: "unavailable", health: "NOT_SERVING" });
    const b = await startNode("b", auth, { health: "SERVING" });
    const c = await startNode("c", auth, { health: "SERVING" });
    const hsm = client({ endpoints: endpointsOf(sick, b, c), retry: { initialBackoffMs: 1 } });
    for (let i = 0; i < 15; i++) expect(["b", "c"]).toContain((await hsm.getKey({ keyId: "k" })).id);
    // Without health checking, round robin would have sent it about a third of the calls.
    expect(sick.seen.GetKey ?? 0).toBeLessThanOrEqual(1);

    sick.mode = "ok";
    sick.health!.setStatus("", "SERVING");
    await expect.poll(async () => (await hsm.getKey({ keyId: "k" })).id, { timeout: 20_000, interval: 50 }).toBe("sick");
    expect(hsm.stats.failures).toBe(0);
  });
});

describe("retry policy", () => {
  it("classifies every RPC of every service in one table", () => {
    const paths = [...SERVICES, ClusterServiceService].flatMap((def) => Object.values(def).map((m) => m.path)).sort();
    expect(Object.keys(RPC_IDEMPOTENCY).sort()).toEqual(paths);
    for (const path of ["/hsm.v1.KeyService/DeleteKey", "/hsm.v1.UserService/Login", "/hsm.v1.KeyService/ShareKey"]) {
      expect(isIdempotent(path, {})).toBe(false);
    }
    expect(isIdempotent("/hsm.v1.CryptoService/BatchDecrypt", {})).toBe(true);
    expect(isIdempotent("/hsm.v1.KeyService/GenerateKey", { requestId: "" })).toBe(false);
    expect(isIdempotent("/hsm.v1.KeyService/GenerateKey", { requestId: "r" })).toBe(true);
    expect(isIdempotent("/hsm.v1.CryptoService/DeriveKey", { requestId: "r" })).toBe(true);
    expect(isIdempotent("/not.a/Method", { requestId: "r" })).toBe(false);
  });

  it("treats UNAVAILABLE and a busy device as transient, limits and the rest not", () => {
    expect(isTransient(new HsmClientError(grpc.status.UNAVAILABLE, "x"))).toBe(true);
    expect(isTransient(new HsmClientError(grpc.status.RESOURCE_EXHAUSTED, "sign: CKR_SESSION_COUNT: the device is out of memory or sessions"))).toBe(true);
    expect(isTransient(new HsmClientError(grpc.status.RESOURCE_EXHAUSTED, "length 65 is over the limit of 64 bytes (limits.maxRandomBytes)"))).toBe(false);
    expect(isTransient(new HsmClientError(grpc.status.INTERNAL, "x"))).toBe(false);
    expect(isTransient(new HsmClientError(grpc.status.DEADLINE_EXCEEDED, "x"))).toBe(false);
  });

  it("backs off exponentially with full jitter up to the ceiling", () => {
    const top = () => 0.999999;
    expect([1, 2, 3, 4, 5, 6, 7].map((r) => backoffMs(r, DEFAULT_RETRY, top))).toEqual([49, 99, 199, 399, 799, 1599, 1999]);
    expect(backoffMs(30, DEFAULT_RETRY, top)).toBe(1999);
    expect(backoffMs(3, DEFAULT_RETRY, () => 0)).toBe(0);
  });
});

describe("options", () => {
  function problemsOf(options: HsmClientOptions): string {
    try {
      new HsmClient(options);
    } catch (e) {
      expect(e).toBeInstanceOf(HsmClientError);
      expect((e as HsmClientError).code).toBe(grpc.status.INVALID_ARGUMENT);
      return (e as HsmClientError).details;
    }
    throw new Error("expected the options to be refused");
  }

  it("reports every problem together", () => {
    const details = problemsOf({
      endpoints: ["a:1", "no-port", "a:1", "h:99999", "[::1]:7443", "[zz]:1", "two:ports:1", " "],
      retry: { maxAttempts: 0, initialBackoffMs: -1, maxBackoffMs: Number.NaN },
      credentials: "secret" as never,
      defaultDeadlineMs: 0,
    });
    expect(details).toContain('endpoints[1]: must be "host:port"');
    expect(details).toContain('endpoints[2]: "a:1" is listed twice');
    expect(details).toContain("endpoints[3]");
    expect(details).not.toContain("endpoints[4]");
    expect(details).toContain("endpoints[5]");
    expect(details).toContain("endpoints[6]");
    expect(details).toContain("endpoints[7]");
    expect(details).toContain("retry.maxAttempts");
    expect(details).toContain("retry.initialBackoffMs");
    expect(details).toContain("retry.maxBackoffMs");
    expect(details).toContain("credentials");
    expect(details).toContain("defaultDeadlineMs");
  });

  it("wants exactly one of endpoint and endpoints", () => {
    expect(problemsOf({ endpoint: "a:1", endpoints: ["b:2"] })).toContain("exactly one");
    expect(problemsOf({})).toContain("endpoint");
    expect(problemsOf({ endpoints: [] })).toContain("non-empty");
    expect(problemsOf({ endpoint: "localhost" })).toContain('endpoint: must be "host:port"');
  });
});
