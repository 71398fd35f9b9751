import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { AccessGuard, PeerRateLimiter } from "../access";
import { AuditThrottle, MAX_DETAIL_LENGTH, queryAuditLog, verifyAuditLog, type AuditEntry, type AuditLog } from "../audit";
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { AuditServiceService, type AuditServiceServer } from "../gen/hsm/v1/audit";
import { ClusterServiceService, type ClusterServiceServer } from "../gen/hsm/v1/cluster";
import type { Membership } from "../cluster";
import { CryptoServiceService, type CryptoServiceServer } from "../gen/hsm/v1/crypto";
import { KeyServiceService, type KeyServiceServer } from "../gen/hsm/v1/keys";
import { QuorumServiceService, UserServiceService, type QuorumServiceServer, type UserServiceServer } from "../gen/hsm/v1/users";
import type { KeyService, UserRef } from "../keys";
import { checkPasswordPolicy, checkUsername, type Principal, type QuorumService, type UserService } from "../users";
import { guardService, RefusedRequest } from "./refusal";
import { requestShapes, type MessageShape } from "./wire-check";
import { callGuardInterceptor } from "./call-guard";
import { auditToProto, joinToProto, quorumStatusFromProto, quorumToProto, roleFromProto, sessionToProto, userToProto } from "./convert";
import { GrpcListener } from "./listener";
import { grpcStatusOf } from "./status";

/** What the gRPC layer reports per call (metrics); never sees request bodies. */
export type RpcObserver = (method: string, code: string, seconds: number) => void;

/** Trailer (and error metadata) naming the quorum request a refused call recorded. */
export const QUORUM_REQUEST_HEADER = "hsmd-quorum-request-id";
/** Request id header: echoed in the trailer, recorded in the audit entry. */
export const REQUEST_ID_HEADER = "x-request-id";

export interface GrpcServerOptions {
  keys: KeyService;
  users: UserService;
  quorum: QuorumService;
  guard: AccessGuard;
  audit: AuditLog;
  /** Path of the audit log (QueryAuditLog, VerifyAuditLog read it). */
  auditFile: string;
  /** fdatasync every audit entry (`always`), or only those of changes (`changes`). */
  auditFsync: "always" | "changes";
  /**
   * Largest request, in bytes (`limits.maxMessageBytes`): checked before decoding with a message
   * naming the limit; the transport itself cuts off messages over this plus {@link TRANSPORT_SLACK_BYTES}.
   */
  maxMessageBytes: number;
  /** Most elements of a repeated field, batch items included (`limits.maxBatchItems`), counted before decoding. */
  maxBatchItems: number;
  observe?: RpcObserver;
  log?: (msg: string) => void;
  /** Cluster membership (absent on a single node). */
  membership?: Membership;
  /** The cluster's name and the newest store revision this node knows (status). */
  clusterName?: string;
  storeRevision?: () => number;
  /** CKA_ID of the domain key (join approvals wrap it). */
  domainKeyId?: string;
  /** Checked before anything else on every call: an error here (e.g. a removed node) is the answer. */
  gate?: () => HsmError | undefined;
  /** Logins per client address (absent: unlimited). */
  loginLimiter?: PeerRateLimiter;
  /** Called after a user changed its own password (the daemon removes the first officer's one-time password file). */
  onPasswordChanged?: (user: string) => void;
  /** Per-connection bounds (the `connections` section). */
  connections: GrpcConnectionOptions;
}

/** What one connection may make the server hold (from the `connections` section of the config). */
export interface GrpcConnectionOptions {
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. */
  maxConcurrentStreams: number;
  /** nghttp2's memory per session, in MiB: past it new streams are refused. */
  maxSessionMemoryMiB: number;
  /** A connection without a call for this long is closed. */
  idleTimeoutMs: number;
  /** Keepalive ping interval (an unanswered ping closes the connection). */
  keepaliveMs: number;
  /** Unread response bytes per connection before its calls answer RESOURCE_EXHAUSTED. */
  maxQueuedResponseBytes: number;
}

/** How long an unanswered keepalive ping keeps a connection open. */
const KEEPALIVE_TIMEOUT_MS = 20_000;

/** Finds proto/ from src/ (tests) or dist/src/ (built). */
export function protoDir(): string {
  let d = __dirname;
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(d, "proto", "hsm", "v1", "keys.proto"))) return join(d, "proto");
    d = dirname(d);
  }
  return resolve(__dirname, "../../proto");
}

