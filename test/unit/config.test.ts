import { execFileSync } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  ConfigError,
  LIMIT_DEFAULTS,
  compileConfig,
  describeConfig,
  findProfileDir,
  loadConfig,
  validateConfig,
  type ConfigProblem,
} from "../../src/config";

const SECRET = "s3cr3t-PIN-4242";
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-config-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function writeConfig(doc: unknown, name = "hsmd.json"): string {
  const file = join(dir, name);
  writeFileSync(file, typeof doc === "string" ? doc : JSON.stringify(doc));
  return file;
}

function problemsOf(fn: () => unknown): ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error("expected a ConfigError");
}

const env = { HSMD_PIN: SECRET };
// Dev mode on the default loopback addresses: the TLS rules have their own file (config-tls.test.ts).
const minimal = () => ({ node: { dataDir: join(dir, "data") }, devMode: true });

describe("defaults", () => {
  it("resolves every default from a minimal file", () => {
    const config = loadConfig({ file: writeConfig(minimal()), env });
    expect(config.node).toEqual({ id: hostname(), dataDir: join(dir, "data") });
    expect(config.listen.grpc).toEqual({ host: "127.0.0.1", port: 7443, address: "127.0.0.1:7443" });
    expect(config.listen.admin).toEqual({ host: "127.0.0.1", port: 7480, address: "127.0.0.1:7480" });
    expect(config.limits).toEqual({
      maxPayloadBytes: 65536,
      maxBatchItems: 256,
      maxLabelLength: 128,
      maxRandomBytes: 4096,
      maxPageSize: 1000,
      maxRequestIdLength: 128,
      maxOaepLabelBytes: 256,
      // 256 items × (64 KiB + 1 KiB) + 64 KiB: a full batch of full items fits in one message.
      maxMessageBytes: 17_104_896,
    });
    expect(config.limits).toEqual(LIMIT_DEFAULTS);
    expect(config.device).toMatchObject({
      profile: "softhsm2",
      module: "/usr/lib/softhsm/libsofthsm2.so",
      tokenLabel: "hsmd-dev",
      slot: null,
      pin: SECRET,
      pinSource: { env: "HSMD_PIN" },
      poolSize: 8,
      quirks: { maxObjects: null, aesKeyBits: [128, 256], supportsEd25519: true },
    });
    expect(config.sources.file).toBe(join(dir, "hsmd.json"));
    expect(config.sources.profile).toMatch(/hsm-config[/\\]softhsm2\.json$/);
  });

  it("resolves a relative dataDir against the config file's directory", () => {
    const config = loadConfig({ file: writeConfig({ node: { id: "n1", dataDir: "state" }, devMode: true }), env });
    expect(config.node).toEqual({ id: "n1", dataDir: join(dir, "state") });
  });

  it("works from overrides alone, and parses IPv6 and port 0", () => {
    const config = loadConfig({ env, overrides: { ...minimal(), listen: { grpc: "[::1]:0", admin: "localhost:0" } } });
    expect(config.listen.grpc).toEqual({ host: "::1", port: 0, address: "[::1]:0" });
    expect(config.listen.admin.port).toBe(0);
    expect(config.sources.file).toBeNull();
  });

  it("loads the shipped example and every shipped profile", () => {
    const profiles = findProfileDir({})!;
    // The example names production TLS paths under /etc/hsmd/tls: point them at dev certificates.
    const certs = join(dir, "certs");
    execFileSync("bash", [join(__dirname, "../../scripts/dev-ca.sh"), certs], { stdio: "pipe" });
    const tls = { cert: join(certs, "server.pem"), key: join(certs, "server.key"), ca: join(certs, "ca.pem") };
    const example = loadConfig({ file: join(profiles, "hsmd.example.json"), env, overrides: { tls } });
    expect(example.device.profile).toBe("softhsm2");
    expect(example.tls).toEqual({ ...tls, requireClientCert: true });
    expect(example.devMode).toBe(false);
    expect(JSON.stringify(example)).not.toContain(SECRET);
    for (const profile of ["softhsm2", "yubihsm2", "luna", "generic"]) {
      const extra = profile === "generic" ? { module: "/opt/x.so", slot: 1 } : {};
      expect(loadConfig({ env, overrides: { ...minimal(), device: { profile, ...extra } } }).device.profile).toBe(profile);
    }
  });
});

