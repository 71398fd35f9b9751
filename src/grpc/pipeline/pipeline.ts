import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import type { AuditThrottle } from "../../audit";
import { Code, HsmError } from "../../errors";
import type { CryptoStreamRequest, CryptoStreamResponse } from "../../gen/hsm/v1/crypto";
import { isAliasName, type UserRef } from "../../keys";
import { QuorumPendingError, passQuorum } from "../../users";
import type { GrpcServerOptions } from "../options";
import { RefusedRequest } from "../refusal";
import { grpcStatusOf } from "../status";
import { QUORUM_REQUEST_HEADER, REQUEST_ID_HEADER, auditable, describeCause, headerValue, type CallContext, type Handler } from "./context";
import { authorizeRequest, resolveBatchItems } from "./authorize";
import { recordCall } from "./record";
import { CryptoStreams, type StreamOps } from "./stream";
import { answerRefused } from "./refused";

/** What the service adapters build their methods with. */
export interface Pipeline {
  /** Wraps a handler in the call pipeline (see {@link createPipeline}). */
  rpc<Req, Res>(method: string, fn: Handler<Req, Res>): grpc.handleUnaryCall<Req, Res>;
  /** Runs `fn` past the quorum gate of `operation` (see {@link createPipeline}). */
  withQuorum<T>(c: CallContext, operation: string, params: Record<string, string>, quorumRequestId: string, fn: () => Promise<T>): Promise<T>;
  /** The caller as a key owner. */
  owner(c: CallContext): UserRef;
  /** The crypto stream's handler over `ops` (see {@link CryptoStreams}). */
  stream(ops: StreamOps): grpc.handleBidiStreamingCall<CryptoStreamRequest, CryptoStreamResponse>;
  /** The open crypto streams (the daemon ends them when it stops). */
  streams: CryptoStreams;
}

/**
 * The call pipeline every hsm.v1 RPC passes through: gate → authenticate (the session) → authorize
 * (the {@link AccessGuard}'s role rule, the request's key refs, then each batch item) → handler →
 * audit (every outcome, allowed or denied; on disk before the answer for key and user changes) →
 * status (every error mapped to its gRPC status with a message a person can act on: never a CKR
 * number, never internal details; INTERNAL is logged in full). A request refused before decoding
 * takes the refusal path ({@link answerRefused}) instead. An audit log that cannot be written
 * answers UNAVAILABLE.
 */
export function createPipeline(opts: GrpcServerOptions, refusals: AuditThrottle): Pipeline {
  const { quorum, guard } = opts;

  function rpc<Req, Res>(method: string, fn: Handler<Req, Res>): grpc.handleUnaryCall<Req, Res> {
    const rule = guard.rule(method);
    return (call, callback) => {
      const t0 = process.hrtime.bigint();
      if ((call.request as unknown) instanceof RefusedRequest)
        return answerRefused(opts, refusals, method, call, callback as grpc.sendUnaryData<unknown>, (call.request as unknown as RefusedRequest).error, t0);
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
        const named = keyRefs.filter((r) => isAliasName(r.id)).map((r) => r.id);
        await authorizeRequest(guard, method, c.principal, keyRefs, req);
        if (named.length > 0) c.audit.detail ??= auditable(`key named by ${named.join(", ")}`.slice(0, 200), 200);
        // An alias named the key: the audit names the key it resolved to.
        if (keyRefs.length > 0) c.audit.keyId = auditable(keyRefs.find((r) => r.need === "own")?.id ?? keyRefs[0]?.id);
        if (rule.batch) {
          await resolveBatchItems(guard, c.principal!, req["items"]);
          const ids = new Set((Array.isArray(req["items"]) ? (req["items"] as Array<{ keyId?: unknown }>) : []).map((i) => i.keyId));
          if (ids.size === 1) c.audit.keyId = auditable([...ids][0]);
          c.checkItem = async (id) => void (await guard.key(c.principal!, id, "use"));
        }
        return fn(call.request, c);
      };
      run().then(
        async (res) => {
          if (rule.createsKey) c.audit.keyId = auditable((res as { id?: unknown }).id) ?? c.audit.keyId;
          const failed = await recordCall(opts, c, "OK", !!rule.change);
          if (failed) return reply(failed);
          observe("OK");
          callback(null, res, c.trailer);
        },
        async (e: unknown) => {
          const err = HsmError.from(e);
          if (err.code === Code.Internal) opts.log?.(`${method}: internal error: ${err.message}; ${describeCause(e)}`);
          const failed = await recordCall(opts, c, err.code, !!rule.change);
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

  const owner = (c: CallContext): UserRef => ({ user: c.principal!.user, userId: c.principal!.userId });

  /**
   * Runs `fn` past the domain's quorum gate ({@link passQuorum}): the gate decides; this only records
   * its audit detail and, for a pending request, names it in the {@link QUORUM_REQUEST_HEADER} trailer.
   */
  async function withQuorum<T>(c: CallContext, operation: string, params: Record<string, string>, quorumRequestId: string, fn: () => Promise<T>): Promise<T> {
    try {
      const pass = await passQuorum(quorum, c.principal!, operation, params, quorumRequestId);
      if (pass.detail) c.audit.detail = pass.detail;
    } catch (e) {
      if (e instanceof QuorumPendingError) {
        c.trailer.set(QUORUM_REQUEST_HEADER, e.requestId);
        c.audit.detail = e.detail;
      }
      throw e;
    }
    return fn();
  }

  const streams = new CryptoStreams(opts, refusals);
  return { rpc, withQuorum, owner, stream: (ops) => streams.handler(ops), streams };
}