/** What a handler knows about its call besides the request. */
interface CallContext {
  method: string;
  /** Set for every method but Login. */
  principal?: Principal;
  token?: string;
  peer: string;
  requestId: string;
  /** Audit fields the handler learns (the created key, the user that logged in, a short detail). */
  audit: { user?: string; role?: string; keyId?: string; target?: string; detail?: string };
  /** Sent back as trailing metadata (also on errors). */
  trailer: grpc.Metadata;
  /** Batches: the access check of one item's key (rejects for a denied item). */
  checkItem: (keyId: string) => Promise<void>;
}

type Handler<Req, Res> = (req: Req, c: CallContext) => Promise<Res> | Res;

const SAFE_TEXT = /^[^\u0000-\u001f\u007f]+$/;
/** A value fit for an audit field (1..max characters, no control characters), else undefined. */
function auditable(v: unknown, max = 128): string | undefined {
  return typeof v === "string" && v.length > 0 && v.length <= max && SAFE_TEXT.test(v) ? v : undefined;
}

/**
 * A request id as a trailer value: gRPC metadata values are printable ASCII, and grpc-js throws on
 * anything else (the call then died with UNKNOWN, unaudited), so other ids are sent percent-encoded.
 */
function headerValue(id: string): string {
  return /^[\x20-\x7e]*$/.test(id) ? id : encodeURIComponent(id);
}

function describeCause(e: unknown): string {
  const c = e instanceof HsmError && e.cause ? e.cause : e;
  return c instanceof Error ? `${c.name}: ${c.message}` : String(c);
}

/**
 * Builds the hsm.v1 services over the domain services. Every RPC passes through {@link rpc}: the
 * session is authenticated and the call authorized by the {@link AccessGuard} (roles, key ownership
 * and shares) before the service runs, every outcome (allowed or denied) is appended to the audit log
 * (on disk before the answer for key and user changes), and every error is mapped to its gRPC status
 * with a message a person can act on (never a CKR number, never internal details).
 */
