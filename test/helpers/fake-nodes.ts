/**
 * In-process grpc-js fake daemons on 127.0.0.1 port 0 for the SDK's failover unit tests
 * (sdk-failover.test.ts, sdk-relogin-policy.test.ts): every hsm.v1 service implemented generically
 * from the generated definitions, with a shared session state and a mode per node.
 */
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import { afterEach, expect } from "vitest";
import { AuditServiceService } from "../../src/gen/hsm/v1/audit";
import { CryptoServiceService } from "../../src/gen/hsm/v1/crypto";
import { KeyServiceService } from "../../src/gen/hsm/v1/keys";
import { QuorumServiceService, Role, UserServiceService } from "../../src/gen/hsm/v1/users";
import { HsmClient, HsmClientError, type HsmClientOptions } from "../../src/sdk";

/** How a fake node answers every hsm.v1 call (the health service, when present, answers on its own). */
export type Mode = "ok" | "unavailable" | "busy" | "limit" | "hang";

/** Every hsm.v1 service a fake node serves. */
export const SERVICES = [KeyServiceService, CryptoServiceService, UserServiceService, QuorumServiceService, AuditServiceService] as const;

/** The session state the fake cluster shares, as the daemons share their store. */
export interface Auth {
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

/** One fake daemon and what it saw. */
export interface FakeNode {
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

/** The nodes and clients made by the current test, shut down and closed after it (see useFakeNodes). */
export const nodes: FakeNode[] = [];
export const clients: HsmClient[] = [];

/** A fresh shared session state: not enforced, logins work. */
export function newAuth(): Auth {
  return { enforce: false, token: "t-0", logins: 0, loginWorks: true, refused: 0, loginGate: undefined };
}

/** A fake daemon serving every hsm.v1 RPC; `health` adds grpc.health.v1 with that status for "". */
export async function startNode(name: string, auth: Auth, options: { mode?: Mode; health?: ServingStatus } = {}): Promise<FakeNode> {
  const server = new grpc.Server();
  const node: FakeNode = { name, endpoint: "", port: 0, server, mode: options.mode ?? "ok", health: undefined, seen: {}, onCall: undefined };
  for (const def of SERVICES) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const [key, method] of Object.entries(def)) {
      const rpc = method.path.split("/").pop()!;
      if (method.requestStream) {
        // A daemon from before the crypto stream: the SDK falls back to the unary calls these tests count.
        impl[key] = ((call: grpc.ServerDuplexStream<unknown, unknown>) => {
          node.seen[rpc] = (node.seen[rpc] ?? 0) + 1;
          call.emit("error", { code: grpc.status.UNIMPLEMENTED, details: `${rpc} is not served here` });
        }) as grpc.UntypedHandleCall;
        continue;
      }
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
  node.port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  node.endpoint = `127.0.0.1:${node.port}`;
  nodes.push(node);
  return node;
}

/** Answers one call as `node` in its mode, under the shared session state. */
export async function answer(node: FakeNode, auth: Auth, rpc: string, decode: (b: Buffer) => unknown, call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>): Promise<void> {
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

/** A client closed after the test. */
export function client(options: HsmClientOptions): HsmClient {
  const c = new HsmClient(options);
  clients.push(c);
  return c;
}

/** The endpoints of `ns`, for a client. */
export const endpointsOf = (...ns: FakeNode[]): string[] => ns.map((n) => n.endpoint);
/** Calls of `rpc` seen by all of `ns`. */
export const seen = (rpc: string, ...ns: FakeNode[]): number => ns.reduce((sum, n) => sum + (n.seen[rpc] ?? 0), 0);

/** The HsmClientError `p` rejects with (fails the test if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  const err = await p.then(
    () => {
      throw new Error("expected the call to reject");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(HsmClientError);
  return err as HsmClientError;
}

/** Closes the clients made through client() and shuts the fake nodes down after every test of the calling file. */
export function useFakeNodes(): void {
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
    for (const n of nodes.splice(0)) n.server.forceShutdown();
  });
}