describe("profiles", () => {
  it("merges the yubihsm2 profile and lets the file override it", () => {
    const config = loadConfig({
      file: writeConfig({ ...minimal(), device: { profile: "yubihsm2", poolSize: 2, quirks: { maxRsaBits: 2048 } } }),
      env,
    });
    expect(config.device).toMatchObject({
      profile: "yubihsm2",
      module: "/usr/lib/x86_64-linux-gnu/pkcs11/yubihsm_pkcs11.so",
      poolSize: 2,
      quirks: { maxObjects: 256, maxSessions: 16, maxRsaBits: 2048, aesKeyBits: [128, 192, 256], sessionCopiesForCrypto: false },
    });
  });

  it("session copies for crypto: on for SoftHSM2, off where session objects are scarce or *Init is cheap, and overridable", () => {
    const of = (device: Record<string, unknown>) => loadConfig({ env, overrides: { ...minimal(), device } }).device.quirks.sessionCopiesForCrypto;
    expect(of({ profile: "softhsm2" })).toBe(true);
    expect(of({ profile: "yubihsm2" })).toBe(false);
    expect(of({ profile: "luna" })).toBe(false);
    expect(of({ profile: "generic", module: "/opt/x.so", slot: 1 })).toBe(false);
    expect(of({ profile: "softhsm2", quirks: { sessionCopiesForCrypto: false } })).toBe(false);
    expect(validateConfig({ ...minimal(), device: { profile: "softhsm2", quirks: { sessionCopiesForCrypto: "yes" } } }, { env })).toEqual([
      { path: "/device/quirks/sessionCopiesForCrypto", message: "must be boolean" },
    ]);
  });

  it("disabled mechanisms: none by default, CKM_* names kept as given, anything else refused with its path", () => {
    const of = (device: Record<string, unknown>) => loadConfig({ env, overrides: { ...minimal(), device } }).device.disabledMechanisms;
    expect(of({})).toEqual([]);
    expect(of({ disabledMechanisms: ["CKM_AES_CMAC", "CKM_RSA_X_509"] })).toEqual(["CKM_AES_CMAC", "CKM_RSA_X_509"]);
    expect(validateConfig({ ...minimal(), device: { disabledMechanisms: ["aes-cmac"] } }, { env })).toEqual([
      { path: "/device/disabledMechanisms/0", message: "must be a PKCS#11 mechanism name such as CKM_AES_CMAC" },
    ]);
    expect(validateConfig({ ...minimal(), device: { disabledMechanisms: "CKM_AES_CMAC" } }, { env })).toEqual([{ path: "/device/disabledMechanisms", message: "must be array" }]);
  });

  it("replaces the token selector and the PIN source as a whole", () => {
    writeFileSync(join(dir, "pin"), `${SECRET}\n`);
    const config = loadConfig({
      file: writeConfig({ ...minimal(), device: { slot: 3, pin: { file: "pin" } } }),
      env: {},
    });
    expect(config.device.tokenLabel).toBeNull();
    expect(config.device.slot).toBe(3);
    expect(config.device.pinSource).toEqual({ file: join(dir, "pin") });
    expect(config.device.pin).toBe(SECRET);
  });

  it("deep-merges overrides over the file", () => {
    const file = writeConfig({ ...minimal(), listen: { grpc: "127.0.0.2:9000" }, limits: { maxBatchItems: 10 } });
    const config = loadConfig({ file, env, overrides: { listen: { admin: "127.0.0.1:0" }, limits: { maxPageSize: 5 }, device: { tokenLabel: "other" } } });
    expect(config.listen.grpc.port).toBe(9000);
    expect(config.listen.admin.port).toBe(0);
    expect(config.limits).toMatchObject({ maxBatchItems: 10, maxPageSize: 5, maxPayloadBytes: 65536 });
    expect(config.device.tokenLabel).toBe("other");
  });

  it("limits.maxMessageBytes follows maxBatchItems and maxPayloadBytes unless given, and must hold one full call", () => {
    const limits = (l: object) => loadConfig({ env, overrides: { ...minimal(), limits: l } }).limits;
    const check = (doc: unknown) => validateConfig(doc, { env });
    expect(limits({ maxBatchItems: 4, maxPayloadBytes: 1024 }).maxMessageBytes).toBe(4 * (1024 + 1024) + 65536);
    expect(limits({ maxBatchItems: 10 }).maxMessageBytes).toBe(10 * (65536 + 1024) + 65536);
    // Given: a total for the whole message, smaller than a full batch of full items.
    expect(limits({ maxMessageBytes: 4 * 1024 * 1024 })).toMatchObject({ maxMessageBytes: 4 * 1024 * 1024, maxBatchItems: 256, maxPayloadBytes: 65536 });
    // The smallest accepted holds one call of the largest payload with its overhead.
    expect(limits({ maxMessageBytes: 65536 + 1024 + 65536 }).maxMessageBytes).toBe(132_096);
    expect(check({ ...minimal(), limits: { maxMessageBytes: 132_095 } })).toEqual([
      { path: "/limits/maxMessageBytes", message: "must be >= 132096 (one call with a payload of maxPayloadBytes, 65536, and its overhead)" },
    ]);
    expect(check({ ...minimal(), limits: { maxMessageBytes: 256 * 1024 * 1024 + 1 } })).toEqual([{ path: "/limits/maxMessageBytes", message: "must be <= 268435456" }]);
    // A derived size over the largest message hsmd accepts is refused, naming the way out.
    expect(check({ ...minimal(), limits: { maxBatchItems: 10000, maxPayloadBytes: 1024 * 1024 } })).toEqual([
      { path: "/limits", message: expect.stringMatching(/^maxBatchItems × \(maxPayloadBytes \+ 1024\) \+ 65536 = 10496065536 bytes is over 268435456, the largest message hsmd accepts: .*set maxMessageBytes/) },
    ]);
    expect(limits({ maxBatchItems: 10000, maxPayloadBytes: 1024 * 1024, maxMessageBytes: 64 * 1024 * 1024 }).maxMessageBytes).toBe(64 * 1024 * 1024);
  });

  it("reads profiles from HSMD_CONFIG_DIR", () => {
    const custom = join(dir, "profiles");
    mkdirSync(custom);
    cpSync(join(findProfileDir({})!, "luna.json"), join(custom, "luna.json"));
    writeFileSync(
      join(custom, "softhsm2.json"),
      JSON.stringify({ module: "/custom.so", tokenLabel: "t", pin: { env: "OTHER_PIN" }, poolSize: 3, quirks: { maxObjects: 10, maxSessions: null, aesKeyBits: [256], maxRsaBits: 2048, sessionObjectsOnly: true, sessionCopiesForCrypto: false, supportsEd25519: false, supportsAesKeyWrapPad: true } }),
    );
    const config = loadConfig({ env: { HSMD_CONFIG_DIR: custom, OTHER_PIN: "x" }, overrides: minimal() });
    expect(config.device).toMatchObject({ module: "/custom.so", poolSize: 3, pin: "x", quirks: { sessionObjectsOnly: true } });
    expect(config.sources.profile).toBe(join(custom, "softhsm2.json"));
  });

  it("reports a broken profile file at /device/profile", () => {
    const custom = join(dir, "profiles");
    mkdirSync(custom);
    writeFileSync(join(custom, "softhsm2.json"), JSON.stringify({ pin: { env: "P" }, poolSize: 0, quirks: {} }));
    const problems = validateConfig(minimal(), { env: { HSMD_CONFIG_DIR: custom } });
    expect(problems.length).toBeGreaterThan(1);
    expect(problems.every((p) => p.path === "/device/profile")).toBe(true);
    expect(problems.map((p) => p.message).join("\n")).toContain("/poolSize: must be >= 1");
    expect(validateConfig({ ...minimal(), device: { profile: "luna" } }, { env: { HSMD_CONFIG_DIR: custom } })).toEqual([
      { path: "/device/profile", message: expect.stringMatching(/^profile "luna": cannot read .*luna\.json \(ENOENT\)$/) },
    ]);
  });
});

