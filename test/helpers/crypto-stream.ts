/**
 * A crypto stream (CryptoService.CryptoStream) through the generated client, for tests: send
 * operations under ids, wait for the answer of an id (answers come out of order), and the status
 * the stream ended with.
 */
import * as grpc from "@grpc/grpc-js";
import { AccessGuard } from "../../src/access";
import type { AuditLog } from "../../src/audit";
import { CryptoServiceClient, CryptoStreamRequest, type CryptoStreamResponse } from "../../src/gen/hsm/v1/crypto";
import { type BuiltGrpcServer, type GrpcListener, type StreamTally, buildGrpcServer, listenGrpc } from "../../src/grpc";
import type { TestDaemon } from "./daemon";

/** How a stream ended: the status, its name and details. */
export interface StreamEnd {
  code: grpc.status;
  codeName: string;
  details: string;
}

/** A generated CryptoService client on `address` (plaintext: the test daemons run in dev mode); `options` are grpc-js channel options. */
export function cryptoClient(address: string, options: grpc.ChannelOptions = {}): CryptoServiceClient {
  return new CryptoServiceClient(address, grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": -1, "grpc.max_send_message_length": -1, ...options });
}

/**
 * A second gRPC server over a test daemon's services, with its own audit wiring: `tally` (absent:
 * one audit entry per stream operation, where the daemon itself counts them) and `audit` (default:
 * the daemon's log). Close it with `built.server.forceShutdown()` and `listener.destroyAll()`.
 */
export async function serveOver(td: TestDaemon, opts: { tally?: StreamTally; audit?: { log: AuditLog; file: string } } = {}): Promise<{ built: BuiltGrpcServer; listener: GrpcListener }> {
  const d = td.daemon;
  const built = buildGrpcServer({
    keys: d.keys,
    users: d.users,
    quorum: d.quorum,
    guard: new AccessGuard(d.users, d.keys),
    audit: opts.audit?.log ?? d.audit,
    auditFile: opts.audit?.file ?? d.config.audit.file,
    auditFsync: d.config.audit.fsync,
    applier: d.applier,
    maxMessageBytes: d.config.limits.maxMessageBytes,
    maxBatchItems: d.config.limits.maxBatchItems,
    connections: d.config.connections,
    tally: opts.tally,
  });
  const listener = await listenGrpc(built, { host: "127.0.0.1", port: 0 }, grpc.ServerCredentials.createInsecure(), { maxConnections: 16, handshakeTimeoutMs: 10_000 });
  return { built, listener };
}

/** The stream's operation as the generated types spell it. */
export type StreamOp = NonNullable<CryptoStreamRequest["op"]>;

/** One open stream: `send`/`request` operations, `answer(id)` waits for an id's answer, `ended` for the status. */
export class TestStream {
  readonly call: grpc.ClientDuplexStream<CryptoStreamRequest, CryptoStreamResponse>;
  /** Every answer, in the order they came. */
  readonly answers: CryptoStreamResponse[] = [];
  /** The status the stream ended with (never rejects). */
  readonly ended: Promise<StreamEnd>;
  /** Resolves when the server sent its headers (the stream is open and authenticated). */
  readonly opened: Promise<void>;
  private readonly waiting = new Map<number, Array<(r: CryptoStreamResponse) => void>>();
  private readonly unclaimed = new Map<number, CryptoStreamResponse[]>();

  constructor(client: CryptoServiceClient, token?: string, metadata: Record<string, string> = {}) {
    const md = new grpc.Metadata();
    if (token) md.set("authorization", `Bearer ${token}`);
    for (const [k, v] of Object.entries(metadata)) md.set(k, v);
    this.call = client.cryptoStream(md);
    this.opened = new Promise((resolve) => this.call.once("metadata", () => resolve()));
    this.ended = new Promise((resolve) => {
      this.call.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, codeName: grpc.status[s.code] ?? String(s.code), details: s.details }));
    });
    this.call.on("error", () => undefined); // the status says it
    this.call.on("data", (r: CryptoStreamResponse) => {
      this.answers.push(r);
      const w = this.waiting.get(r.id)?.shift();
      if (w) return w(r);
      const list = this.unclaimed.get(r.id) ?? [];
      list.push(r);
      this.unclaimed.set(r.id, list);
    });
  }

  /** Sends one operation under `id`. */
  send(id: number, op: StreamOp | undefined): void {
    // fromPartial: the generated encoder needs every field (a field added to the proto later would
    // be undefined in the tests' literals and make the write throw).
    this.call.write(CryptoStreamRequest.fromPartial({ id, op }));
  }

  /** The next answer carrying `id`. */
  answer(id: number): Promise<CryptoStreamResponse> {
    const got = this.unclaimed.get(id)?.shift();
    if (got) return Promise.resolve(got);
    return new Promise((resolve) => {
      const list = this.waiting.get(id) ?? [];
      list.push(resolve);
      this.waiting.set(id, list);
    });
  }

  /** Sends `op` under `id` and waits for its answer. */
  request(id: number, op: StreamOp): Promise<CryptoStreamResponse> {
    this.send(id, op);
    return this.answer(id);
  }

  /** Half-closes the stream (no more operations). */
  close(): void {
    this.call.end();
  }

  /** Cancels the stream from the client. */
  cancel(): void {
    this.call.cancel();
  }
}

/** An answer's error as `{ code name, message }`, or "OK" with the result's case. */
export function outcome(r: CryptoStreamResponse): { code: string; message?: string; case?: string } {
  if (r.result?.$case === "error") return { code: grpc.status[r.result.value.code] ?? String(r.result.value.code), message: r.result.value.message };
  return { code: "OK", case: r.result?.$case };
}
