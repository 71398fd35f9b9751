/**
 * The admin server's own connection bounds (`connections.admin`): a bounded number of sockets (more
 * are closed at accept), and idle sockets closed after `connectionTimeout`; the routes keep answering
 * once the hostile sockets are gone. A real listening fastify on loopback.
 */
import { connect, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { FastifyInstance } from "fastify";
import { buildAdminApp } from "../../src/http";
import { Metrics } from "../../src/metrics";

let app: FastifyInstance;
let port = 0;
beforeAll(async () => {
  app = buildAdminApp({
    metrics: new Metrics({ defaultMetrics: false }),
    readiness: async () => [{ name: "device_session", ok: true }],
    status: async () => ({}),
    bounds: { maxConnections: 3, connectionTimeoutMs: 1000, keepAliveTimeoutMs: 1000, requestTimeoutMs: 2000 },
  });
  await app.listen({ host: "127.0.0.1", port: 0 });
  port = (app.server.address() as { port: number }).port;
});
afterAll(() => app.close());

/** A raw socket that connects and sends nothing; resolves its close. */
function idleSocket(): { socket: Socket; closed: Promise<void> } {
  const socket = connect({ host: "127.0.0.1", port });
  socket.on("error", () => undefined);
  return { socket, closed: new Promise((resolve) => socket.on("close", () => resolve())) };
}

describe("admin connection bounds", () => {
  it("applies the configured timeouts to the node server", () => {
    expect(app.server.maxConnections).toBe(3);
    expect(app.server.keepAliveTimeout).toBe(1000);
    expect(app.server.requestTimeout).toBe(2000);
    expect(app.server.headersTimeout).toBe(2000);
    expect(app.server.timeout).toBe(1000);
  });

  it("past maxConnections a socket is closed at accept; idle sockets are closed after connectionTimeout; then /healthz answers", async () => {
    const held = [idleSocket(), idleSocket(), idleSocket()];
    await Promise.all(held.map((h) => new Promise((r) => h.socket.once("connect", r))));
    // The fourth: accepted by the kernel, closed by the server before any request is read.
    const extra = idleSocket();
    extra.socket.write("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    let answered = false;
    extra.socket.on("data", () => (answered = true));
    await extra.closed;
    expect(answered).toBe(false);
    // The three idle ones are closed by the server (nothing on this side closes them).
    await Promise.all(held.map((h) => h.closed));
    const r = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(r.status).toBe(200);
  });
});