describe("problems", () => {
  const check = (doc: unknown) => validateConfig(doc, { env });

  it("rejects unknown keys with their path and a suggestion", () => {
    expect(check({ ...minimal(), limits: { maxPayload: 10 } })).toEqual([
      { path: "/limits/maxPayload", message: expect.stringMatching(/^is not a known property \(did you mean 'maxPayloadBytes'\?\)/) },
    ]);
    expect(check({ ...minimal(), extra: true })[0]!.path).toBe("/extra");
    expect(check({ ...minimal(), device: { quirks: { foo: 1 } } })[0]!.path).toBe("/device/quirks/foo");
  });

  it("rejects wrong types", () => {
    expect(check({ ...minimal(), device: { poolSize: "8" } })).toEqual([{ path: "/device/poolSize", message: "must be integer" }]);
    expect(check({ ...minimal(), device: { poolSize: 1.5 } })).toEqual([{ path: "/device/poolSize", message: "must be integer" }]);
    expect(check({ node: { dataDir: 7 }, devMode: true })).toEqual([{ path: "/node/dataDir", message: "must be string" }]);
    expect(check([])).toEqual([{ path: "/", message: "must be object" }]);
  });

  it("rejects an unknown profile", () => {
    expect(check({ ...minimal(), device: { profile: "thales" } })).toEqual([
      { path: "/device/profile", message: "must be one of softhsm2, yubihsm2, luna, generic" },
    ]);
  });

  it("rejects out-of-range values", () => {
    expect(check({ ...minimal(), device: { poolSize: 0 } })).toEqual([{ path: "/device/poolSize", message: "must be >= 1" }]);
    expect(check({ ...minimal(), device: { poolSize: 257 } })).toEqual([{ path: "/device/poolSize", message: "must be <= 256" }]);
    expect(check({ ...minimal(), device: { slot: -1 } })).toEqual([{ path: "/device/slot", message: "must be >= 0" }]);
    expect(check({ ...minimal(), limits: { maxRandomBytes: 0 } })).toEqual([{ path: "/limits/maxRandomBytes", message: "must be >= 1" }]);
    expect(check({ ...minimal(), limits: { maxOaepLabelBytes: 65537 } })).toEqual([{ path: "/limits/maxOaepLabelBytes", message: "must be <= 65536" }]);
    expect(loadConfig({ file: writeConfig({ ...minimal(), limits: { maxOaepLabelBytes: 1 } }), env }).limits.maxOaepLabelBytes).toBe(1);
    expect(check({ ...minimal(), device: { profile: "yubihsm2", poolSize: 17 } })).toEqual([
      { path: "/device/poolSize", message: "must be <= 16 (the device's quirks.maxSessions)" },
    ]);
    expect(check({ ...minimal(), device: { quirks: { aesKeyBits: [100] } } })).toEqual([
      { path: "/device/quirks/aesKeyBits/0", message: "must be one of 128, 192, 256" },
    ]);
  });

  it("rejects bad listen addresses", () => {
    const message = "must be host:port with a port in 0..65535 (0 = any free port)";
    for (const grpc of ["localhost", "host:65536", ":80", "a b:1", "host:-1", "::1:80"]) {
      expect(check({ ...minimal(), listen: { grpc } })).toEqual([{ path: "/listen/grpc", message }]);
    }
    expect(check({ ...minimal(), listen: { grpc: "127.0.0.1:9", admin: "127.0.0.1:9" } })).toEqual([
      { path: "/listen/admin", message: "must differ from /listen/grpc" },
    ]);
  });

  it("requires node.dataDir and a module, token selector and PIN after merging", () => {
    expect(check({ devMode: true })).toEqual([{ path: "/node", message: "is required" }]);
    expect(check({ node: {}, devMode: true })).toEqual([{ path: "/node/dataDir", message: "is required" }]);
    expect(check({ ...minimal(), device: { profile: "generic" } })).toEqual([
      { path: "/device", message: "must have property 'tokenLabel' or 'slot'" },
      { path: "/device/module", message: "is required (the generic profile names no module)" },
    ]);
    expect(check({ ...minimal(), device: { tokenLabel: "a", slot: 0 } })).toEqual([
      { path: "/device", message: "must have only one of 'tokenLabel' or 'slot'" },
    ]);
  });

  it("requires exactly one PIN source, never an inline PIN", () => {
    expect(check({ ...minimal(), device: { pin: {} } })).toEqual([{ path: "/device/pin", message: "must have property 'env' or 'file'" }]);
    expect(check({ ...minimal(), device: { pin: { env: "A", file: "/b" } } })).toEqual([
      { path: "/device/pin", message: "must have only one of 'env' or 'file'" },
    ]);
    const inline = check({ ...minimal(), device: { pin: SECRET } });
    expect(inline).toEqual([{ path: "/device/pin", message: expect.stringContaining("the PIN itself never goes in a config file") }]);
    const asName = check({ ...minimal(), device: { pin: { env: "1234" } } });
    expect(asName).toEqual([{ path: "/device/pin/env", message: expect.stringContaining("must be an environment variable name") }]);
    expect(JSON.stringify(inline)).not.toContain(SECRET);
  });

  it("reports several problems together, each on its own line", () => {
    const file = writeConfig({
      node: { dataDir: 1 },
      listen: { grpc: "nope" },
      device: { poolSize: "x", colour: "red" },
      limits: { maxPayload: 1, maxPageSize: 0 },
      devMode: true,
    });
    let error: ConfigError | undefined;
    try {
      loadConfig({ file, env: {} });
    } catch (err) {
      error = err as ConfigError;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const paths = error!.problems.map((p) => p.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        "/node/dataDir",
        "/listen/grpc",
        "/device/poolSize",
        "/device/colour",
        "/limits/maxPayload",
        "/limits/maxPageSize",
        "/device/pin/env",
      ]),
    );
    expect(error!.problems).toHaveLength(7);
    const lines = error!.message.split("\n");
    expect(lines).toHaveLength(7);
    expect(lines).toContain("config: /device/poolSize: must be integer");
    expect(lines).toContain("config: /device/pin/env: environment variable HSMD_PIN is not set");
    expect(lines.every((l) => l.startsWith("config: /"))).toBe(true);
  });

  it("reports unreadable and malformed config files", () => {
    expect(problemsOf(() => loadConfig({ file: join(dir, "missing.json") }))).toEqual([
      { path: "/", message: `cannot read ${join(dir, "missing.json")} (ENOENT)` },
    ]);
    const bad = writeConfig(`{\n  "node": { "dataDir": "${SECRET}", }\n}`);
    const [problem] = problemsOf(() => loadConfig({ file: bad }));
    expect(problem!.message).toMatch(/is not valid JSON/);
    expect(problem!.message).not.toContain(SECRET);
  });
});

