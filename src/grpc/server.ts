import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { AuditThrottle } from "../audit";
import { AuditServiceService } from "../gen/hsm/v1/audit";
import { ClusterServiceService } from "../gen/hsm/v1/cluster";
import { CryptoServiceService } from "../gen/hsm/v1/crypto";
import { KeyServiceService } from "../gen/hsm/v1/keys";
import { QuorumServiceService, UserServiceService } from "../gen/hsm/v1/users";
import { guardService } from "./refusal";
import { requestShapes, type MessageShape } from "./wire-check";
import { callGuardInterceptor } from "./call-guard";
import { GrpcListener } from "./listener";
import type { GrpcServerOptions } from "./options";
import { describeCause } from "./pipeline/context";
import { createPipeline } from "./pipeline/pipeline";
import type { CryptoStreams } from "./pipeline/stream";
import { auditService } from "./services/audit";
import { clusterService } from "./services/cluster";
import { cryptoService } from "./services/crypto";
import { keyService } from "./services/keys";
import { quorumService } from "./services/quorum";
import { userService } from "./services/users";

export type { GrpcConnectionOptions, GrpcServerOptions, GrpcStreamOptions, RpcObserver, StreamTally, StreamUse } from "./options";
export type { CryptoStreams } from "./pipeline/stream";
export { QUORUM_REQUEST_HEADER, REQUEST_ID_HEADER } from "./pipeline/context";

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

/** The hsm.v1 service implementations, each a thin adapter over the pipeline and the domain. */
function services(opts: GrpcServerOptions, refusals: AuditThrottle) {
  const p = createPipeline(opts, refusals);
  return {
    streams: p.streams,
    userImpl: userService(opts, p),
    quorumImpl: quorumService(opts, p),
    auditImpl: auditService(opts, p),
    keyImpl: keyService(opts, p),
    cryptoImpl: cryptoService(opts, p),
    clusterImpl: clusterService(opts, p),
  };
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
  return requestShapes(loadKeepCase());
}

/** The shape of one message of every client-streaming hsm.v1 method by path (CryptoStream: CryptoStreamRequest). */
export function hsmStreamRequestShapes(): Map<string, MessageShape> {
  return requestShapes(loadKeepCase(), true);
}

const loadKeepCase = () => protoLoader.loadSync(hsmProtoFiles(), { includeDirs: [protoDir()], keepCase: true });

/** A built server: bind it with {@link listenGrpc}. */
export interface BuiltGrpcServer {
  server: grpc.Server;
  health: HealthImplementation;
  /** Audits requests refused before decoding; flush it before closing the audit log. */
  refusals: AuditThrottle;
  /** Set by {@link listenGrpc}: the listener calls are reported to. */
  listener?: GrpcListener;
  /** The open crypto streams: end them (`close`) before shutting the server down, or it waits for them. */
  streams: CryptoStreams;
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
    // An answer may be twice its request: an Encrypt answer carries its ciphertext both raw and in
    // the self-describing blob (issue 13, docs/CIPHERTEXT.md), and a full BatchEncrypt is a full request.
    "grpc.max_send_message_length": 2 * opts.maxMessageBytes + TRANSPORT_SLACK_BYTES,
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
  const pkgKeepCase = loadKeepCase();
  const shapes = new Map([...requestShapes(pkgKeepCase), ...requestShapes(pkgKeepCase, true)]);
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
  built = { server, health, refusals, streams: impl.streams };
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
