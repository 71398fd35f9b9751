/**
 * hsmd's gRPC listener in front of grpc-js (createConnectionInjector), with TLS, without an HSM: the
 * connection bound closes sockets past it at accept, a socket that never completes its TLS handshake
 * (silent, or stalled in the middle of a ClientHello) is closed at its first-call deadline, and a real
 * TLS gRPC client is served through it.
 */
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GrpcListener } from "../../src/grpc";
import { makeDevCertificates, type DevCertificates } from "../helpers/daemon";

let dir: string;
let certs: DevCertificates;
let server: grpc.Server;
let listener: GrpcListener;
const logs: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-listener-"));
  certs = makeDevCertificates(join(dir, "certs"));
  server = new grpc.Server({
    interceptors: [
      (_m, call) =>
        new grpc.ServerInterceptingCall(call, {
          start: (next) => {
            const info = call.getConnectionInfo();
            listener.noteCall(info.remoteAddress, info.remotePort);
            next();
          },
        }),
    ],
  });
  new HealthImplementation({ "": "SERVING" }).addToServer(server);
  const creds = grpc.ServerCredentials.createSsl(null, [{ cert_chain: readFileSync(certs.serverCert), private_key: readFileSync(certs.serverKey) }], false);
  listener = await GrpcListener.listen(server, creds, { host: "127.0.0.1", port: 0, maxConnections: 3, handshakeTimeoutMs: 1000, log: (m) => logs.push(m) });
});
afterAll(async () => {
  const closed = listener.stopAccepting();
  server.forceShutdown();
  listener.destroyAll();
  await closed;
  rmSync(dir, { recursive: true, force: true });
});

function raw(): { socket: Socket; closed: Promise<void> } {
  const socket = connect({ host: "127.0.0.1", port: listener.port });
  socket.on("error", () => undefined);
  socket.resume();
  return { socket, closed: new Promise((resolve) => socket.on("close", () => resolve())) };
}

function healthCheck(): Promise<number> {
  const Client = grpc.makeGenericClientConstructor({}, "");
  const c = new Client(`localhost:${listener.port}`, grpc.credentials.createSsl(readFileSync(certs.ca)));
  return new Promise((resolve) => {
    c.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      { deadline: Date.now() + 10_000 },
      (err: grpc.ServiceError | null) => {
        c.close();
        resolve(err ? err.code : 0);
      },
    );
  });
}

describe("GrpcListener", () => {
  it("serves a TLS gRPC client; closes sockets that never finish the TLS handshake at their deadline, and sockets past the bound at once", async () => {
    expect(await healthCheck()).toBe(grpc.status.OK);
    const silent = raw();
    const stalled = raw();
    // The first bytes of a TLS record header (a ClientHello that never comes whole).
    stalled.socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    const third = raw();
    await Promise.all([silent, stalled, third].map((s) => new Promise((r) => (s.socket.connecting ? s.socket.once("connect", r) : r(undefined)))));
    const past = raw(); // the fourth: over maxConnections 3
    await past.closed;
    await expect.poll(() => logs.join("\n"), { timeout: 10_000 }).toMatch(/gRPC connection limit of 3 reached .*refused 1 new connection/);
    // Nothing on this side closes the three: the listener does, at their first-call deadline.
    await Promise.all([silent.closed, stalled.closed, third.closed]);
    expect(logs.join("\n")).toMatch(/closed \d gRPC connection\(s\) that started no call within 1000 ms/);
    await expect.poll(() => listener.openConnections, { timeout: 10_000 }).toBe(0);
    expect(await healthCheck()).toBe(grpc.status.OK);
  });
});