function services(opts: GrpcServerOptions, refusals: AuditThrottle) {
  const { keys: k, users, quorum, guard, audit } = opts;

  function rpc<Req, Res>(method: string, fn: Handler<Req, Res>): grpc.handleUnaryCall<Req, Res> {
    const rule = guard.rule(method);
    return (call, callback) => {
      const t0 = process.hrtime.bigint();
      if ((call.request as unknown) instanceof RefusedRequest) return refuse(method, call, callback as grpc.sendUnaryData<unknown>, (call.request as unknown as RefusedRequest).error, t0);
      const req = call.request as unknown as Record<string, unknown>;
      const c: CallContext = {
        method,
        peer: call.getPeer(),
        requestId: auditable(req["requestId"]) ?? auditable(call.metadata.get(REQUEST_ID_HEADER)[0]) ?? randomUUID(),
        audit: {},
        trailer: new grpc.Metadata(),
        checkItem: async () => {
          throw new HsmError(Code.PermissionDenied, "no session");
        },
      };
      c.trailer.set(REQUEST_ID_HEADER, headerValue(c.requestId));
      if (rule.target) c.audit.target = auditable(req[rule.target]);
      const keyRefs = rule.keys?.(req) ?? [];
      c.audit.keyId = auditable(keyRefs.find((r) => r.need === "own")?.id ?? keyRefs[0]?.id);
      if (rule.batch) {
        const items = Array.isArray(req["items"]) ? (req["items"] as Array<{ keyId?: unknown }>) : [];
        const ids = new Set(items.map((i) => i.keyId));
        if (ids.size === 1) c.audit.keyId = auditable([...ids][0]);
        c.audit.detail = `batch of ${items.length}`;
      }
      const run = async (): Promise<Res> => {
        const closed = opts.gate?.();
        if (closed) throw closed;
        if (rule.who !== "public") {
          const auth = call.metadata.get("authorization")[0];
          const { principal, token } = await guard.authenticate(typeof auth === "string" ? auth : undefined);
          c.principal = principal;
          c.token = token;
        }
        guard.authorize(method, c.principal);
        for (const ref of keyRefs) await guard.key(c.principal!, ref.id, ref.need, ref.field);
        if (rule.batch) c.checkItem = async (id) => void (await guard.key(c.principal!, id, "use"));
        return fn(call.request, c);
      };
      run().then(
        async (res) => {
          if (rule.createsKey) c.audit.keyId = auditable((res as { id?: unknown }).id) ?? c.audit.keyId;
          const failed = await record(c, "OK", !!rule.change);
          if (failed) return reply(failed);
          observe("OK");
          callback(null, res, c.trailer);
        },
        async (e: unknown) => {
          const err = HsmError.from(e);
          if (err.code === Code.Internal) opts.log?.(`${method}: internal error: ${err.message}; ${describeCause(e)}`);
          const failed = await record(c, err.code, !!rule.change);
          // INTERNAL is logged here in full and answered without details.
          reply(failed ?? (err.code === Code.Internal ? new HsmError(Code.Internal, "internal error (logged on the daemon)") : err));
        },
      );
      function observe(code: string) {
        opts.observe?.(method, code, Number(process.hrtime.bigint() - t0) / 1e9);
      }
      function reply(err: HsmError) {
        observe(err.code);
        callback({ code: grpcStatusOf(err.code), details: err.message, metadata: c.trailer } as grpc.ServiceError);
      }
    };
  }

  /**
   * Answers a request refused before decoding (see ./refusal.ts), without reading its session: the
   * refusal is audited through the {@link AuditThrottle} (the first of each second per client host,
   * method and status at once, the others as a count), so that a flood cannot fill the log.
   */
  function refuse(method: string, call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>, refusal: HsmError, t0: bigint): void {
    const trailer = new grpc.Metadata();
    const requestId = auditable(call.metadata.get(REQUEST_ID_HEADER)[0]) ?? randomUUID();
    trailer.set(REQUEST_ID_HEADER, headerValue(requestId));
    const answer = (err: HsmError) => {
      opts.observe?.(method, err.code, Number(process.hrtime.bigint() - t0) / 1e9);
      callback({ code: grpcStatusOf(err.code), details: err.message, metadata: trailer } as grpc.ServiceError);
    };
    const closed = opts.gate?.();
    if (closed) return answer(closed);
    const entry: AuditEntry = {
      operation: method,
      status: refusal.code,
      requestId,
      client: auditable(call.getPeer(), 256),
      detail: `refused before decoding: ${refusal.message}`.replace(/[\u0000-\u001f\u007f]/g, " ").slice(0, MAX_DETAIL_LENGTH),
    };
    refusals.record(entry).then(
      () => answer(refusal),
      (e: unknown) => {
        opts.log?.(`audit log append failed for ${method} (${refusal.code}): ${describeCause(e)}`);
        answer(new HsmError(Code.Unavailable, "the audit log cannot be written: this node refuses to answer until an operator fixes it", { transient: true }));
      },
    );
  }

  /** Appends the call's audit entry; answers the error to send instead when the log cannot be written. */
  async function record(c: CallContext, status: string, change: boolean): Promise<HsmError | undefined> {
    const entry: AuditEntry = {
      user: c.audit.user ?? c.principal?.user,
      role: c.audit.role ?? c.principal?.role,
      operation: c.method,
      keyId: c.audit.keyId,
      target: c.audit.target,
      status,
      requestId: c.requestId,
      client: auditable(c.peer, 256),
      detail: c.audit.detail,
    };
    try {
      await audit.append(entry, { sync: change || opts.auditFsync === "always" });
      return undefined;
    } catch (e) {
      opts.log?.(`audit log append failed for ${c.method} (${status}): ${describeCause(e)}`);
      return new HsmError(Code.Unavailable, "the audit log cannot be written: this node refuses to answer until an operator fixes it", { transient: true });
    }
  }

  const owner = (c: CallContext): UserRef => ({ user: c.principal!.user, userId: c.principal!.userId });

  /**
   * Runs `fn` when `operation` needs no quorum, or with an approved `quorumRequestId` for exactly
   * these params (consumed once). Without one it records a pending request and answers
   * FAILED_PRECONDITION naming it (and in the {@link QUORUM_REQUEST_HEADER} trailer).
   */
  async function withQuorum<T>(c: CallContext, operation: string, params: Record<string, string>, quorumRequestId: string, fn: () => Promise<T>): Promise<T> {
    const m = quorum.required(operation);
    if (m <= 1) return fn();
    if (!quorumRequestId) {
      const q = await quorum.request(c.principal!, operation, params);
      c.trailer.set(QUORUM_REQUEST_HEADER, q.id);
      c.audit.detail = `quorum request ${q.id} recorded: needs ${m} approvals`;
      throw precondition(
        `${operation} needs the approval of ${m} crypto officers: quorum request ${q.id} is pending; when approved, call ${operation} again with quorum_request_id=${q.id}`,
      );
    }
    await quorum.consume(quorumRequestId, operation, params);
    c.audit.detail = `quorum request ${quorumRequestId} executed`;
    return fn();
  }

  /** A crypto user a key can be shared with: exists, and is a CU. */
  async function shareTarget(username: string): Promise<UserRef> {
    if (!username) throw invalid("username is required");
    const who = await users.identity(username);
    if (!who) throw notFound(`user ${username} not found`);
    if (who.role !== "CU") throw precondition(`user ${username} is not a crypto user: keys are shared with crypto users only`);
    return { user: who.name, userId: who.userId };
  }

  const userImpl: UserServiceServer = {
    login: rpc("Login", async (r, c) => {
      // Before anything else: a refused login costs no hash and no store read.
      opts.loginLimiter?.admitLogin(c.peer);
      if (!r.username) throw invalid("username is required");
      if (!r.password) throw invalid("password is required");
      const res = await users.login(r.username, r.password, c.peer ? { client: c.peer.slice(0, 256) } : undefined);
      c.audit.user = r.username;
      c.audit.role = res.role;
      return sessionToProto(res, r.username);
    }),
    logout: rpc("Logout", async (_r, c) => {
      await users.logout(c.token!);
      return {};
    }),
    refreshSession: rpc("RefreshSession", async (_r, c) => sessionToProto(await users.refresh(c.token!), c.principal!.user)),
    changePassword: rpc("ChangePassword", async (r, c) => {
      const res = await users.changePassword(c.principal!, r.oldPassword, r.newPassword);
      opts.onPasswordChanged?.(c.principal!.user);
      return sessionToProto(res, c.principal!.user);
    }),
    createUser: rpc("CreateUser", async (r, c) =>
      userToProto(await users.createUser(c.principal!, r.username, roleFromProto(r.role), r.password, { mustChangePassword: r.mustChangePassword })),
    ),
    getUser: rpc("GetUser", async (r) => userToProto(await users.getUser(r.username))),
    listUsers: rpc("ListUsers", async (_r, c) => ({ users: (await users.listUsers(c.principal!)).map(userToProto) })),
    deleteUser: rpc("DeleteUser", async (r, c) => {
      checkUsername(r.username);
      // Refusals that do not need the quorum come first, so that an approval is never spent on them.
      if (r.username === c.principal!.user) throw precondition(`user ${r.username} cannot delete itself`);
      const who = await users.identity(r.username);
      if (!who) throw notFound(`user ${r.username} not found`);
      const owned = k.ownedBy(who.userId);
      if (owned > 0) throw precondition(`user ${r.username} owns ${owned} key(s): it must delete them before it can be deleted`);
      await withQuorum(c, "DeleteUser", { username: r.username }, r.quorumRequestId, () => users.deleteUser(c.principal!, r.username));
      return {};
    }),
    lockUser: rpc("LockUser", async (r, c) => userToProto(await users.lockUser(c.principal!, r.username))),
    unlockUser: rpc("UnlockUser", async (r, c) => userToProto(await users.unlockUser(c.principal!, r.username))),
    resetPassword: rpc("ResetPassword", async (r, c) => {
      await users.getUser(r.username);
      if (r.username === c.principal!.user) throw precondition("use ChangePassword to change your own password");
      checkPasswordPolicy(r.newPassword, "new password");
      return userToProto(
        await withQuorum(c, "ResetPassword", { username: r.username }, r.quorumRequestId, () => users.resetPassword(c.principal!, r.username, r.newPassword)),
      );
    }),
  };

  const quorumImpl: QuorumServiceServer = {
    listQuorumRequests: rpc("ListQuorumRequests", async (r) => {
      const status = quorumStatusFromProto(r.status);
      return { requests: (await quorum.list(status ? { status } : {})).map(quorumToProto) };
    }),
    getQuorumRequest: rpc("GetQuorumRequest", async (r, c) => {
      const q = await quorum.get(r.id);
      guard.quorumReader(c.principal!, q.requestedBy, r.id);
      return quorumToProto(q);
    }),
    approveQuorumRequest: rpc("ApproveQuorumRequest", async (r, c) => {
      const a = await quorum.approve(c.principal!, r.id);
      c.audit.detail = `${a.operation}: ${a.approvals.length} of ${a.required} approvals${a.duplicate ? " (duplicate approval, counted once)" : ""}`;
      return { request: quorumToProto(a), duplicate: a.duplicate, message: a.message };
    }),
    rejectQuorumRequest: rpc("RejectQuorumRequest", async (r, c) => quorumToProto(await quorum.reject(c.principal!, r.id))),
  };

  const auditImpl: AuditServiceServer = {
    queryAuditLog: rpc("QueryAuditLog", async (r) => {
      if (r.limit > 1000) throw invalid("limit must be at most 1000");
      if (r.afterSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid("after_seq is out of range");
      const page = await queryAuditLog(opts.auditFile, {
        from: r.from || undefined,
        to: r.to || undefined,
        user: r.user || undefined,
        keyId: r.keyId || undefined,
        operation: r.operation || undefined,
        target: r.target || undefined,
        limit: r.limit || undefined,
        afterSeq: Number(r.afterSeq),
      });
      return { entries: page.entries.map(auditToProto), nextAfterSeq: BigInt(page.nextAfterSeq ?? 0) };
    }),
    verifyAuditLog: rpc("VerifyAuditLog", async () => {
      const v = await verifyAuditLog(opts.auditFile);
      return v.ok
        ? { ok: true, entries: BigInt(v.entries), lastHash: v.lastHash, problems: [] }
        : { ok: false, entries: BigInt(v.entries), lastHash: "", problems: [`line ${v.problem.line}: ${v.problem.kind}: ${v.problem.message}`] };
    }),
  };

  const keyImpl: KeyServiceServer = {
    generateKey: rpc("GenerateKey", (r, c) => k.generateKey(r, owner(c))),
    getKey: rpc("GetKey", async (r, c) => {
      const key = k.getKey(r, c.principal!.userId);
      return opts.membership ? { ...key, heldBy: (await k.coverage(key.id)).sort() } : key;
    }),
    listKeys: rpc("ListKeys", (r, c) => k.listKeys(r, guard.visibleTo(c.principal!), c.principal!.userId)),
    deleteKey: rpc("DeleteKey", async (r, c) => {
      await withQuorum(c, "DeleteKey", { keyId: r.keyId }, r.quorumRequestId, () => k.deleteKey(r));
      return {};
    }),
    getPublicKey: rpc("GetPublicKey", (r) => k.getPublicKey(r)),
    importPublicKey: rpc("ImportPublicKey", (r, c) => k.importPublicKey(r, owner(c))),
    getImportParameters: rpc("GetImportParameters", () => k.getImportParameters()),
    importKey: rpc("ImportKey", (r, c) => k.importKey(r, owner(c))),
    shareKey: rpc("ShareKey", async (r, c) => {
      const target = await shareTarget(r.username);
      return withQuorum(c, "ShareKey", { keyId: r.keyId, username: r.username }, r.quorumRequestId, () => k.setShare(r.keyId, target, true, c.principal!.userId));
    }),
    unshareKey: rpc("UnshareKey", async (r, c) => {
      checkUsername(r.username);
      return k.setShare(r.keyId, { user: r.username, userId: "" }, false, c.principal!.userId);
    }),
  };

  const batch = <I extends { keyId: string }, O>(c: CallContext, items: I[], fn: (i: I) => Promise<O>) =>
    k.runBatch(items, async (i) => {
      await c.checkItem(i.keyId);
      return fn(i);
    });
  const cryptoImpl: CryptoServiceServer = {
    encrypt: rpc("Encrypt", (r) => k.encrypt(r)),
    decrypt: rpc("Decrypt", (r) => k.decrypt(r)),
    sign: rpc("Sign", (r) => k.sign(r)),
    verify: rpc("Verify", (r) => k.verify(r)),
    wrapKey: rpc("WrapKey", (r) => k.wrapKey(r)),
    unwrapKey: rpc("UnwrapKey", (r, c) => k.unwrapKey(r, owner(c))),
    deriveKey: rpc("DeriveKey", (r, c) => k.deriveKey(r, owner(c))),
    generateRandom: rpc("GenerateRandom", (r) => k.generateRandom(r)),
    generateDataKey: rpc("GenerateDataKey", (r) => k.generateDataKey(r, true)),
    generateDataKeyWithoutPlaintext: rpc("GenerateDataKeyWithoutPlaintext", (r) => k.generateDataKey(r, false)),
    decryptDataKey: rpc("DecryptDataKey", (r) => k.decryptDataKey(r)),
    batchSign: rpc("BatchSign", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.sign(i))).map((result) => ({ result })) })),
    batchVerify: rpc("BatchVerify", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.verify(i))).map((result) => ({ result })) })),
    batchEncrypt: rpc("BatchEncrypt", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.encrypt(i))).map((result) => ({ result })) })),
    batchDecrypt: rpc("BatchDecrypt", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.decrypt(i))).map((result) => ({ result })) })),
  };
  const member = () => {
    if (!opts.membership) throw precondition("this node is not part of a cluster: it runs on its embedded store (configure `cluster` to run one)");
    return opts.membership;
  };
  const clusterImpl: ClusterServiceServer = {
    getClusterStatus: rpc("GetClusterStatus", async () => {
      const self = opts.membership?.nodeId ?? "";
      if (!opts.membership) {
        return { cluster: "", store: "embedded", storeRevision: BigInt(k.appliedRevision), self, nodes: [] };
      }
      const rev = opts.storeRevision?.() ?? 0;
      const members = await opts.membership.members(rev);
      return {
        cluster: opts.clusterName ?? "",
        store: "etcd",
        storeRevision: BigInt(rev),
        self,
        nodes: members.map((n) => ({
          nodeId: n.id,
          advertise: n.advertise,
          appliedRevision: BigInt(n.appliedRevision),
          lag: BigInt(n.lag ?? 0),
          hsmHealthy: n.hsmHealthy,
          storeReachable: n.storeReachable,
          lastContact: n.lastContact === undefined ? "" : new Date(n.lastContact).toISOString(),
          joinedAt: new Date(n.joinedAt).toISOString(),
          keys: n.keys,
        })),
      };
    }),
    listJoinRequests: rpc("ListJoinRequests", async () => ({ requests: (await member().listJoins()).map(joinToProto) })),
    approveJoin: rpc("ApproveJoin", async (r, c) => {
      const m = member();
      const id = r.nodeId;
      const fp = r.transportKeySha256.toLowerCase().replace(/:/g, "");
      // Everything that can be refused without the quorum and the SO step comes first.
      const pending = (await m.listJoins()).find((j) => j.nodeId === id);
      if (!pending) throw notFound(`no join request from node ${id}`);
      if (pending.status !== "pending") throw precondition(`the join request of ${id} is ${pending.status}: it cannot be approved`);
      const rec = await withQuorum(c, "ApproveJoin", { nodeId: id, transportKeySha256: fp }, r.quorumRequestId, () => m.approve(c.principal!.user, id, fp, r.soPin, opts.domainKeyId!));
      c.audit.detail = `join of ${id} approved on ${rec.approvedOn}`;
      return joinToProto(rec);
    }),
    rejectJoin: rpc("RejectJoin", async (r, c) => joinToProto(await member().reject(c.principal!.user, r.nodeId))),
    removeNode: rpc("RemoveNode", async (r) => {
      await member().remove(r.nodeId);
      return {};
    }),
  };
  return { userImpl, quorumImpl, auditImpl, keyImpl, cryptoImpl, clusterImpl };
}

