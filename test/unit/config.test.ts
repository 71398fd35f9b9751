import { execFileSync } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { ConfigError, LIMIT_DEFAULTS, compileConfig, describeConfig, findProfileDir, loadConfig, validateConfig } from "../../src/config";
import { dir, env, minimal, problemsOf, SECRET, useConfigDir, writeConfig } from "../helpers/config";

// The configuration: defaults, profiles, problems, the PIN and the frozen result. The auth, audit and
// cluster sections: config-auth-cluster.test.ts.
useConfigDir();

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
      {
        path: "/limits",
        message: expect.stringMatching(/^maxBatchItems × \(maxPayloadBytes \+ 1024\) \+ 65536 = 10496065536 bytes is over 268435456, the largest message hsmd accepts: .*set maxMessageBytes/),
      },
    ]);
    expect(limits({ maxBatchItems: 10000, maxPayloadBytes: 1024 * 1024, maxMessageBytes: 64 * 1024 * 1024 }).maxMessageBytes).toBe(64 * 1024 * 1024);
  });

  it("reads profiles from HSMD_CONFIG_DIR", () => {
    const custom = join(dir, "profiles");
    mkdirSync(custom);
    cpSync(join(findProfileDir({})!, "luna.json"), join(custom, "luna.json"));
    writeFileSync(
      join(custom, "softhsm2.json"),
      JSON.stringify({
        module: "/custom.so",
        tokenLabel: "t",
        pin: { env: "OTHER_PIN" },
        poolSize: 3,
        quirks: {
          maxObjects: 10,
          maxSessions: null,
          aesKeyBits: [256],
          maxRsaBits: 2048,
          sessionObjectsOnly: true,
          sessionCopiesForCrypto: false,
          supportsEd25519: false,
          supportsAesKeyWrapPad: true,
        },
      }),
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
    expect(check({ ...minimal(), device: { profile: "thales" } })).toEqual([{ path: "/device/profile", message: "must be one of softhsm2, yubihsm2, luna, generic" }]);
  });

  it("rejects out-of-range values", () => {
    expect(check({ ...minimal(), device: { poolSize: 0 } })).toEqual([{ path: "/device/poolSize", message: "must be >= 1" }]);
    expect(check({ ...minimal(), device: { poolSize: 257 } })).toEqual([{ path: "/device/poolSize", message: "must be <= 256" }]);
    expect(check({ ...minimal(), device: { slot: -1 } })).toEqual([{ path: "/device/slot", message: "must be >= 0" }]);
    expect(check({ ...minimal(), limits: { maxRandomBytes: 0 } })).toEqual([{ path: "/limits/maxRandomBytes", message: "must be >= 1" }]);
    expect(check({ ...minimal(), limits: { maxOaepLabelBytes: 65537 } })).toEqual([{ path: "/limits/maxOaepLabelBytes", message: "must be <= 65536" }]);
    expect(loadConfig({ file: writeConfig({ ...minimal(), limits: { maxOaepLabelBytes: 1 } }), env }).limits.maxOaepLabelBytes).toBe(1);
    expect(check({ ...minimal(), device: { profile: "yubihsm2", poolSize: 17 } })).toEqual([{ path: "/device/poolSize", message: "must be <= 16 (the device's quirks.maxSessions)" }]);
    expect(check({ ...minimal(), device: { quirks: { aesKeyBits: [100] } } })).toEqual([{ path: "/device/quirks/aesKeyBits/0", message: "must be one of 128, 192, 256" }]);
  });

  it("rejects bad listen addresses", () => {
    const message = "must be host:port with a port in 0..65535 (0 = any free port)";
    for (const grpc of ["localhost", "host:65536", ":80", "a b:1", "host:-1", "::1:80"]) {
      expect(check({ ...minimal(), listen: { grpc } })).toEqual([{ path: "/listen/grpc", message }]);
    }
    expect(check({ ...minimal(), listen: { grpc: "127.0.0.1:9", admin: "127.0.0.1:9" } })).toEqual([{ path: "/listen/admin", message: "must differ from /listen/grpc" }]);
  });

  it("requires node.dataDir and a module, token selector and PIN after merging", () => {
    expect(check({ devMode: true })).toEqual([{ path: "/node", message: "is required" }]);
    expect(check({ node: {}, devMode: true })).toEqual([{ path: "/node/dataDir", message: "is required" }]);
    expect(check({ ...minimal(), device: { profile: "generic" } })).toEqual([
      { path: "/device", message: "must have property 'tokenLabel' or 'slot'" },
      { path: "/device/module", message: "is required (the generic profile names no module)" },
    ]);
    expect(check({ ...minimal(), device: { tokenLabel: "a", slot: 0 } })).toEqual([{ path: "/device", message: "must have only one of 'tokenLabel' or 'slot'" }]);
  });

  it("requires exactly one PIN source, never an inline PIN", () => {
    expect(check({ ...minimal(), device: { pin: {} } })).toEqual([{ path: "/device/pin", message: "must have property 'env' or 'file'" }]);
    expect(check({ ...minimal(), device: { pin: { env: "A", file: "/b" } } })).toEqual([{ path: "/device/pin", message: "must have only one of 'env' or 'file'" }]);
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
    expect(paths).toEqual(expect.arrayContaining(["/node/dataDir", "/listen/grpc", "/device/poolSize", "/device/colour", "/limits/maxPayload", "/limits/maxPageSize", "/device/pin/env"]));
    expect(error!.problems).toHaveLength(7);
    const lines = error!.message.split("\n");
    expect(lines).toHaveLength(7);
    expect(lines).toContain("config: /device/poolSize: must be integer");
    expect(lines).toContain("config: /device/pin/env: environment variable HSMD_PIN is not set");
    expect(lines.every((l) => l.startsWith("config: /"))).toBe(true);
  });

  it("reports unreadable and malformed config files", () => {
    expect(problemsOf(() => loadConfig({ file: join(dir, "missing.json") }))).toEqual([{ path: "/", message: `cannot read ${join(dir, "missing.json")} (ENOENT)` }]);
    const bad = writeConfig(`{\n  "node": { "dataDir": "${SECRET}", }\n}`);
    const [problem] = problemsOf(() => loadConfig({ file: bad }));
    expect(problem!.message).toMatch(/is not valid JSON/);
    expect(problem!.message).not.toContain(SECRET);
  });
});

describe("PIN", () => {
  it("reads it from the environment", () => {
    expect(loadConfig({ env, overrides: minimal() }).device.pin).toBe(SECRET);
    expect(problemsOf(() => loadConfig({ env: { HSMD_PIN: "" }, overrides: minimal() }))).toEqual([{ path: "/device/pin/env", message: "environment variable HSMD_PIN is empty" }]);
    expect(problemsOf(() => loadConfig({ env: {}, overrides: minimal() }))).toEqual([{ path: "/device/pin/env", message: "environment variable HSMD_PIN is not set" }]);
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
