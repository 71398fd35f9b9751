import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import type { AuditThrottle } from "../../audit";
import { GRPC_FIELDS } from "../../config";
import { Code, HsmError } from "../../errors";
import type { CryptoStreamRequest, CryptoStreamResponse } from "../../gen/hsm/v1/crypto";
import type { Principal } from "../../users";
import type { GrpcServerOptions } from "../options";
import { grpcStatusOf } from "../status";
import { REQUEST_ID_HEADER, auditable, describeCause, headerValue } from "./context";
import { recordCall, type AuditedCall } from "./record";
import { SessionWatch } from "./stream-auth";
import { StreamBudget } from "./stream-budget";
import { StreamCall, type StreamEnv, type StreamOpTable } from "./stream-call";

type Op = NonNullable<CryptoStreamRequest["op"]>;
type Result = NonNullable<CryptoStreamResponse["result"]>;
/** The operations the crypto stream carries (`sign`, `generateDataKeyWithoutPlaintext`, …). */
export type StreamOpCase = Op["$case"];

/** One operation of the stream: the unary method whose rule authorizes it and the same body as that method. */
export interface StreamOp<C extends StreamOpCase> {
  method: string;
  run: (req: Extract<Op, { $case: C }>["value"]) => Promise<Extract<Result, { $case: C }>["value"]>;
}

/** Every operation of the stream, by its case: built by the CryptoService adapter from its unary bodies. */
export type StreamOps = { [C in StreamOpCase]: StreamOp<C> };

/** The method name the stream is opened (and audited) under. */
export const STREAM_METHOD = "CryptoStream";

/**
 * The daemon's crypto streams (CryptoService.CryptoStream): opens each stream (the gate, one
 * authentication from the `authorization` metadata, the CryptoStream rule), keeps its session
 * watched ({@link SessionWatch}), shares the in-flight budget of all streams ({@link StreamBudget})
 * and ends them all when the daemon stops. Each open stream is a {@link StreamCall}.
 */
export class CryptoStreams {
  private readonly live = new Set<StreamCall>();
  private readonly watch: SessionWatch;
  private readonly budget: StreamBudget;
  private readonly maxInFlight: number;
  private closing: HsmError | undefined;

  constructor(
    private readonly opts: GrpcServerOptions,
    private readonly refusals: Pick<AuditThrottle, "record">,
  ) {
    const s = opts.streams;
    this.maxInFlight = s?.maxInFlight ?? GRPC_FIELDS.streamMaxInFlight.default;
    this.budget = new StreamBudget(s?.maxInFlightTotal ?? GRPC_FIELDS.streamMaxInFlightTotal.default);
    this.watch = new SessionWatch(opts.guard, s?.authRecheckMs ?? GRPC_FIELDS.streamAuthRecheckMs.default);
  }

  /** Streams open now. */
  get open(): number {
    return this.live.size;
  }

  /** Operations in flight on all streams. */
  get inFlight(): number {
    return this.budget.inFlight;
  }

  /** Sessions whose streams are being re-checked. */
  get sessionsWatched(): number {
    return this.watch.size;
  }

  /** The bidi handler of CryptoStream over `ops` (each op's rule looked up once, here). */
  handler(ops: StreamOps): grpc.handleBidiStreamingCall<CryptoStreamRequest, CryptoStreamResponse> {
    const table = {} as Record<string, StreamOpTable[string]>;
    for (const [c, op] of Object.entries(ops) as Array<[StreamOpCase, StreamOp<StreamOpCase>]>) {
      table[c] = { method: op.method, rule: this.opts.guard.rule(op.method), run: op.run as StreamOpTable[string]["run"] };
    }
    const env: StreamEnv = {
      opts: this.opts,
      refusals: this.refusals,
      table,
      budget: this.budget,
      maxInFlight: this.maxInFlight,
      tally: this.opts.tally,
      ended: (s) => this.live.delete(s),
    };
    return (call) => void this.openStream(env, call);
  }

  /**
   * Ends every open stream with `why` (the daemon is stopping: UNAVAILABLE, so clients move to
   * another endpoint) and refuses new ones; resolves once their end entries are in the audit log.
   */
  async close(why: HsmError): Promise<void> {
    this.closing = why;
    await Promise.all([...this.live].map((s) => s.finish(why)));
    this.watch.close();
  }

  private async openStream(env: StreamEnv, call: grpc.ServerDuplexStream<CryptoStreamRequest, CryptoStreamResponse>): Promise<void> {
    const { opts } = this;
    const t0 = process.hrtime.bigint();
    const streamId = randomUUID();
    const requestId = auditable(call.metadata.get(REQUEST_ID_HEADER)[0]) ?? streamId;
    const peer = call.getPeer();
    const trailer = new grpc.Metadata();
    trailer.set(REQUEST_ID_HEADER, headerValue(requestId));
    const audited: AuditedCall = { method: STREAM_METHOD, peer, requestId, audit: { detail: `stream ${streamId} opened` } };
    let principal: Principal;
    let authorization: string;
    try {
      const closed = this.closing ?? opts.gate?.();
      if (closed) throw closed;
      const auth = call.metadata.get("authorization")[0];
      authorization = typeof auth === "string" ? auth : "";
      ({ principal } = await opts.guard.authenticate(authorization || undefined));
      audited.principal = principal;
      opts.guard.authorize(STREAM_METHOD, principal);
    } catch (e) {
      const err = HsmError.from(e);
      if (err.code === Code.Internal) opts.log?.(`${STREAM_METHOD}: internal error while opening: ${err.message}; ${describeCause(e)}`);
      audited.audit.detail = `stream ${streamId} refused at open`;
      const failed = await recordCall(opts, audited, err.code, false);
      const answer = failed ?? (err.code === Code.Internal ? new HsmError(Code.Internal, "internal error (logged on the daemon)") : err);
      opts.observe?.(STREAM_METHOD, answer.code, Number(process.hrtime.bigint() - t0) / 1e9);
      if (!call.cancelled) call.emit("error", { code: grpcStatusOf(answer.code), details: answer.message, metadata: trailer } as grpc.ServiceError);
      return;
    }
    if (call.cancelled) {
      audited.audit.detail = `stream ${streamId} cancelled by the client before it opened`;
      await recordCall(opts, audited, "CANCELLED", false);
      return;
    }
    const failed = await recordCall(opts, audited, "OK", false);
    if (failed || this.closing) {
      const answer = failed ?? this.closing!;
      call.emit("error", { code: grpcStatusOf(answer.code), details: answer.message, metadata: trailer } as grpc.ServiceError);
      return;
    }
    const s = new StreamCall(env, call, { principal, streamId, requestId, peer, trailer, t0 });
    this.live.add(s);
    s.start(this.watch.watch(authorization, principal.expiresAt, (why) => void s.finish(why)));
  }
}