/** The hsm.v1 services health reports on. */
const SERVICE_NAMES = ["", "hsm.v1.KeyService", "hsm.v1.CryptoService", "hsm.v1.UserService", "hsm.v1.QuorumService", "hsm.v1.AuditService", "hsm.v1.ClusterService"];

/**
 * How far past `maxMessageBytes` the transport still reads a message, so that one somewhat over the
 * limit is refused by the wire check with a message naming `limits.maxMessageBytes` (and audited);
 * beyond it grpc-js refuses it unread ("Received message larger than max").
 */
export const TRANSPORT_SLACK_BYTES = 1024 * 1024;

/** The .proto files of the hsm.v1 services (reflection, and the wire check's descriptors). */
function hsmProtoFiles(): string[] {
  return ["keys", "crypto", "users", "audit", "cluster"].map((f) => join(protoDir(), `hsm/v1/${f}.proto`));
}

/**
 * The request shape of every unary hsm.v1 method by path, read from proto/ with the field names as
 * written there (for the wire check's messages; the fuzzer enumerates the RPCs from it too).
 */
export function hsmRequestShapes(): Map<string, MessageShape> {
  return requestShapes(protoLoader.loadSync(hsmProtoFiles(), { includeDirs: [protoDir()], keepCase: true }));
}

