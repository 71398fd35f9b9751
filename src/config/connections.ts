import type { ConnectionsConfig } from "./types";

/*
 * The `connections` section: bounds on what one peer, or many, can make the daemon hold before it has
 * authenticated anything (sockets, HTTP/2 streams, buffered bytes). Defaults and upper bounds side by
 * side with the schema, as in `schema.ts`; durations are whole seconds in the file, milliseconds once
 * compiled.
 */

/** Default and bounds of each integer field of `connections` (durations in seconds). */
export const CONNECTION_FIELDS = Object.freeze({
  maxConnections: { default: 1000, min: 1, max: 100_000, description: "gRPC connections open at once; clamped at start to what the process's file descriptor limit leaves (see fdReserve)" },
  fdReserve: { default: 128, min: 16, max: 65_536, description: "file descriptors kept for the HSM, the state store, the audit log and the process itself, never given to connections" },
  idleTimeoutSeconds: { default: 300, min: 1, max: 86_400, description: "a gRPC connection with no call for this long is closed (grpc.max_connection_idle_ms)" },
  handshakeTimeoutSeconds: { default: 10, min: 1, max: 600, description: "a connection that has not completed its TLS handshake and HTTP/2 preface and started a call by then is closed" },
  keepaliveSeconds: { default: 60, min: 1, max: 86_400, description: "the server pings a connection this often and closes it when the ping is not answered in 20 s (grpc.keepalive_time_ms)" },
  maxConcurrentStreams: { default: 32, min: 1, max: 1_000, description: "calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, grpc.max_concurrent_streams)" },
  maxSessionMemoryMiB: {
    default: 16,
    min: 1,
    max: 1_024,
    description: "memory nghttp2 may hold for one connection (header tables, queued frames) before it refuses new streams (grpc-node.max_session_memory)",
  },
  maxQueuedResponseBytes: {
    default: 8 * 1024 * 1024,
    min: 65_536,
    max: 1024 * 1024 * 1024,
    description: "response bytes a connection may leave unread; past it, new calls and further responses on it answer RESOURCE_EXHAUSTED",
  },
} as const);

/** Default and bounds of each integer field of `connections.admin` (durations in seconds). */
export const ADMIN_CONNECTION_FIELDS = Object.freeze({
  maxConnections: { default: 64, min: 1, max: 10_000, description: "HTTP connections to the admin port open at once" },
  connectionTimeoutSeconds: { default: 10, min: 1, max: 3_600, description: "an admin socket inactive for this long is closed (fastify connectionTimeout)" },
  keepAliveTimeoutSeconds: { default: 5, min: 1, max: 3_600, description: "an idle keep-alive admin connection is closed after this long (fastify keepAliveTimeout)" },
  requestTimeoutSeconds: { default: 10, min: 1, max: 3_600, description: "an admin request must be received whole within this time (fastify requestTimeout)" },
} as const);

const integerProperties = (fields: Record<string, { default: number; min: number; max: number; description: string }>) =>
  Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, { type: "integer", minimum: v.min, maximum: v.max, default: v.default, description: v.description }]));

/** JSON Schema of the `connections` section. */
export const CONNECTIONS_SCHEMA = {
  type: "object",
  additionalProperties: false,
  description: "bounds on connections, streams and buffered bytes (gRPC and admin)",
  properties: {
    ...integerProperties(CONNECTION_FIELDS),
    admin: { type: "object", additionalProperties: false, properties: integerProperties(ADMIN_CONNECTION_FIELDS) },
  },
} as const;

type Fields<T> = { -readonly [K in keyof T]?: number };
/** The section as it appears in a document that passed the schema. */
export type RawConnections = Fields<typeof CONNECTION_FIELDS> & { admin?: Fields<typeof ADMIN_CONNECTION_FIELDS> };

/** Defaults applied, seconds turned into milliseconds. */
export function compileConnections(raw: RawConnections = {}): ConnectionsConfig {
  const v = <K extends keyof typeof CONNECTION_FIELDS>(k: K) => raw[k] ?? CONNECTION_FIELDS[k].default;
  const a = <K extends keyof typeof ADMIN_CONNECTION_FIELDS>(k: K) => raw.admin?.[k] ?? ADMIN_CONNECTION_FIELDS[k].default;
  return {
    maxConnections: v("maxConnections"),
    fdReserve: v("fdReserve"),
    idleTimeoutMs: v("idleTimeoutSeconds") * 1000,
    handshakeTimeoutMs: v("handshakeTimeoutSeconds") * 1000,
    keepaliveMs: v("keepaliveSeconds") * 1000,
    maxConcurrentStreams: v("maxConcurrentStreams"),
    maxSessionMemoryMiB: v("maxSessionMemoryMiB"),
    maxQueuedResponseBytes: v("maxQueuedResponseBytes"),
    admin: {
      maxConnections: a("maxConnections"),
      connectionTimeoutMs: a("connectionTimeoutSeconds") * 1000,
      keepAliveTimeoutMs: a("keepAliveTimeoutSeconds") * 1000,
      requestTimeoutMs: a("requestTimeoutSeconds") * 1000,
    },
  };
}
