import * as grpc from "@grpc/grpc-js";
import { constants as h2 } from "node:http2";
import type { Rule } from "../../access";
import type { AuditThrottle } from "../../audit";
import { MAX_DETAIL_LENGTH } from "../../audit";
import { Code, HsmError, invalid } from "../../errors";
import type { CryptoStreamRequest, CryptoStreamResponse } from "../../gen/hsm/v1/crypto";
import type { Principal } from "../../users";
import { itemErrorOf } from "../map/crypto";
import type { GrpcServerOptions, StreamTally } from "../options";
import { streamOf } from "../call-guard";
import { RefusedRequest } from "../refusal";
import { grpcStatusOf } from "../status";
import { authorizeRequest } from "./authorize";
import { auditable, describeCause } from "./context";
import { auditUnwritable, recordCall, type AuditedCall } from "./record";
import type { StreamBudget } from "./stream-budget";

/** One operation of the stream as the handler runs it: its unary method, that method's rule, its body. */
export type StreamOpTable = Record<string, { method: string; rule: Rule; run: (req: unknown) => Promise<unknown> }>;

/** What every stream of a server shares. */
export interface StreamEnv {
  opts: GrpcServerOptions;
  refusals: Pick<AuditThrottle, "record">;
  table: StreamOpTable;
  budget: StreamBudget;
  maxInFlight: number;
  tally?: StreamTally;
  /** Told when a stream has ended (it leaves the server's set of open streams). */
  ended: (s: StreamCall) => void;
}

/** Who opened the stream, under which ids. */
export interface StreamIdentity {
  principal: Principal;
  /** The daemon's id of the stream (the tally's `stream`, the audit entries' detail). */
  streamId: string;
  /** The `x-request-id` the client gave, else the stream id: every audit entry of the stream carries it. */
  requestId: string;
  peer: string;
  trailer: grpc.Metadata;
  t0: bigint;
}

/**
 * How long an ended stream's status may wait behind answers its client does not read (HTTP/2 sends
 * trailers after the data before them) before the stream is reset instead (RST_STREAM CANCEL): so a
 * revoked or stopped stream of a client that never reads does not keep its answers in memory.
 */
const STATUS_GRACE_MS = 1000;
const OPS = "sign, verify, encrypt, decrypt, generate_random, generate_data_key, generate_data_key_without_plaintext, decrypt_data_key";
const CONTROL = /[\u0000-\u001f\u007f]/g;
type Call = grpc.ServerDuplexStream<CryptoStreamRequest, CryptoStreamResponse>;

/**
 * One open crypto stream. Every message is authorized on its own by the rule of its unary method
 * ({@link authorizeRequest}, the same function a unary call passes), runs the same body as that
 * method, and is answered as soon as it completes (answers come out of order), under its id. A bad
 * message (undecodable, no operation, an id already in flight, a bad field) is answered alone and
 * the stream goes on.
 *
 * An operation counts from when it is read until its answer is handed to HTTP/2 (`write` returned
 * true, or its `drain` came); at `grpc.streamMaxInFlight` (or when all streams together hold
 * `grpc.streamMaxInFlightTotal`) the stream stops reading until answers go out, so a client that
 * never reads holds the daemon to that many answers and HTTP/2 flow control pushes back on it.
 *
 * The stream ends OK once the client half-closed and every operation is answered; with its
 * session's refusal (UNAUTHENTICATED) when the {@link SessionWatch} says so, dropping the answers
 * still running; and without an answer when the client cancels. Its end is audited with its outcome.
 */
export class StreamCall {
  /** Read and not yet handed to HTTP/2. */
  private inFlight = 0;
  /** Of those, answers written while the writable side was full (handed over on `drain`). */
  private unflushed = 0;
  private readonly ids = new Set<number>();
  private paused = false;
  private halfClosed = false;
  private ended = false;
  private done: Promise<void> | undefined;
  private operations = 0;
  private failures = 0;
  private unwatch: () => void = () => undefined;
  private readonly wake = () => this.afterAnswer();
  private readonly send = (res: CryptoStreamResponse) => this.answer(res);
  private readonly crash = (e: unknown) => {
    this.env.opts.log?.(`CryptoStream: internal error: ${describeCause(e)}`);
    void this.finish(new HsmError(Code.Internal, "internal error (logged on the daemon)"));
  };

  constructor(
    private readonly env: StreamEnv,
    private readonly call: Call,
    private readonly who: StreamIdentity,
  ) {}

