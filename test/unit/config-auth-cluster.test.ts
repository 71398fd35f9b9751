import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { compileConfig, describeConfig, findProfileDir, loadConfig, validateConfig } from "../../src/config";
import { dir, env, minimal, problemsOf, SECRET, useConfigDir, writeConfig } from "../helpers/config";

// The auth, audit and cluster sections of the configuration (the rest: config.test.ts).
useConfigDir();

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
    expect(problemsOf(() => loadConfig({ env, overrides: { ...minimal(), auth: { quorum: { operations: { deleteUser: 2 } } } } })).map((p) => p.path)).toEqual(["/auth/quorum/operations/deleteUser"]);
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
    expect(check({ ...minimal(), auth: { quorum: { operations: { DeleteUser: "2" } } } })).toEqual([{ path: "/auth/quorum/operations/DeleteUser", message: "must be integer" }]);
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
    expect(problems.map((p) => p.path).sort()).toEqual(["/audit/fsync", "/auth/maxFailedLogins", "/auth/quorum/operations/Nope", "/device/poolSize"].sort());
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
    expect(problemsOf(() => loadConfig({ env, overrides: { ...minimal(), cluster: etcd({ tls: { ca: dir } }) } }))).toEqual([{ path: "/cluster/etcd/tls/ca", message: `cannot read ${dir}: EISDIR` }]);
  });

  it("refuses a client certificate without its key, and a key without its certificate", () => {
    const files = writePems();
    const both = { path: "/cluster/etcd/tls", message: "must have both 'cert' and 'key', or neither" };
    expect(check({ ...minimal(), cluster: etcd({ tls: { ca: files.ca, cert: files.cert } }) })).toEqual([both]);
    expect(check({ ...minimal(), cluster: etcd({ tls: { key: files.key } }) })).toEqual([both]);
  });

  it("refuses endpoints that are not host:port", () => {
    for (const bad of ["http://10.0.0.1:2379", "10.0.0.1", "10.0.0.1:65536", ":2379", "etcd 1:2379", "::1:2379"]) {
      expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: ["10.0.0.2:2379", bad] } } }), bad).toEqual([{ path: "/cluster/etcd/endpoints/1", message: "must be host:port" }]);
    }
    expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: [] } } })).toEqual([{ path: "/cluster/etcd/endpoints", message: "must NOT have fewer than 1 items" }]);
    expect(check({ ...minimal(), cluster: { name: "prod", etcd: { endpoints: "10.0.0.1:2379" } } })).toEqual([{ path: "/cluster/etcd/endpoints", message: "must be array" }]);
    expect(check({ ...minimal(), cluster: { ...etcd(), advertise: "hsm1.internal" } })[0]!.path).toBe("/cluster/advertise");
  });

  it("refuses unknown keys, missing required ones and out-of-range values", () => {
    expect(check({ ...minimal(), cluster: { ...etcd(), minNode: 2 } })).toEqual([{ path: "/cluster/minNode", message: expect.stringContaining("is not a known property (did you mean 'minNodes'?)") }]);
    expect(
      check({ ...minimal(), cluster: { name: "prod", etcd: { endpoint: ["10.0.0.1:2379"] } } })
        .map((p) => p.path)
        .sort(),
    ).toEqual(["/cluster/etcd/endpoint", "/cluster/etcd/endpoints"]);
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
