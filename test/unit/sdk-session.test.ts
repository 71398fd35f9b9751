import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Role, Session, UserServiceService, type UserServiceServer } from "../../src/gen/hsm/v1/users";
import { GrpcStatus, HsmClient, HsmClientError } from "../../src/sdk";
import { changePasswordForToken, loginForToken, refreshForToken } from "../../src/cli/session-calls";

// A unit test of HsmClient.exportSession, the session hand-over hsmctl saves for its later processes:
// an in-process grpc-js UserService on port 0 that issues numbered tokens and records the token each
// call carried.

type Unary<Req, Res> = grpc.handleUnaryCall<Req, Res>;

/** What the fake server saw: the `authorization` header of each call by RPC name, in order. */
const seen: Array<{ rpc: string; authorization: string | undefined; request: unknown }> = [];
let issued = 0;
const EXPIRES = "2030-01-02T03:04:05.000Z";

function record(rpc: string, call: grpc.ServerUnaryCall<unknown, unknown>): void {
  const auth = call.metadata.get("authorization")[0];
  seen.push({ rpc, authorization: typeof auth === "string" ? auth : undefined, request: call.request });
}

function session(username: string, mustChangePassword: boolean): Session {
  issued += 1;
  return Session.fromPartial({ token: `tok-${issued}`, expiresAt: EXPIRES, role: Role.ROLE_CRYPTO_USER, username, mustChangePassword });
}

const userService: Partial<UserServiceServer> = {
  login: ((call, cb) => {
    record("Login", call);
    if (call.request.password !== "right") return cb({ code: grpc.status.UNAUTHENTICATED, details: "wrong username or password" });
    cb(null, session(call.request.username, call.request.username === "fresh"));
  }) as Unary<{ username: string; password: string }, Session>,
  refreshSession: ((call, cb) => {
    record("RefreshSession", call);
    cb(null, session("alice", false));
  }) as Unary<unknown, Session>,
  changePassword: ((call, cb) => {
    record("ChangePassword", call);
    cb(null, session("fresh", false));
  }) as Unary<unknown, Session>,
  logout: ((call, cb) => {
    record("Logout", call);
    cb(null, {});
  }) as Unary<unknown, object>,
};

let server: grpc.Server;
let endpoint: string;
const clients: HsmClient[] = [];

function client(): HsmClient {
  const c = new HsmClient({ endpoint });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  server = new grpc.Server();
  server.addService(UserServiceService, userService as UserServiceServer);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  endpoint = `127.0.0.1:${port}`;
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  seen.length = 0;
});

afterAll(() => {
  server.forceShutdown();
});

describe("HsmClient.exportSession", () => {
  it("is undefined before a login, then the logged-in session with its token; undefined again after logout", async () => {
    const c = client();
    expect(c.exportSession()).toBeUndefined();
    const info = await c.login("fresh", "right");
    const exported = c.exportSession();
    expect(exported).toEqual({ ...info, token: `tok-${issued}` });
    expect(exported).toMatchObject({ username: "fresh", role: Role.ROLE_CRYPTO_USER, mustChangePassword: true });
    expect(exported!.expiresAt.toISOString()).toBe(EXPIRES);
    // A copy: changing it changes nothing in the client.
    exported!.token = "changed";
    expect(c.exportSession()!.token).toBe(`tok-${issued}`);
    await c.logout();
    expect(seen.at(-1)).toMatchObject({ rpc: "Logout", authorization: `Bearer tok-${issued}` });
    expect(c.exportSession()).toBeUndefined();
  });

  it("a failed login exports nothing", async () => {
    const c = client();
    const err = await c.login("alice", "wrong").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmClientError);
    expect((err as HsmClientError).code).toBe(GrpcStatus.UNAUTHENTICATED);
    expect(c.exportSession()).toBeUndefined();
  });

  it("after useToken: nothing until a refresh answers, then the fresh session; the refresh carried the given token", async () => {
    const c = client();
    c.useToken("saved-token");
    expect(c.exportSession()).toBeUndefined();
    await c.refreshSession();
    expect(seen).toEqual([{ rpc: "RefreshSession", authorization: "Bearer saved-token", request: {} }]);
    expect(c.exportSession()).toMatchObject({ token: `tok-${issued}`, username: "alice", mustChangePassword: false });
  });

  it("a password change under a handed-over token exports the new session (no refresh first)", async () => {
    const c = client();
    c.useToken("saved-token");
    await c.changePassword("old-pw", "new-pw");
    expect(seen).toEqual([{ rpc: "ChangePassword", authorization: "Bearer saved-token", request: { oldPassword: "old-pw", newPassword: "new-pw" } }]);
    expect(c.exportSession()).toMatchObject({ token: `tok-${issued}`, username: "fresh", mustChangePassword: false });
  });
});

// hsmctl's session calls (src/cli/session-calls.ts) go through the client above, one endpoint at a
// time: an unreachable endpoint is followed by the next, an answer from the server ends the walk.
describe("hsmctl session calls through the SDK", () => {
  const settings = (endpoints: string[]) => ({ endpoints, tls: undefined, deadlineMs: 10_000, sessionFile: "/nonexistent/session.json" });

  it("logs in on the first reachable endpoint and hands back the session with its token", async () => {
    const s = await loginForToken(settings(["127.0.0.1:1", endpoint]), "alice", "right");
    expect(s).toMatchObject({ token: `tok-${issued}`, username: "alice", role: Role.ROLE_CRYPTO_USER, mustChangePassword: false });
    expect(seen.map((e) => e.rpc)).toEqual(["Login"]);
  });

  it("does not try the next endpoint once a server answered with an error", async () => {
    const err = await loginForToken(settings([endpoint, endpoint.replace(/:\d+$/, ":1")]), "alice", "wrong").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmClientError);
    expect((err as HsmClientError).code).toBe(GrpcStatus.UNAUTHENTICATED);
    expect(seen.map((e) => e.rpc)).toEqual(["Login"]);
  });

  it("UNAVAILABLE when no endpoint is reachable", async () => {
    const err = await loginForToken(settings(["127.0.0.1:1"]), "alice", "right").catch((e: unknown) => e);
    expect((err as HsmClientError).code).toBe(GrpcStatus.UNAVAILABLE);
    expect(seen).toEqual([]);
  });

  it("refresh and password change carry the saved token", async () => {
    const refreshed = await refreshForToken(settings(["127.0.0.1:1", endpoint]), "saved-1");
    const changed = await changePasswordForToken(settings([endpoint]), refreshed.token, "old-pw", "new-pw");
    expect(seen.map((e) => [e.rpc, e.authorization])).toEqual([
      ["RefreshSession", "Bearer saved-1"],
      ["ChangePassword", `Bearer ${refreshed.token}`],
    ]);
    expect(changed.token).toBe(`tok-${issued}`);
  });
});
