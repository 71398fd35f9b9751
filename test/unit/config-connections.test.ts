/**
 * The `connections` section: defaults, seconds compiled to milliseconds, bounds refused with their
 * paths; and the start-time clamp of the gRPC connection bound to the file descriptor limit.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ADMIN_CONNECTION_FIELDS, CONNECTION_FIELDS, describeConfig, loadConfig, validateConfig } from "../../src/config";
import { connectionBudget, softFdLimit } from "../../src/grpc";

const env = { HSMD_PIN: "pin-unused-here" };
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-config-conn-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const minimal = () => ({ node: { dataDir: join(dir, "data") }, devMode: true });
const check = (doc: unknown) => validateConfig(doc, { env });

describe("connections", () => {
  it("applies the defaults when the section is absent", () => {
    const c = loadConfig({ env, overrides: minimal() }).connections;
    expect(c).toEqual({
      maxConnections: 1000,
      fdReserve: 128,
      idleTimeoutMs: 300_000,
      handshakeTimeoutMs: 10_000,
      keepaliveMs: 60_000,
      maxConcurrentStreams: 32,
      maxSessionMemoryMiB: 16,
      maxQueuedResponseBytes: 8 * 1024 * 1024,
      admin: { maxConnections: 64, connectionTimeoutMs: 10_000, keepAliveTimeoutMs: 5_000, requestTimeoutMs: 10_000 },
    });
    expect(Object.isFrozen(c) && Object.isFrozen(c.admin)).toBe(true);
  });

  it("compiles the values given, seconds to milliseconds; shows them in describeConfig", () => {
    const config = loadConfig({
      env,
      overrides: {
        ...minimal(),
        connections: {
          maxConnections: 50,
          fdReserve: 256,
          idleTimeoutSeconds: 2,
          handshakeTimeoutSeconds: 3,
          keepaliveSeconds: 30,
          maxConcurrentStreams: 4,
          maxSessionMemoryMiB: 2,
          maxQueuedResponseBytes: 65_536,
          admin: { maxConnections: 8, connectionTimeoutSeconds: 4, keepAliveTimeoutSeconds: 1, requestTimeoutSeconds: 6 },
        },
      },
    });
    expect(config.connections).toEqual({
      maxConnections: 50,
      fdReserve: 256,
      idleTimeoutMs: 2000,
      handshakeTimeoutMs: 3000,
      keepaliveMs: 30_000,
      maxConcurrentStreams: 4,
      maxSessionMemoryMiB: 2,
      maxQueuedResponseBytes: 65_536,
      admin: { maxConnections: 8, connectionTimeoutMs: 4000, keepAliveTimeoutMs: 1000, requestTimeoutMs: 6000 },
    });
    expect(describeConfig(config).connections).toEqual(config.connections);
  });

  it("refuses values out of range, wrong types and unknown keys, each with its path", () => {
    for (const [field, spec] of Object.entries(CONNECTION_FIELDS)) {
      expect(check({ ...minimal(), connections: { [field]: spec.min - 1 } })).toEqual([{ path: `/connections/${field}`, message: `must be >= ${spec.min}` }]);
      expect(check({ ...minimal(), connections: { [field]: spec.max + 1 } })).toEqual([{ path: `/connections/${field}`, message: `must be <= ${spec.max}` }]);
    }
    for (const [field, spec] of Object.entries(ADMIN_CONNECTION_FIELDS)) {
      expect(check({ ...minimal(), connections: { admin: { [field]: spec.min - 1 } } })).toEqual([{ path: `/connections/admin/${field}`, message: `must be >= ${spec.min}` }]);
    }
    expect(check({ ...minimal(), connections: { idleTimeoutSeconds: 1.5 } })).toEqual([{ path: "/connections/idleTimeoutSeconds", message: "must be integer" }]);
    expect(check({ ...minimal(), connections: { maxConnections: "10" } })).toEqual([{ path: "/connections/maxConnections", message: "must be integer" }]);
    expect(check({ ...minimal(), connections: { idleTimeoutMs: 5 } })[0]).toMatchObject({ path: "/connections/idleTimeoutMs", message: expect.stringMatching(/^is not a known property/) });
  });
});

describe("the gRPC connection bound and the file descriptor limit", () => {
  it("reads the soft limit from /proc/self/limits text", () => {
    const text = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
    expect(softFdLimit(text)).toBe(1024);
    expect(softFdLimit("Max open files            unlimited            unlimited            files\n")).toBeUndefined();
    expect(softFdLimit("nothing here")).toBeUndefined();
    expect(softFdLimit()).toBeGreaterThan(0); // this process's own (Linux)
  });

  it("keeps the configured bound when the limit leaves room for it; clamps it, saying why, when not", () => {
    const roomy = connectionBudget({ configured: 1000, fdReserve: 128, adminConnections: 64, softLimit: 65_536, openNow: 30 });
    expect(roomy).toMatchObject({ maxConnections: 1000, clamped: false });
    const tight = connectionBudget({ configured: 1000, fdReserve: 128, adminConnections: 64, softLimit: 1024, openNow: 30 });
    expect(tight.maxConnections).toBe(1024 - 30 - 128 - 64);
    expect(tight.clamped).toBe(true);
    expect(tight.message).toMatch(/at most 802 at once, not the configured 1000: the file descriptor limit \(RLIMIT_NOFILE\) is 1024, 30 are open, 128 are kept/);
    // Never zero: a node with no room at all still takes one connection (and says why it is so few).
    expect(connectionBudget({ configured: 10, fdReserve: 128, adminConnections: 64, softLimit: 100, openNow: 30 }).maxConnections).toBe(1);
  });
});