  /** Starts reading (the open is audited and the session watched: `unwatch` stops watching it). */
  start(unwatch: () => void): void {
    this.unwatch = unwatch;
    const { call } = this;
    call.on("cancelled", () => void this.finish(undefined, "CANCELLED"));
    if (call.cancelled) return void this.finish(undefined, "CANCELLED");
    call.on("drain", () => {
      this.inFlight -= this.unflushed;
      this.env.budget.release(this.unflushed);
      this.unflushed = 0;
      this.afterAnswer();
    });
    call.on("end", () => {
      this.halfClosed = true;
      this.afterAnswer();
    });
    // Headers now: the client learns the stream is open (authenticated) before its first answer.
    call.sendMetadata(new grpc.Metadata());
    call.on("data", (m: CryptoStreamRequest | RefusedRequest) => this.onMessage(m));
  }

  private onMessage(m: CryptoStreamRequest | RefusedRequest): void {
    if (this.ended) return;
    const closed = this.env.opts.gate?.();
    if (closed) return void this.finish(closed);
    this.inFlight++;
    this.operations++;
    if (this.env.budget.take() || this.inFlight >= this.env.maxInFlight) this.pause();
    if (m instanceof RefusedRequest) return void this.refused(m).then(this.send, this.crash);
    const op = m.op;
    if (op === undefined) return void this.fail(m.id, "CryptoStream", undefined, invalid(`message ${m.id} has no operation: set one of ${OPS}`), process.hrtime.bigint()).then(this.send, this.crash);
    const entry = this.env.table[op.$case];
    if (!entry) return void this.fail(m.id, "CryptoStream", undefined, invalid(`message ${m.id}: unknown operation ${op.$case}`), process.hrtime.bigint()).then(this.send, this.crash);
    if (this.ids.has(m.id)) {
      const dup = invalid(`id ${m.id} is already in flight on this stream: give each operation in flight its own id`);
      return void this.fail(m.id, entry.method, undefined, dup, process.hrtime.bigint()).then(this.send, this.crash);
    }
    this.ids.add(m.id);
    this.run(m.id, op.$case, op.value, entry).then(this.send, this.crash);
  }

  /** The operation, authorized exactly as its unary call is, audited (or counted) and answered. */
  private async run(id: number, $case: string, value: unknown, entry: StreamOpTable[string]): Promise<CryptoStreamResponse> {
    const t0 = process.hrtime.bigint();
    const keyRefs = entry.rule.keys?.(value as Record<string, unknown>) ?? [];
    let keyId = keyRefs[0]?.id;
    try {
      await authorizeRequest(this.env.opts.guard, entry.method, this.who.principal, keyRefs, value as Record<string, unknown>);
      keyId = keyRefs[0]?.id;
      const result = await entry.run(value);
      const { tally, opts } = this.env;
      if (tally) {
        // An audit log that cannot be written answers UNAVAILABLE, as the unary path does: no use goes unaccounted.
        if (tally.failed) return await this.fail(id, entry.method, keyId, auditUnwritable(), t0, true);
        const p = this.who.principal;
        tally.count({ stream: this.who.streamId, user: p.user, role: p.role, peer: this.who.peer, keyId: keyId ?? "", method: entry.method });
      } else {
        const failed = await recordCall(opts, this.audited(entry.method, keyId, id), "OK", false);
        if (failed) return await this.fail(id, entry.method, keyId, failed, t0, true);
      }
      opts.observe?.(entry.method, "OK", Number(process.hrtime.bigint() - t0) / 1e9);
      return { id, result: { $case, value: result } as CryptoStreamResponse["result"] };
    } catch (e) {
      return await this.fail(id, entry.method, keyId, e, t0);
    } finally {
      this.ids.delete(id);
    }
  }

  /** An operation's error as its answer: audited on its own, INTERNAL logged in full and answered without details. */
  private async fail(id: number, method: string, keyId: string | undefined, e: unknown, t0: bigint, audited = false): Promise<CryptoStreamResponse> {
    const { opts } = this.env;
    let err = HsmError.from(e);
    this.failures++;
    if (err.code === Code.Internal) opts.log?.(`${method} (crypto stream ${this.who.streamId}, message ${id}): internal error: ${err.message}; ${describeCause(e)}`);
    if (!audited) err = (await recordCall(opts, this.audited(method, keyId, id), err.code, false)) ?? err;
    opts.observe?.(method, err.code, Number(process.hrtime.bigint() - t0) / 1e9);
    return { id, result: { $case: "error", value: itemErrorOf(err) } };
  }

