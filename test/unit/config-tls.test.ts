/**
 * The transport rules of the config: TLS unless dev mode on loopback; the TLS files read and checked
 * at compile time, each problem naming the file and the reason, never the key's contents.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, TLS_REQUIRED, describeConfig, describeTransport, isLoopbackHost, loadConfig, validateConfig, type ConfigProblem } from "../../src/config";
import { makeDevCertificates, type DevCertificates } from "../helpers/daemon";

const env = { HSMD_PIN: "pin-unused-here" };
let dir: string;
let certs: DevCertificates;
let other: DevCertificates;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-config-tls-"));
  certs = makeDevCertificates(join(dir, "certs"));
  other = makeDevCertificates(join(dir, "other"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const base = () => ({ node: { dataDir: join(dir, "data") } });
const check = (doc: unknown) => validateConfig(doc, { env });
const tlsOf = (c: DevCertificates) => ({ cert: c.serverCert, key: c.serverKey });

function problemsOf(fn: () => unknown): ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error("expected a ConfigError");
}

describe("the transport rule", () => {
  it("without tls and without devMode: a problem at /tls, and nothing else", () => {
    expect(check(base())).toEqual([{ path: "/tls", message: TLS_REQUIRED }]);
    expect(check({ ...base(), devMode: false })).toEqual([{ path: "/tls", message: TLS_REQUIRED }]);
    expect(TLS_REQUIRED).toBe("required unless devMode is true (plaintext gRPC is for loopback development only)");
    const err = problemsOf(() => loadConfig({ env, overrides: base() }));
    expect(err).toEqual([{ path: "/tls", message: TLS_REQUIRED }]);
  });

  it("devMode without tls: both listen addresses must be loopback", () => {
    for (const grpc of ["127.0.0.1:0", "127.9.8.7:1", "[::1]:0", "localhost:0", "LOCALHOST:5"]) {
      expect(check({ ...base(), devMode: true, listen: { grpc } })).toEqual([]);
    }
    for (const grpc of ["0.0.0.0:7443", "[::]:7443", "10.0.0.1:7443", "hsmd.internal:7443", "128.0.0.1:1", "[::2]:1"]) {
      const problems = check({ ...base(), devMode: true, listen: { grpc } });
      expect(problems).toEqual([{ path: "/listen/grpc", message: expect.stringContaining("must be a loopback address") }]);
    }
    expect(check({ ...base(), devMode: true, listen: { admin: "0.0.0.0:7480" } })).toEqual([
      { path: "/listen/admin", message: expect.stringContaining("must be a loopback address (127.0.0.0/8, ::1, localhost) in devMode without /tls") },
    ]);
    const config = loadConfig({ env, overrides: { ...base(), devMode: true } });
    expect(config.tls).toBeNull();
    expect(config.devMode).toBe(true);
    expect(describeTransport(config)).toBe("plaintext, DEV MODE: loopback only");
  });

  it("isLoopbackHost", () => {
    for (const h of ["127.0.0.1", "127.255.255.254", "::1", "localhost", "::ffff:127.0.0.1"]) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ["0.0.0.0", "::", "128.0.0.1", "10.1.2.3", "localhost.example", "example.com", "999.0.0.1", "::2"]) expect(isLoopbackHost(h), h).toBe(false);
  });

  it("devMode must be a boolean; requireClientCert must be a boolean; tls needs cert and key", () => {
    expect(check({ ...base(), devMode: "yes" })).toEqual([{ path: "/devMode", message: "must be boolean" }]);
    expect(check({ ...base(), tls: { ...tlsOf(certs), requireClientCert: "yes" } })).toEqual([{ path: "/tls/requireClientCert", message: "must be boolean" }]);
    expect(check({ ...base(), tls: { cert: certs.serverCert } })).toEqual([{ path: "/tls/key", message: "is required" }]);
    expect(check({ ...base(), tls: { ...tlsOf(certs), caFile: "x" } })[0]!.path).toBe("/tls/caFile");
  });
});

describe("tls", () => {
  it("TLS on any address; paths resolved against the config file's directory; shown as paths only", () => {
    const confDir = join(dir, "conf");
    mkdirSync(join(confDir, "tls"), { recursive: true });
    for (const f of ["server.pem", "server.key", "ca.pem"]) copyFileSync(join(certs.dir, f), join(confDir, "tls", f));
    const file = join(confDir, "hsmd.json");
    writeFileSync(file, JSON.stringify({ ...base(), listen: { grpc: "0.0.0.0:7443" }, tls: { cert: "tls/server.pem", key: "tls/server.key", ca: "tls/ca.pem", requireClientCert: true } }));
    const config = loadConfig({ file, env });
    expect(config.tls).toEqual({ cert: join(confDir, "tls/server.pem"), key: join(confDir, "tls/server.key"), ca: join(confDir, "tls/ca.pem"), requireClientCert: true });
    expect(config.devMode).toBe(false);
    expect(describeTransport(config)).toBe("TLS, client certificates required");
    expect(Object.isFrozen(config.tls)).toBe(true);
    const keyPem = readFileSync(certs.serverKey, "utf8");
    const keyBody = keyPem.split("\n")[1]!;
    for (const shown of [JSON.stringify(config), inspect(config, { depth: 10 }), JSON.stringify(describeConfig(config))]) {
      expect(shown).toContain(join(confDir, "tls/server.key"));
      expect(shown).not.toContain(keyBody);
    }
    const plain = loadConfig({ env, overrides: { ...base(), tls: tlsOf(certs) } });
    expect(plain.tls).toEqual({ cert: certs.serverCert, key: certs.serverKey, ca: null, requireClientCert: false });
    expect(describeTransport(plain)).toBe("TLS");
  });

  it("requireClientCert needs ca", () => {
    expect(check({ ...base(), tls: { ...tlsOf(certs), requireClientCert: true } })).toEqual([{ path: "/tls/requireClientCert", message: expect.stringContaining("needs /tls/ca") }]);
    expect(check({ ...base(), tls: { ...tlsOf(certs), ca: certs.ca, requireClientCert: true } })).toEqual([]);
  });

  it("a missing, unreadable or directory path: the path and the reason", () => {
    const missing = join(dir, "nope.pem");
    expect(check({ ...base(), tls: { ...tlsOf(certs), cert: missing } })).toEqual([{ path: "/tls/cert", message: `certificate file ${missing} does not exist` }]);
    expect(check({ ...base(), tls: { ...tlsOf(certs), key: dir } })).toEqual([{ path: "/tls/key", message: `private key file ${dir} is a directory` }]);
    expect(check({ ...base(), tls: { ...tlsOf(certs), ca: missing } })).toEqual([{ path: "/tls/ca", message: `CA file ${missing} does not exist` }]);
    if (process.getuid?.() !== 0) {
      const locked = join(dir, "locked.key");
      copyFileSync(certs.serverKey, locked);
      chmodSync(locked, 0o000);
      expect(check({ ...base(), tls: { ...tlsOf(certs), key: locked } })).toEqual([{ path: "/tls/key", message: `private key file ${locked} is not readable` }]);
    }
  });

  it("not PEM, encrypted, or a key that does not match: refused without the file's contents", () => {
    const garbage = join(dir, "garbage.pem");
    const marker = "SECRET-KEY-MATERIAL-0c9f";
    writeFileSync(garbage, `${marker}\n`);
    const onCert = check({ ...base(), tls: { ...tlsOf(certs), cert: garbage } });
    expect(onCert).toEqual([{ path: "/tls/cert", message: `certificate file ${garbage} is not PEM (expected -----BEGIN CERTIFICATE-----)` }]);
    const onKey = check({ ...base(), tls: { ...tlsOf(certs), key: garbage } });
    expect(onKey).toEqual([{ path: "/tls/key", message: expect.stringMatching(/^private key file .*garbage\.pem is not PEM/) }]);
    // A certificate given as the key, a key given as the certificate.
    expect(check({ ...base(), tls: { cert: certs.serverKey, key: certs.serverCert } }).map((p) => p.path)).toEqual(["/tls/cert", "/tls/key"]);
    // A damaged PEM block.
    const broken = join(dir, "broken.key");
    writeFileSync(broken, `-----BEGIN PRIVATE KEY-----\n${Buffer.from(marker).toString("base64")}\n-----END PRIVATE KEY-----\n`);
    const onBroken = check({ ...base(), tls: { ...tlsOf(certs), key: broken } });
    expect(onBroken).toEqual([{ path: "/tls/key", message: `private key file ${broken} holds a PEM private key that cannot be parsed` }]);
    // Encrypted with a passphrase.
    const encrypted = join(dir, "encrypted.key");
    execFileSync("openssl", ["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", certs.serverKey, "-out", encrypted, "-passout", "pass:x"], { stdio: "pipe" });
    expect(check({ ...base(), tls: { ...tlsOf(certs), key: encrypted } })).toEqual([{ path: "/tls/key", message: expect.stringContaining(`private key file ${encrypted} is encrypted`) }]);
    // The key of another certificate.
    expect(check({ ...base(), tls: { cert: certs.serverCert, key: other.serverKey } })).toEqual([
      { path: "/tls/key", message: `private key file ${other.serverKey} does not match the certificate in ${certs.serverCert}` },
    ]);
    // Nothing of any file's contents in the thrown error.
    const keyBody = readFileSync(certs.serverKey, "utf8").split("\n")[1]!;
    for (const tls of [
      { ...tlsOf(certs), key: garbage },
      { ...tlsOf(certs), key: broken },
      { cert: certs.serverKey, key: certs.serverKey },
      { cert: certs.serverCert, key: other.serverKey },
    ]) {
      let error: ConfigError | undefined;
      try {
        loadConfig({ env, overrides: { ...base(), tls } });
      } catch (e) {
        error = e as ConfigError;
      }
      expect(error).toBeInstanceOf(ConfigError);
      for (const shown of [error!.message, JSON.stringify(error!.problems), inspect(error)]) {
        expect(shown).not.toContain(marker);
        expect(shown).not.toContain(Buffer.from(marker).toString("base64"));
        expect(shown).not.toContain(keyBody);
      }
    }
  });
});
