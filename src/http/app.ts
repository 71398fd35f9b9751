import Fastify, { type FastifyError, type FastifyInstance } from "fastify";
import { Code, HsmError } from "../errors";
import { httpStatusOf } from "./status";
import type { Metrics } from "../metrics";

/** One line of /readyz: a named condition the node needs to serve (session usable, store writable...). */
export interface ReadinessCheck {
  name: string;
  ok: boolean;
  /** Why the check failed, in words an operator can act on. */
  detail?: string;
}

/** What the admin surface reads from the daemon; every callback may be slow or throw. */
export interface AdminDeps {
  metrics: Metrics;
  /** e.g. session usable, store writable, domain key present */
  readiness(): Promise<ReadinessCheck[]>;
  /** JSON status: node, token, mechanisms, key count ... (opaque object built by the daemon) */
  status(): Promise<Record<string, unknown>>;
  /**
   * Fastify's own logger (one line per request). Off by default: the admin surface is scraped often.
   * @default false
   */
  logger?: boolean;
  /** Where unexpected errors (answered as a bare 500) are reported, with their details. */
  log?: (msg: string) => void;
  /**
   * Bounds of the admin server's own connections (the `connections.admin` section), so that a flood
   * of slow or idle HTTP clients can neither take the process's file descriptors nor hold sockets open.
   * Absent: fastify's defaults and no connection bound (tests driving the app with `inject()`).
   */
  bounds?: AdminBounds;
}

/** The admin server's connection bounds. */
export interface AdminBounds {
  /** Sockets open at once (node's `server.maxConnections`: more are closed at accept). */
  maxConnections: number;
  /** An inactive socket is closed after this long (fastify `connectionTimeout`). */
  connectionTimeoutMs: number;
  /** An idle keep-alive connection is closed after this long (fastify `keepAliveTimeout`). */
  keepAliveTimeoutMs: number;
  /** A request must have arrived whole within this time (fastify `requestTimeout`). */
  requestTimeoutMs: number;
}

/** The JSON body of every admin error: a stable {@link Code}-like string and a message. */
export interface ErrorBody {
  code: string;
  message: string;
}

/** Longest part of a request URL echoed back in a 404 message. */
const MAX_ECHOED_URL = 200;

/** Codes for the 4xx errors fastify raises itself (bad content type, body too large...). */
function codeOfClientStatus(status: number): Code {
  switch (status) {
    case 404:
      return Code.NotFound;
    case 413:
    case 429:
      return Code.ResourceExhausted;
    default:
      return Code.InvalidArgument;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Builds the HTTP admin app (`/healthz`, `/readyz`, `/metrics`, `/v1/status`) without listening:
 * tests drive it with `app.inject()`, the daemon calls `listen`. Every error answers JSON
 * `{code, message}`: an {@link HsmError} with the HTTP status of its code, fastify's own client errors
 * with theirs, anything else a bare 500 "internal error" that leaks nothing.
 */
export function buildAdminApp(deps: AdminDeps): FastifyInstance {
  const logger = deps.logger ?? false;
  const b = deps.bounds;
  // With logger false fastify logs nothing, requests included.
  const app = Fastify({
    logger,
    ...(b ? { connectionTimeout: b.connectionTimeoutMs, keepAliveTimeout: b.keepAliveTimeoutMs, requestTimeout: b.requestTimeoutMs } : {}),
  });
  if (b) {
    app.server.maxConnections = b.maxConnections;
    // Slow headers count against the same budget as a slow body.
    app.server.headersTimeout = Math.min(app.server.headersTimeout, b.requestTimeoutMs);
  }

  /** Liveness: answers while the event loop runs, whatever the device or store are doing. */
  app.get("/healthz", async () => ({ status: "ok" }));

  /** Readiness: 200 only if every check passes; a failing or throwing check source is a 503. */
  app.get("/readyz", async (_req, reply) => {
    let checks: ReadinessCheck[];
    try {
      checks = await deps.readiness();
    } catch (e) {
      return reply.code(503).send({ ready: false, checks: [], error: messageOf(e) });
    }
    const ready = checks.every((c) => c.ok);
    return reply.code(ready ? 200 : 503).send({ ready, checks });
  });

  /** Prometheus scrape endpoint, in the registry's own exposition format. */
  app.get("/metrics", async (_req, reply) => {
    const { contentType, body } = await deps.metrics.render();
    return reply.code(200).type(contentType).send(body);
  });

  /** Node status for operators; a daemon that cannot build it answers 503 UNAVAILABLE. */
  app.get("/v1/status", async (_req, reply) => {
    try {
      return await deps.status();
    } catch (e) {
      if (!(e instanceof HsmError)) deps.log?.(`admin: /v1/status failed: ${messageOf(e)}`);
      const body: ErrorBody = {
        code: e instanceof HsmError ? e.code : Code.Unavailable,
        message: e instanceof HsmError ? e.message : "status unavailable",
      };
      return reply.code(503).send(body);
    }
  });

  app.setNotFoundHandler((req, reply) => {
    const url = req.url.length > MAX_ECHOED_URL ? `${req.url.slice(0, MAX_ECHOED_URL)}...` : req.url;
    const body: ErrorBody = { code: Code.NotFound, message: `no route ${req.method} ${url}` };
    return reply.code(404).send(body);
  });

  app.setErrorHandler((err: FastifyError | HsmError | Error, _req, reply) => {
    if (err instanceof HsmError) {
      const body: ErrorBody = { code: err.code, message: err.message };
      return reply.code(httpStatusOf(err.code)).send(body);
    }
    const status = (err as FastifyError).statusCode;
    const fastifyCode = (err as FastifyError).code;
    if (typeof status === "number" && status >= 400 && status < 500 && typeof fastifyCode === "string" && fastifyCode.startsWith("FST_")) {
      const body: ErrorBody = { code: codeOfClientStatus(status), message: err.message };
      return reply.code(status).send(body);
    }
    deps.log?.(`admin: internal error: ${err.stack ?? messageOf(err)}`);
    const body: ErrorBody = { code: Code.Internal, message: "internal error" };
    return reply.code(500).send(body);
  });

  return app;
}
