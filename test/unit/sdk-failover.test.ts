import * as grpc from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import { afterEach, describe, expect, it } from "vitest";
import { AuditServiceService } from "../../src/gen/hsm/v1/audit";
import { ClusterServiceService } from "../../src/gen/hsm/v1/cluster";
import { CryptoServiceService } from "../../src/gen/hsm/v1/crypto";
import { KeyServiceService } from "../../src/gen/hsm/v1/keys";
import { QuorumServiceService, Role, UserServiceService } from "../../src/gen/hsm/v1/users";
import {
  DEFAULT_RETRY,
  HsmClient,
  HsmClientError,
  RPC_IDEMPOTENCY,
  backoffMs,
  isIdempotent,
  isTransient,
  type HsmClientOptions,
} from "../../src/sdk";

// Unit tests of the client's failover, retries and re-login against in-process grpc-js fake daemons
// on 127.0.0.1 port 0, implementing every hsm.v1 service generically from the generated definitions.

/** How a fake node answers every hsm.v1 call (the health service, when present, answers on its own). */
type Mode = "ok" | "unavailable" | "busy" | "limit" | "hang";

const SERVICES = [KeyServiceService, CryptoServiceService, UserServiceService, QuorumServiceService, AuditServiceService] as const;

/** The session state the fake cluster shares, as the daemons share their store. */
interface Auth {
  /** When set, every call but Login must carry `Bearer <token>`. */
  enforce: boolean;
  token: string;
  logins: number;
  /** When false, Login answers a token that is not accepted either (a session that cannot be had). */
  loginWorks: boolean;
  /** UNAUTHENTICATED answers sent so far. */
  refused: number;
  /** Login waits for this before answering, when set. */
  loginGate: Promise<void> | undefined;
}

interface FakeNode {
  name: string;
  endpoint: string;
  port: number;
  server: grpc.Server;
  mode: Mode;
  health: HealthImplementation | undefined;
  /** Calls seen, by method name ("GetKey"), whatever the answer. */
  seen: Record<string, number>;
  /** Runs as each hsm.v1 call arrives, before it is answered. */
  onCall: (() => void) | undefined;
}

const nodes: FakeNode[] = [];
const clients: HsmClient[] = [];

function newAuth(): Auth {
  return { enforce: false, token: "t-0", logins: 0, loginWorks: true, refused: 0, loginGate: undefined };
}

/** A fake daemon serving every hsm.v1 RPC; `health` adds grpc.health.v1 with that status for "". */
async function startNode(name: string, auth: Auth, options: { mode?: Mode; health?: ServingStatus } = {}): Promise<FakeNode> {
  const server = new grpc.Server();
  const node: FakeNode = { name, endpoint: "", port: 0, server, mode: options.mode ?? "ok", health: undefined, seen: {}, onCall: undefined };
  for (const def of SERVICES) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const [key, method] of Object.entries(def)) {
      const rpc = method.path.split("/").pop()!;
      impl[key] = ((call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        node.seen[rpc] = (node.seen[rpc] ?? 0) + 1;
        node.onCall?.();
        void answer(node, auth, rpc, method.responseDeserialize as (b: Buffer) => unknown, call, cb);
      }) as grpc.UntypedHandleCall;
    }
    server.addService(def as unknown as grpc.ServiceDefinition, impl);
  }
  if (options.health !== undefined) {
    node.health = new HealthImplementation({ "": options.health });
    node.health.addToServer(server);
  }
  node.port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  node.endpoint = `127.0.0.1:${node.port}`;
  nodes.push(node);
  return node;
}

async function answer(
  node: FakeNode,
  auth: Auth,
  rpc: string,
  decode: (b: Buffer) => unknown,
  call: grpc.ServerUnaryCall<unknown, unknown>,
  cb: grpc.sendUnaryData<unknown>,
): Promise<void> {
  switch (node.mode) {
    case "hang":
      return;
    case "unavailable":
      return cb({ code: grpc.status.UNAVAILABLE, details: `${node.name} is down` });
    case "busy":
      return cb({ code: grpc.status.RESOURCE_EXHAUSTED, details: "sign: CKR_SESSION_COUNT: the device is out of memory or sessions" });
    case "limit":
      return cb({ code: grpc.status.RESOURCE_EXHAUSTED, details: "batch has 5 items; the limit is 4 (limits.maxBatchItems)" });
    case "ok":
      break;
  }
  if (rpc === "Login") {
    auth.logins += 1;
    if (auth.loginGate !== undefined) await auth.loginGate;
    const token = `t-${auth.logins}`;
    if (auth.loginWorks) auth.token = token;
    const req = call.request as { username: string };
    const expiresAt = new Date(Date.now() + 3_600_000).toISOString();
    return cb(null, { token, expiresAt, mustChangePassword: false, role: Role.ROLE_CRYPTO_USER, username: req.username });
  }
  if (auth.enforce && call.metadata.get("authorization")[0] !== `Bearer ${auth.token}`) {
    auth.refused += 1;
    return cb({ code: grpc.status.UNAUTHENTICATED, details: "invalid session token" });
  }
  // The proto3 default of the response type, naming the node that answered where there is an id.
  const response = decode(Buffer.alloc(0)) as Record<string, unknown>;
  if ("id" in response) response.id = node.name;
  if ("keyId" in response) response.keyId = node.name;
  cb(null, response);
}

function client(options: HsmClientOptions): HsmClient {
  const c = new HsmClient(options);
  clients.push(c);
  return c;
}

/** The endpoints of `ns`, for a client. */
const endpointsOf = (...ns: FakeNode[]): string[] => ns.map((n) => n.endpoint);
/** Calls of `rpc` seen by all of `ns`. */
const seen = (rpc: string, ...ns: FakeNode[]): number => ns.reduce((sum, n) => sum + (n.seen[rpc] ?? 0), 0);

async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  const err = await p.then(
    () => {
      throw new Error("expected the call to reject");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(HsmClientError);
  return err as HsmClientError;
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  for (const n of nodes.splice(0)) n.server.forceShutdown();
});

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
    await expect
      .poll(async () => (await hsm.getKey({ keyId: "k" })).id, { timeout: 20_000, interval: 50 })
      .toBe("sick");
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
    expect(details).toContain("endpoints[2]: \"a:1\" is listed twice");
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