/** A built server: bind it with {@link listenGrpc}. */
export interface BuiltGrpcServer {
  server: grpc.Server;
  health: HealthImplementation;
  /** Audits requests refused before decoding; flush it before closing the audit log. */
  refusals: AuditThrottle;
  /** Set by {@link listenGrpc}: the listener calls are reported to. */
  listener?: GrpcListener;
}

/**
 * Builds the server with hsm.v1 services, grpc.health.v1 and server reflection (not yet bound). The
 * per-connection bounds are grpc-js options (those it honours: max_concurrent_streams,
 * max_session_memory, max_connection_idle_ms, keepalive) and the {@link callGuardInterceptor}, which
 * refuses calls without a valid session before their bodies are read.
 */
export function buildGrpcServer(opts: GrpcServerOptions): BuiltGrpcServer {
  const c = opts.connections;
  // Calls report their connection to the listener that listenGrpc sets on the result.
  let built: BuiltGrpcServer | undefined;
  const refusals = new AuditThrottle(opts.audit, {
    append: { sync: opts.auditFsync === "always" },
    onError: (e) => opts.log?.(`audit log append failed for a count of refused requests: ${describeCause(e)}`),
  });
  const server = new grpc.Server({
    // channelz bookkeeping costs CPU on every call and nothing reads it.
    "grpc.enable_channelz": 0,
    "grpc.max_receive_message_length": opts.maxMessageBytes + TRANSPORT_SLACK_BYTES,
    "grpc.max_send_message_length": opts.maxMessageBytes + TRANSPORT_SLACK_BYTES,
    "grpc.max_concurrent_streams": c.maxConcurrentStreams,
    "grpc-node.max_session_memory": c.maxSessionMemoryMiB,
    "grpc.max_connection_idle_ms": c.idleTimeoutMs,
    "grpc.keepalive_time_ms": c.keepaliveMs,
    "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
    interceptors: [
      callGuardInterceptor({
        guard: opts.guard,
        refusals,
        maxQueuedResponseBytes: c.maxQueuedResponseBytes,
        onCall: (address, port) => built?.listener?.noteCall(address, port),
        log: opts.log,
      }),
    ],
  });
  const impl = services(opts, refusals);
  const dir = protoDir();
  const files = hsmProtoFiles();
  const shapes = hsmRequestShapes();
  const limits = { maxMessageBytes: opts.maxMessageBytes, maxBatchItems: opts.maxBatchItems };
  const add = (service: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) => server.addService(guardService(service, shapes, limits), impl);
  add(KeyServiceService, impl.keyImpl as unknown as grpc.UntypedServiceImplementation);
  add(CryptoServiceService, impl.cryptoImpl as unknown as grpc.UntypedServiceImplementation);
  add(UserServiceService, impl.userImpl as unknown as grpc.UntypedServiceImplementation);
  add(QuorumServiceService, impl.quorumImpl as unknown as grpc.UntypedServiceImplementation);
  add(AuditServiceService, impl.auditImpl as unknown as grpc.UntypedServiceImplementation);
  add(ClusterServiceService, impl.clusterImpl as unknown as grpc.UntypedServiceImplementation);

  const health = new HealthImplementation(Object.fromEntries(SERVICE_NAMES.map((n) => [n, "NOT_SERVING"])));
  health.addToServer(server);

  const pkgDef = protoLoader.loadSync(files, { includeDirs: [dir] });
  new ReflectionService(pkgDef).addToServer(server);
  built = { server, health, refusals };
  return built;
}

/**
 * Listens on host:port (0 picks a free one) through hsmd's own {@link GrpcListener} (bounded
 * connections, a deadline for the first call) and serves `built` on it. The credentials are required
 * (no plaintext by default): build them with `grpcServerCredentials(config)` from `./tls`.
 */
export async function listenGrpc(
  built: BuiltGrpcServer,
  address: { host: string; port: number },
  creds: grpc.ServerCredentials,
  bounds: { maxConnections: number; handshakeTimeoutMs: number; log?: (msg: string) => void },
): Promise<GrpcListener> {
  built.listener = await GrpcListener.listen(built.server, creds, { host: address.host, port: address.port, ...bounds });
  return built.listener;
}

export function setServing(health: HealthImplementation, serving: boolean): void {
  const s = serving ? "SERVING" : "NOT_SERVING";
  for (const name of SERVICE_NAMES) health.setStatus(name, s);
}