describe("PIN", () => {
  it("reads it from the environment", () => {
    expect(loadConfig({ env, overrides: minimal() }).device.pin).toBe(SECRET);
    expect(problemsOf(() => loadConfig({ env: { HSMD_PIN: "" }, overrides: minimal() }))).toEqual([
      { path: "/device/pin/env", message: "environment variable HSMD_PIN is empty" },
    ]);
    expect(problemsOf(() => loadConfig({ env: {}, overrides: minimal() }))).toEqual([
      { path: "/device/pin/env", message: "environment variable HSMD_PIN is not set" },
    ]);
  });

  it("reads it from a file, trimming one trailing newline", () => {
    const pinFile = join(dir, "pin.txt");
    writeFileSync(pinFile, `${SECRET}\r\n`);
    const config = loadConfig({ env: {}, overrides: { ...minimal(), device: { pin: { file: pinFile } } } });
    expect(config.device.pin).toBe(SECRET);
    expect(config.device.pinSource).toEqual({ file: pinFile });
  });

  it("reports a missing, empty or unreadable PIN file without its contents", () => {
    const at = (file: string) => validateConfig({ ...minimal(), device: { pin: { file } } }, { env: {} });
    expect(at(join(dir, "none"))).toEqual([{ path: "/device/pin/file", message: `PIN file ${join(dir, "none")} does not exist` }]);
    writeFileSync(join(dir, "empty"), "\n");
    expect(at(join(dir, "empty"))).toEqual([{ path: "/device/pin/file", message: `PIN file ${join(dir, "empty")} is empty` }]);
    expect(at(dir)).toEqual([{ path: "/device/pin/file", message: `PIN file ${dir} is a directory` }]);
    if (process.getuid?.() !== 0) {
      writeFileSync(join(dir, "locked"), SECRET);
      chmodSync(join(dir, "locked"), 0o000);
      const problems = at(join(dir, "locked"));
      expect(problems).toEqual([{ path: "/device/pin/file", message: `PIN file ${join(dir, "locked")} is not readable` }]);
    }
  });

  it("never shows the PIN in JSON, inspect, describeConfig or error messages", () => {
    const config = loadConfig({ env, overrides: minimal() });
    expect(config.device.pin).toBe(SECRET);
    const json = JSON.stringify(config);
    expect(json).not.toContain(SECRET);
    expect(JSON.parse(json).device.pin).toBe("[redacted]");
    expect(JSON.parse(json).device.pinSource).toEqual({ env: "HSMD_PIN" });
    expect(JSON.stringify(config.device)).not.toContain(SECRET);
    expect(inspect(config, { depth: 10 })).not.toContain(SECRET);
    expect(inspect(config.device)).not.toContain(SECRET);
    const described = describeConfig(config);
    expect(described.device.pin).toBe("[redacted]");
    expect(JSON.stringify(described)).not.toContain(SECRET);
    expect(Object.keys(config.device)).not.toContain("toJSON");

    // A config that fails for other reasons after the PIN was read: the error does not carry it.
    const err = (() => {
      try {
        loadConfig({ env, overrides: { ...minimal(), device: { poolSize: 0 } } });
      } catch (e) {
        return e as ConfigError;
      }
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).not.toContain(SECRET);
    expect(JSON.stringify(err!.problems)).not.toContain(SECRET);
    expect(inspect(err)).not.toContain(SECRET);
  });
});

describe("frozen result", () => {
  it("is deeply frozen: assignment throws in strict mode", () => {
    const config = compileConfig(minimal(), { env });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.device.quirks.aesKeyBits)).toBe(true);
    expect(() => {
      (config as { node: unknown }).node = {};
    }).toThrow(TypeError);
    expect(() => {
      (config.limits as { maxPageSize: number }).maxPageSize = 1;
    }).toThrow(TypeError);
    expect(() => {
      (config.device.quirks.aesKeyBits as number[]).push(192);
    }).toThrow(TypeError);
    expect(() => {
      (config.listen.grpc as { port: number }).port = 1;
    }).toThrow(TypeError);
    expect(config.limits.maxPageSize).toBe(1000);
  });

  it("does not modify or share the caller's input", () => {
    const input = { ...minimal(), device: { quirks: { aesKeyBits: [256, 128] } } };
    const config = compileConfig(input, { env });
    expect(Object.isFrozen(input.device.quirks.aesKeyBits)).toBe(false);
    expect(config.device.quirks.aesKeyBits).toEqual([128, 256]);
    expect(input.device.quirks.aesKeyBits).toEqual([256, 128]);
  });
});