  /** A message refused before decoding: audited rate-limited (as a unary refusal is), answered under the id it carries. */
  private async refused(m: RefusedRequest): Promise<CryptoStreamResponse> {
    const t0 = process.hrtime.bigint();
    this.failures++;
    let err = m.error;
    try {
      await this.env.refusals.record({
        operation: "CryptoStream",
        status: err.code,
        requestId: this.who.requestId,
        client: auditable(this.who.peer, 256),
        detail: `stream message ${m.id} refused before decoding: ${err.message}`.replace(CONTROL, " ").slice(0, MAX_DETAIL_LENGTH),
      });
    } catch (e) {
      this.env.opts.log?.(`audit log append failed for CryptoStream (${err.code}): ${describeCause(e)}`);
      err = auditUnwritable();
    }
    this.env.opts.observe?.("CryptoStream", err.code, Number(process.hrtime.bigint() - t0) / 1e9);
    return { id: m.id, result: { $case: "error", value: itemErrorOf(err) } };
  }

  private audited(method: string, keyId: string | undefined, id: number): AuditedCall {
    return { method, principal: this.who.principal, peer: this.who.peer, requestId: this.who.requestId, audit: { keyId: auditable(keyId), detail: `stream message ${id}` } };
  }

  /** Hands an answer to HTTP/2, unless the stream has ended (then it is dropped). */
  private answer(res: CryptoStreamResponse): void {
    if (this.ended) return;
    if (this.call.write(res)) {
      this.inFlight--;
      this.env.budget.release(1);
    } else this.unflushed++;
    this.afterAnswer();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.call.pause();
  }

  /** After an answer went out: read again if there is room, end if the client half-closed and nothing is left. */
  private afterAnswer(): void {
    if (this.ended) return;
    if (this.halfClosed && this.inFlight === this.unflushed) return void this.finish();
    if (!this.paused || this.inFlight >= this.env.maxInFlight) return;
    if (this.env.budget.full) return this.env.budget.wait(this.wake);
    this.paused = false;
    this.call.resume();
  }

  /**
   * Ends the stream once: OK without `why`, else with its status (`status` names an end without
   * an answer: the client cancelled). Answers still running are dropped; the end is audited.
   */
  finish(why?: HsmError, status?: string): Promise<void> {
    if (this.done) return this.done;
    this.ended = true;
    this.unwatch();
    this.env.budget.cancel(this.wake);
    this.env.budget.release(this.inFlight);
    this.inFlight = 0;
    this.unflushed = 0;
    this.env.ended(this);
    this.done = this.end(why, status);
    return this.done;
  }

  private async end(why: HsmError | undefined, status: string | undefined): Promise<void> {
    const { opts, tally } = this.env;
    const { streamId, trailer } = this.who;
    if (tally) await tally.endStream(streamId).catch((e: unknown) => opts.log?.(`audit tally of stream ${streamId} could not be flushed: ${describeCause(e)}`));
    const outcome = status ?? why?.code ?? "OK";
    const c = this.audited("CryptoStream", undefined, 0);
    c.audit.detail = `stream ${streamId} ended: ${this.operations} operations, ${this.failures} failed${why ? `: ${why.message}` : ""}`.replace(CONTROL, " ").slice(0, MAX_DETAIL_LENGTH);
    const failed = await recordCall(opts, c, outcome, false);
    opts.observe?.("CryptoStream", outcome, Number(process.hrtime.bigint() - this.who.t0) / 1e9);
    if (status) return; // cancelled: nobody to answer
    const answer = failed ?? why;
    if (answer) this.call.emit("error", { code: grpcStatusOf(answer.code), details: answer.message, metadata: trailer } as grpc.ServiceError);
    else this.call.end(trailer);
    this.resetIfStuck();
  }

  /** Resets the HTTP/2 stream if its status has not gone out within {@link STATUS_GRACE_MS}. */
  private resetIfStuck(): void {
    const base = (this.call as unknown as { call?: grpc.ServerInterceptingCallInterface }).call;
    const stream = base && streamOf(base);
    if (!stream || stream.closed) return;
    const timer = setTimeout(() => {
      if (!stream.closed && !stream.destroyed) stream.close(h2.NGHTTP2_CANCEL);
    }, STATUS_GRACE_MS);
    timer.unref();
    stream.once("close", () => clearTimeout(timer));
  }
}
