import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { constants as h2, type Http2Session, type ServerHttp2Stream } from "node:http2";
import type { AccessGuard } from "../access";
import type { AuditThrottle } from "../audit";
import { Code, HsmError } from "../errors";
import { grpcStatusOf } from "./status";

/** Request id header (the same one the handlers echo and audit). */
const REQUEST_ID_HEADER = "x-request-id";
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** Options of {@link callGuardInterceptor}. */
export interface CallGuardOptions {
  guard: AccessGuard;
  /** Where refusals are audited: rate-limited per client host, method and status, so a flood cannot fill the log. */
  refusals: Pick<AuditThrottle, "record">;
  /** Unread response bytes a connection may hold before its calls answer RESOURCE_EXHAUSTED. */
  maxQueuedResponseBytes: number;
  /** Told of every call's connection (the listener lifts its first-call deadline). */
  onCall?: (remoteAddress: string | undefined, remotePort: number | undefined) => void;
  log?: (msg: string) => void;
}

/** The HTTP/2 stream under a call: grpc-js' base call holds it (found through the interceptor chain). */
export function streamOf(call: grpc.ServerInterceptingCallInterface): ServerHttp2Stream | undefined {
  let c: unknown = call;
  for (let i = 0; i < 16 && c && typeof c === "object"; i++) {
    const o = c as { stream?: unknown; nextCall?: unknown };
    if (o.stream && typeof (o.stream as ServerHttp2Stream).respond === "function") return o.stream as ServerHttp2Stream;
    c = o.nextCall;
  }
  return undefined;
}

/**
 * The server interceptor that runs before a request body is read (grpc-js reads it only once the
 * handler asks, after the metadata listeners): what it refuses never costs more than the HTTP/2
 * flow-control window of the stream.
 *
 * - Every hsm.v1 call but the public ones (Login) must carry a session that {@link AccessGuard.authenticate}
 *   (the one place that decides) accepts; an absent, malformed, unknown, expired or revoked one answers
 *   UNAUTHENTICATED at metadata time, audited rate-limited like every refusal before the handler (AuditThrottle). The handler authenticates again
 *   (a revocation in between takes effect) and does everything else. Health and reflection pass.
 * - A connection whose peer leaves more than `maxQueuedResponseBytes` of responses unread (its HTTP/2
 *   window closed) gets RESOURCE_EXHAUSTED for new calls, and a response that would queue more
 *   resets its stream (RST_STREAM ENHANCE_YOUR_CALM, RESOURCE_EXHAUSTED at the client) instead of
 *   being held: a client that never reads cannot make the daemon hold more than that, per connection.
 */
export function callGuardInterceptor(o: CallGuardOptions): grpc.ServerInterceptor {
  /** The open streams of each HTTP/2 session, to add up what it has not read. */
  const streams = new WeakMap<Http2Session, Set<ServerHttp2Stream>>();
  const warned = new WeakSet<Http2Session>();
  let noStream = false;

  const queuedBytes = (session: Http2Session | undefined): number => {
    let n = 0;
    for (const s of (session && streams.get(session)) ?? []) n += s.writableLength;
    return n;
  };

  return (method, call) => {
    const path = method.path;
    const name = path.startsWith("/hsm.v1.") ? path.slice(path.lastIndexOf("/") + 1) : undefined;
    const stream = streamOf(call);
    if (!stream && !noStream) {
      noStream = true;
      o.log?.("gRPC: the HTTP/2 stream of a call cannot be found (grpc-js changed?): unread responses are not bounded per connection");
    }
    const session = stream?.session;
    if (stream && session) {
      let set = streams.get(session);
      if (!set) streams.set(session, (set = new Set()));
      set.add(stream);
      stream.once("close", () => set.delete(stream));
    }
    const overQueued = (): number | undefined => {
      const q = queuedBytes(session);
      return q >= o.maxQueuedResponseBytes ? q : undefined;
    };
    const warn = (q: number) => {
      if (!session || warned.has(session)) return;
      warned.add(session);
      const info = call.getConnectionInfo();
      o.log?.(
        `gRPC: connection from ${info.remoteAddress}:${info.remotePort} leaves ${q} response bytes unread (connections.maxQueuedResponseBytes ${o.maxQueuedResponseBytes}): its new calls answer RESOURCE_EXHAUSTED until it reads them`,
      );
    };

    const refuse = (err: HsmError, metadata: grpc.Metadata) => {
      const given = metadata.get(REQUEST_ID_HEADER)[0];
      const requestId = typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
      const trailer = new grpc.Metadata();
      trailer.set(REQUEST_ID_HEADER, requestId);
      const peer = call.getPeer();
      o.refusals
        .record({ operation: name ?? path.slice(0, 128), status: err.code, requestId, client: peer.length <= 256 ? peer : undefined, detail: "refused before the request was read" })
        .then(
          () => err,
          () => new HsmError(Code.Unavailable, "the audit log cannot be written: this node refuses to answer until an operator fixes it"),
        )
        .then((e) => interceptingCall.sendStatus({ code: grpcStatusOf(e.code), details: e.message, metadata: trailer }));
    };

    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const info = call.getConnectionInfo();
        o.onCall?.(info.remoteAddress, info.remotePort);
        const q = overQueued();
        if (q !== undefined) {
          warn(q);
          return refuse(
            new HsmError(Code.ResourceExhausted, `this connection has ${q} bytes of responses it has not read (limit ${o.maxQueuedResponseBytes}): read them, or use another connection`),
            metadata,
          );
        }
        if (name === undefined || o.guard.rule(name).who === "public") return next(metadata);
        const auth = metadata.get("authorization")[0];
        o.guard.authenticate(typeof auth === "string" ? auth : undefined).then(
          () => next(metadata),
          (e: unknown) => {
            // Only a refused session is answered here; anything else (a store that cannot be read)
            // is the handler's to report, with its own mapping.
            if (e instanceof HsmError && e.code === Code.Unauthenticated) refuse(e, metadata);
            else next(metadata);
          },
        );
      })
      .build();

    const responder = new grpc.ResponderBuilder()
      .withStart((next) => next(listener))
      .withSendMessage((message, next) => {
        const q = overQueued();
        if (q !== undefined && stream) {
          warn(q);
          // Dropped, not queued: the reset frees it, and the client learns RESOURCE_EXHAUSTED.
          stream.close(h2.NGHTTP2_ENHANCE_YOUR_CALM);
        }
        next(message);
      })
      .build();
    const interceptingCall = new grpc.ServerInterceptingCall(call, responder);
    return interceptingCall;
  };
}