describe("auth and audit", () => {
  const check = (doc: unknown) => validateConfig(doc, { env });

  it("applies the defaults when both sections are absent", () => {
    const config = loadConfig({ file: writeConfig(minimal()), env });
    expect(config.auth).toEqual({
      sessionTtlMs: 3_600_000,
      maxFailedLogins: 5,
      firstOfficer: "admin",
      quorumTtlMs: 600_000,
      quorum: {},
      loginRateLimit: { burst: 30, perSecond: 10, maxPeers: 10_000 },
      hashLane: { concurrency: 2, maxQueue: 64 },
    });
    expect(config.audit).toEqual({ file: join(dir, "data", "audit", "audit.log"), fsync: "changes" });
    // Empty sections are the same as absent ones.
    const empty = loadConfig({ env, overrides: { ...minimal(), auth: { quorum: {} }, audit: {} } });
    expect(empty.auth).toEqual(config.auth);
    expect(empty.audit).toEqual(config.audit);
  });

  it("puts the default audit log under a relative dataDir resolved against the config file", () => {
    const config = loadConfig({ file: writeConfig({ node: { dataDir: "state" }, devMode: true }), env });
    expect(config.audit.file).toBe(join(dir, "state", "audit", "audit.log"));
  });

  it("compiles the values given: seconds to milliseconds, audit.file against the config file's directory", () => {
    const config = loadConfig({
      file: writeConfig({
        ...minimal(),
        auth: {
          sessionTtlSeconds: 900,
          maxFailedLogins: 3,
          firstOfficer: "root-officer",
          quorum: { ttlSeconds: 120, operations: { DeleteUser: 2, ResetPassword: 3, ShareKey: 1, DeleteKey: 2 } },
          loginRateLimit: { burst: 5, perSecond: 0.5 },
          hashLane: { concurrency: 4, maxQueue: 0 },
        },
        audit: { file: "logs/audit.jsonl", fsync: "always" },
      }),
      env,
    });
    expect(config.auth).toEqual({
      sessionTtlMs: 900_000,
      maxFailedLogins: 3,
      firstOfficer: "root-officer",
      quorumTtlMs: 120_000,
      quorum: { DeleteUser: 2, ResetPassword: 3, ShareKey: 1, DeleteKey: 2 },
      loginRateLimit: { burst: 5, perSecond: 0.5, maxPeers: 10_000 },
      hashLane: { concurrency: 4, maxQueue: 0 },
    });
    expect(config.audit).toEqual({ file: join(dir, "logs", "audit.jsonl"), fsync: "always" });
    // An absolute path is kept as is; the limits are inclusive.
    const abs = loadConfig({
      env,
      overrides: { ...minimal(), auth: { sessionTtlSeconds: 604800, maxFailedLogins: 100, quorum: { ttlSeconds: 1, operations: { DeleteKey: 32 } } }, audit: { file: "/var/log/hsmd/audit.log" } },
    });
    expect(abs.auth.sessionTtlMs).toBe(604_800_000);
    expect(abs.auth.maxFailedLogins).toBe(100);
    expect(abs.auth.quorumTtlMs).toBe(1000);
    expect(abs.auth.quorum).toEqual({ DeleteKey: 32 });
    expect(abs.audit).toEqual({ file: "/var/log/hsmd/audit.log", fsync: "changes" });
  });

  it("refuses an operation that cannot need a quorum, naming the ones that can", () => {
    expect(check({ ...minimal(), auth: { quorum: { operations: { Foo: 2 } } } })).toEqual([
      { path: "/auth/quorum/operations/Foo", message: expect.stringContaining("DeleteUser, ResetPassword, ShareKey, DeleteKey") },
    ]);
    // RPC names that exist but cannot be put under a quorum are refused too.
    expect(check({ ...minimal(), auth: { quorum: { operations: { Sign: 2 } } } })[0]!.path).toBe("/auth/quorum/operations/Sign");
    expect(problemsOf(() => loadConfig({ env, overrides: { ...minimal(), auth: { quorum: { operations: { deleteUser: 2 } } } } })).map((p) => p.path)).toEqual([
      "/auth/quorum/operations/deleteUser",
    ]);
  });

  it("refuses out-of-range values with their paths", () => {
    expect(check({ ...minimal(), auth: { maxFailedLogins: 0 } })).toEqual([{ path: "/auth/maxFailedLogins", message: "must be >= 1" }]);
    expect(check({ ...minimal(), auth: { maxFailedLogins: 101 } })).toEqual([{ path: "/auth/maxFailedLogins", message: "must be <= 100" }]);
    expect(check({ ...minimal(), auth: { sessionTtlSeconds: 0 } })).toEqual([{ path: "/auth/sessionTtlSeconds", message: "must be >= 1" }]);
    expect(check({ ...minimal(), auth: { sessionTtlSeconds: 604801 } })).toEqual([{ path: "/auth/sessionTtlSeconds", message: "must be <= 604800" }]);
    expect(check({ ...minimal(), auth: { quorum: { ttlSeconds: 0, operations: { DeleteKey: 0, ShareKey: 33 } } } })).toEqual(
      expect.arrayContaining([
        { path: "/auth/quorum/ttlSeconds", message: "must be >= 1" },
        { path: "/auth/quorum/operations/DeleteKey", message: "must be >= 1" },
        { path: "/auth/quorum/operations/ShareKey", message: "must be <= 32" },
      ]),
    );
    expect(check({ ...minimal(), audit: { fsync: "never" } })).toEqual([{ path: "/audit/fsync", message: "must be one of always, changes" }]);
    expect(check({ ...minimal(), audit: { file: "" } })[0]!.path).toBe("/audit/file");
    expect(check({ ...minimal(), auth: { firstOfficer: "two words" } })[0]!.path).toBe("/auth/firstOfficer");
    expect(check({ ...minimal(), auth: { loginRateLimit: { burst: 0, perSecond: 0, maxPeers: 0 } } })).toEqual([
      { path: "/auth/loginRateLimit/burst", message: "must be >= 1" },
      { path: "/auth/loginRateLimit/perSecond", message: "must be > 0" },
      { path: "/auth/loginRateLimit/maxPeers", message: "must be >= 1" },
    ]);
    expect(check({ ...minimal(), auth: { hashLane: { concurrency: 65, maxQueue: -1 } } })).toEqual([
      { path: "/auth/hashLane/concurrency", message: "must be <= 64" },
      { path: "/auth/hashLane/maxQueue", message: "must be >= 0" },
    ]);
    expect(check({ ...minimal(), auth: { loginRateLimit: { perMinute: 3 } } })[0]!.path).toBe("/auth/loginRateLimit/perMinute");
    expect(check({ ...minimal(), auth: { hashLane: { concurrency: 1.5 } } })).toEqual([{ path: "/auth/hashLane/concurrency", message: "must be integer" }]);
  });

  it("refuses wrong types and unknown keys with their paths", () => {
    expect(check({ ...minimal(), auth: { sessionTtlSeconds: "3600" } })).toEqual([{ path: "/auth/sessionTtlSeconds", message: "must be integer" }]);
    expect(check({ ...minimal(), auth: { maxFailedLogins: 2.5 } })).toEqual([{ path: "/auth/maxFailedLogins", message: "must be integer" }]);
    expect(check({ ...minimal(), auth: { quorum: { operations: { DeleteUser: "2" } } } })).toEqual([
      { path: "/auth/quorum/operations/DeleteUser", message: "must be integer" },
    ]);
    expect(check({ ...minimal(), auth: { firstOfficer: 7 } })).toEqual([{ path: "/auth/firstOfficer", message: "must be string" }]);
    expect(check({ ...minimal(), audit: { file: 1 } })).toEqual([{ path: "/audit/file", message: "must be string" }]);
    expect(check({ ...minimal(), audit: { fsync: true } })).toContainEqual({ path: "/audit/fsync", message: "must be string" });
    expect(check({ ...minimal(), auth: [] })).toEqual([{ path: "/auth", message: "must be object" }]);
    expect(check({ ...minimal(), audit: "changes" })).toEqual([{ path: "/audit", message: "must be object" }]);
    expect(check({ ...minimal(), auth: { sessionTtl: 60 } })[0]!.path).toBe("/auth/sessionTtl");
    expect(check({ ...minimal(), audit: { sync: "always" } })[0]!.path).toBe("/audit/sync");
  });

  it("reports auth and audit problems together with the others", () => {
    const problems = problemsOf(() =>
      loadConfig({ env, overrides: { ...minimal(), device: { poolSize: 0 }, auth: { maxFailedLogins: 0, quorum: { operations: { Nope: 2 } } }, audit: { fsync: "never" } } }),
    );
    expect(problems.map((p) => p.path).sort()).toEqual(
      ["/audit/fsync", "/auth/maxFailedLogins", "/auth/quorum/operations/Nope", "/device/poolSize"].sort(),
    );
  });

  it("shows auth and audit in describeConfig and JSON, with no secret", () => {
    const config = loadConfig({
      env,
      overrides: { ...minimal(), auth: { quorum: { operations: { DeleteKey: 2 } } }, audit: { file: join(dir, "a.log") } },
    });
    const described = describeConfig(config);
    expect(described.auth).toEqual({
      sessionTtlMs: 3_600_000,
      maxFailedLogins: 5,
      firstOfficer: "admin",
      quorumTtlMs: 600_000,
      quorum: { DeleteKey: 2 },
      loginRateLimit: { burst: 30, perSecond: 10, maxPeers: 10_000 },
      hashLane: { concurrency: 2, maxQueue: 64 },
    });
    expect(described.audit).toEqual({ file: join(dir, "a.log"), fsync: "changes" });
    expect(described.auth).not.toBe(config.auth);
    expect(described.auth.quorum).not.toBe(config.auth.quorum);
    const json = JSON.parse(JSON.stringify(config));
    expect(json.auth).toEqual(described.auth);
    expect(json.audit).toEqual(described.audit);
    for (const text of [JSON.stringify(described), JSON.stringify(config), inspect(config, { depth: 10 })]) expect(text).not.toContain(SECRET);
    // The sections carry settings only: no password, token or PIN field.
    expect(JSON.stringify({ auth: described.auth, audit: described.audit })).not.toMatch(/password|token|pin|secret/i);
  });

  it("is frozen like the rest of the config", () => {
    const config = compileConfig({ ...minimal(), auth: { quorum: { operations: { DeleteUser: 2 } } } }, { env });
    expect(Object.isFrozen(config.auth)).toBe(true);
    expect(Object.isFrozen(config.auth.quorum)).toBe(true);
    expect(Object.isFrozen(config.audit)).toBe(true);
    expect(() => {
      (config.auth.quorum as Record<string, number>).DeleteKey = 1;
    }).toThrow(TypeError);
    expect(config.auth.quorum).toEqual({ DeleteUser: 2 });
  });

  it("loads the auth and audit sections of the shipped example", () => {
    const profiles = findProfileDir({})!;
    const certs = join(dir, "certs");
    execFileSync("bash", [join(__dirname, "../../scripts/dev-ca.sh"), certs], { stdio: "pipe" });
    const tls = { cert: join(certs, "server.pem"), key: join(certs, "server.key"), ca: join(certs, "ca.pem") };
    const example = loadConfig({ file: join(profiles, "hsmd.example.json"), env, overrides: { tls } });
    expect(example.auth).toEqual({
      sessionTtlMs: 3_600_000,
      maxFailedLogins: 5,
      firstOfficer: "admin",
      quorumTtlMs: 600_000,
      quorum: { DeleteUser: 2, ResetPassword: 2 },
      loginRateLimit: { burst: 30, perSecond: 10, maxPeers: 10_000 },
      hashLane: { concurrency: 2, maxQueue: 64 },
    });
    expect(example.audit).toEqual({ file: "/var/log/hsmd/audit.log", fsync: "changes" });
  });
});

describe("cluster", () => {
  const check = (doc: unknown) => validateConfig(doc, { env });
  const etcd = (extra: Record<string, unknown> = {}) => ({ name: "prod", etcd: { endpoints: ["10.0.0.1:2379", "etcd-2.internal:2379", "[::1]:2379"], ...extra } });
  /** PEM-shaped files: the config reads them, the TLS handshake is what checks them. */
  const writePems = (sub = "etcd") => {
    mkdirSync(join(dir, sub), { recursive: true });
    const pem = (label: string) => `-----BEGIN ${label}-----\n${Buffer.from(`${sub}-${label}`).toString("base64")}\n-----END ${label}-----\n`;
    writeFileSync(join(dir, sub, "ca.pem"), pem("CERTIFICATE"));
    writeFileSync(join(dir, sub, "client.pem"), pem("CERTIFICATE"));
    writeFileSync(join(dir, sub, "client.key"), pem("PRIVATE KEY"), { mode: 0o600 });
    return { ca: join(dir, sub, "ca.pem"), cert: join(dir, sub, "client.pem"), key: join(dir, sub, "client.key") };
  };

  it("is null when the section is absent: a single node on the embedded store", () => {
    expect(loadConfig({ file: writeConfig(minimal()), env }).cluster).toBeNull();
    expect(describeConfig(loadConfig({ file: writeConfig(minimal()), env })).cluster).toBeNull();
  });

  it("resolves the defaults: http:// endpoints, advertise = listen.grpc, minNodes 1, joins wait 10 minutes", () => {
    const config = loadConfig({ file: writeConfig({ ...minimal(), listen: { grpc: "127.0.0.1:7451" }, cluster: etcd() }), env });
    expect(config.cluster).toEqual({
      name: "prod",
      endpoints: ["http://10.0.0.1:2379", "http://etcd-2.internal:2379", "http://[::1]:2379"],
      tls: null,
      advertise: "127.0.0.1:7451",
      minNodes: 1,
      joinTtlMs: 600_000,
    });
    // The default listen address when listen.grpc is absent too.
    expect(loadConfig({ env, overrides: { ...minimal(), cluster: etcd() } }).cluster!.advertise).toBe("127.0.0.1:7443");
  });

  it("takes advertise, minNodes and joinTtlSeconds as given", () => {
    const config = loadConfig({ env, overrides: { ...minimal(), cluster: { ...etcd(), advertise: "hsm1.internal:7443", minNodes: 2, joinTtlSeconds: 60 } } });
    expect(config.cluster).toMatchObject({ advertise: "hsm1.internal:7443", minNodes: 2, joinTtlMs: 60_000 });
    const edges = loadConfig({ env, overrides: { ...minimal(), cluster: { ...etcd(), minNodes: 64, joinTtlSeconds: 86400 } } });
    expect(edges.cluster).toMatchObject({ minNodes: 64, joinTtlMs: 86_400_000 });
    expect(loadConfig({ env, overrides: { ...minimal(), cluster: { ...etcd(), joinTtlSeconds: 10 } } }).cluster!.joinTtlMs).toBe(10_000);
  });

  it("reads the etcd TLS files (relative to the config file) and dials https://", () => {
    const files = writePems();
    const config = loadConfig({ file: writeConfig({ ...minimal(), cluster: etcd({ tls: { ca: "etcd/ca.pem", cert: "etcd/client.pem", key: "etcd/client.key" } }) }), env });
    expect(config.cluster!.endpoints).toEqual(["https://10.0.0.1:2379", "https://etcd-2.internal:2379", "https://[::1]:2379"]);
    const tls = config.cluster!.tls!;
    expect(Buffer.isBuffer(tls.ca)).toBe(true);
    expect(tls.ca!.toString()).toBe(readFileSync(files.ca, "utf8"));
    expect(tls.cert!.toString()).toBe(readFileSync(files.cert, "utf8"));
    expect(tls.key!.toString()).toBe(readFileSync(files.key, "utf8"));
  });

  it("accepts a CA alone (server-authenticated TLS, no client certificate)", () => {
    const files = writePems();
    const config = loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: { ca: files.ca } }) } });
    expect(config.cluster!.endpoints[0]).toBe("https://10.0.0.1:2379");
    expect(Object.keys(config.cluster!.tls!)).toEqual(["ca"]);
  });

  it("refuses a TLS file it cannot read, naming the field and the path", () => {
    const files = writePems();
    const missing = join(dir, "nope", "ca.pem");
    const problems = problemsOf(() => loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: { ca: missing, cert: files.cert, key: files.key } }) } }));
    expect(problems).toEqual([{ path: "/cluster/etcd/tls/ca", message: `cannot read ${missing}: ENOENT` }]);
    // A relative path is reported resolved against the config file's directory.
    const rel = problemsOf(() => loadConfig({ file: writeConfig({ ...minimal(), cluster: etcd({ tls: { ca: "etcd/ca.pem", cert: "etcd/client.pem", key: "missing.key" } }) }), env }));
    expect(rel).toEqual([{ path: "/cluster/etcd/tls/key", message: `cannot read ${join(dir, "missing.key")}: ENOENT` }]);
    // A directory is not a file.
    expect(problemsOf(() => loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: { ca: dir } }) } }))).toEqual([
      { path: "/cluster/etcd/tls/ca", message: `cannot read ${dir}: EISDIR` },
    ]);
  });

  it("refuses a client certificate without its key, and a key without its certificate", () => {
    const files = writePems();
    const both = { path: "/cluster/etcd/tls", message: "must have both 'cert' and 'key', or neither" };
    expect(check({ ...minimal(), cluster: etcd({ tls: { ca: files.ca, cert: files.cert } }) })).toEqual([both]);
    expect(check({ ...minimal(), cluster: etcd({ tls: { key: files.key } }) })).toEqual([both]);
  });

  it("refuses endpoints that are not host:port", () => {
    for (const bad of ["http://10.0.0.1:2379", "10.0.0.1", "10.0.0.1:65536", ":2379", "etcd 1:2379", "::1:2379"]) {
      expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: ["10.0.0.2:2379", bad] } } }), bad).toEqual([
        { path: "/cluster/etcd/endpoints/1", message: "must be host:port" },
      ]);
    }
    expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: [] } } })).toEqual([{ path: "/cluster/etcd/endpoints", message: "must NOT have fewer than 1 items" }]);
    expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: "10.0.0.1:2379" } } })).toEqual([{ path: "/cluster/etcd/endpoints", message: "must be array" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), advertise: "hsm1.internal" } })[0]!.path).toBe("/cluster/advertise");
  });

  it("refuses unknown keys, missing required ones and out-of-range values", () => {
    expect(check({ ...minimal(), cluster: { ...etcd(), minNode: 2 } })).toEqual([
      { path: "/cluster/minNode", message: expect.stringContaining("is not a known property (did you mean 'minNodes'?)") },
    ]);
    expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoint: ["10.0.0.1:2379"] } } }).map((p) => p.path).sort()).toEqual(["/cluster/etcd/endpoint", "/cluster/etcd/endpoints"]);
    expect(check({ ...minimal(), cluster: etcd({ tls: { ca: "x", certificate: "y" } }) })[0]!.path).toBe("/cluster/etcd/tls/certificate");
    expect(check({ ...minimal(), cluster: { etcd: etcd().etcd } })).toEqual([{ path: "/cluster/name", message: "is required" }]);
    expect(check({ ...minimal(), cluster: { name: "prod" } })).toEqual([{ path: "/cluster/etcd", message: "is required" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), name: "-prod" } })[0]!.path).toBe("/cluster/name");
    expect(check({ ...minimal(), cluster: { ...etcd(), minNodes: 0 } })).toEqual([{ path: "/cluster/minNodes", message: "must be >= 1" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), minNodes: 65 } })).toEqual([{ path: "/cluster/minNodes", message: "must be <= 64" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), minNodes: 1.5 } })).toEqual([{ path: "/cluster/minNodes", message: "must be integer" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), joinTtlSeconds: 9 } })).toEqual([{ path: "/cluster/joinTtlSeconds", message: "must be >= 10" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), joinTtlSeconds: 86401 } })).toEqual([{ path: "/cluster/joinTtlSeconds", message: "must be <= 86400" }]);
    expect(check({ ...minimal(), cluster: true })).toEqual([{ path: "/cluster", message: "must be object" }]);
  });

  it("reports cluster problems together with the others", () => {
    const problems = problemsOf(() => loadConfig({ env, overrides: { ...minimal(), device: { poolSize: 0 }, cluster: { ...etcd(), minNodes: 0, joinTtlSeconds: 1 } } }));
    expect(problems.map((p) => p.path).sort()).toEqual(["/cluster/joinTtlSeconds", "/cluster/minNodes", "/device/poolSize"]);
  });

  it("redacts the TLS contents in describeConfig, JSON and inspect", () => {
    const files = writePems();
    const config = loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: files }) } });
    const described = describeConfig(config);
    expect(described.cluster).toEqual({
      name: "prod",
      endpoints: ["https://10.0.0.1:2379", "https://etcd-2.internal:2379", "https://[::1]:2379"],
      tls: { ca: "[redacted]", cert: "[redacted]", key: "[redacted]" },
      advertise: "127.0.0.1:7443",
      minNodes: 1,
      joinTtlMs: 600_000,
    });
    const onlyCa = describeConfig(loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: { ca: files.ca } }) } }));
    expect(onlyCa.cluster!.tls).toEqual({ ca: "[redacted]", cert: undefined, key: undefined });
    expect(JSON.parse(JSON.stringify(config)).cluster).toEqual(JSON.parse(JSON.stringify(described.cluster)));
    const key = readFileSync(files.key, "utf8");
    const body = key.split("\n")[1]!;
    for (const text of [JSON.stringify(described), JSON.stringify(config), inspect(config, { depth: 10 })]) {
      expect(text).not.toContain(body);
      expect(text).not.toContain("PRIVATE KEY");
      expect(text).not.toContain(SECRET);
    }
  });

  it("is frozen like the rest of the config", () => {
    const config = compileConfig({ ...minimal(), cluster: etcd() }, { env });
    expect(Object.isFrozen(config.cluster)).toBe(true);
    expect(Object.isFrozen(config.cluster!.endpoints)).toBe(true);
    expect(() => {
      (config.cluster!.endpoints as string[]).push("http://x:1");
    }).toThrow(TypeError);
  });

  it("accepts ApproveJoin in auth.quorum.operations", () => {
    const config = loadConfig({ env, overrides: { ...minimal(), cluster: etcd(), auth: { quorum: { operations: { ApproveJoin: 2 } } } } });
    expect(config.auth.quorum).toEqual({ ApproveJoin: 2 });
    expect(check({ ...minimal(), auth: { quorum: { operations: { ApproveJoin: 0 } } } })).toEqual([{ path: "/auth/quorum/operations/ApproveJoin", message: "must be >= 1" }]);
    expect(check({ ...minimal(), auth: { quorum: { operations: { Foo: 2 } } } })[0]!.message).toContain("ApproveJoin");
    expect(check({ ...minimal(), auth: { quorum: { operations: { RemoveNode: 2 } } } })[0]!.path).toBe("/auth/quorum/operations/RemoveNode");
  });

  it("loads the shipped cluster example", () => {
    const profiles = findProfileDir({})!;
    // The example names production paths (/etc/hsmd/…): point them at dev certificates and temp files.
    const certs = join(dir, "certs");
    execFileSync("bash", [join(__dirname, "../../scripts/dev-ca.sh"), certs], { stdio: "pipe" });
    const tls = { cert: join(certs, "server.pem"), key: join(certs, "server.key"), ca: join(certs, "ca.pem") };
    const etcdTls = { ca: join(certs, "ca.pem"), cert: join(certs, "client.pem"), key: join(certs, "client.key") };
    const example = loadConfig({
      file: join(profiles, "cluster.example.json"),
      env,
      overrides: { tls, device: { pin: { env: "HSMD_PIN" } }, cluster: { etcd: { tls: etcdTls } } },
    });
    expect(example.node.id).toBe("hsm1");
    expect(example.cluster).toMatchObject({
      name: "prod",
      endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"],
      advertise: "hsm1.internal:7443",
      minNodes: 1,
      joinTtlMs: 600_000,
    });
    expect(example.cluster!.tls!.cert!.toString()).toContain("BEGIN CERTIFICATE");
    expect(example.auth.quorum).toEqual({ ApproveJoin: 2, DeleteUser: 2 });
    expect(example.tls).toEqual({ ...tls, requireClientCert: true });
    // As shipped, the files it names are read at load: where they do not exist, each is reported.
    const asShipped = problemsOf(() => loadConfig({ file: join(profiles, "cluster.example.json"), env, overrides: { tls, device: { pin: { env: "HSMD_PIN" } } } }));
    expect(asShipped.map((p) => p.path).sort()).toEqual(["/cluster/etcd/tls/ca", "/cluster/etcd/tls/cert", "/cluster/etcd/tls/key"]);
  });
});
