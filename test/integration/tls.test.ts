/**
 * gRPC over TLS and mutual TLS against a real daemon (real SoftHSM2, real gRPC), with certificates
 * made by scripts/dev-ca.sh, plus a second, unrelated CA made the same way for the negative cases.
 * And the config rules that keep plaintext gRPC to dev mode on loopback.
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, TLS_REQUIRED, loadConfig } from "../../src/config";
import { Daemon } from "../../src/daemon";
import { HsmClient, HsmClientError, KeySpec, SigningAlgorithm, type HsmClientOptions } from "../../src/sdk";
import { makeDevCertificates, startTestDaemon, type DevCertificates, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";
import { createTempToken, SOFTHSM_MODULE, type TempToken } from "../helpers/softhsm";

let root: string;
let token: TempToken;
let dataDir: string;
let certs: DevCertificates;
let other: DevCertificates;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "hsmd-tls-"));
  certs = makeDevCertificates(join(root, "ca"), "tls-test-client");
  other = makeDevCertificates(join(root, "other-ca"));
  token = createTempToken();
  dataDir = join(root, "data");
});
afterAll(() => {
  token?.cleanup();
  rmSync(root, { recursive: true, force: true });
});

const pem = (file: string) => readFileSync(file);

/** Opens a client, runs `fn`, closes it. */
async function withClient<T>(endpoint: string, tls: HsmClientOptions["tls"], fn: (c: HsmClient) => Promise<T>): Promise<T> {
  const c = await userClient({ grpc: endpoint, dataDir }, "alice", { tls, defaultDeadlineMs: 10_000 });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** An EC P-256 key generated and used to sign through the daemon; the signature checked locally. */
async function generateAndSign(c: HsmClient): Promise<void> {
  const key = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "tls-signing" });
  const message = Buffer.from("over TLS");
  const { signature } = await c.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message });
  const { pem: publicPem } = await c.getPublicKey({ keyId: key.id });
  expect(verifySignature("sha256", message, createPublicKey(publicPem), signature)).toBe(true);
}

/** The code a call fails with, or "OK" when it succeeds. */
async function outcome(endpoint: string, tls: HsmClientOptions["tls"]): Promise<string> {
  try {
    await withClient(endpoint, tls, (c) => c.generateRandom({ length: 16 }));
    return "OK";
  } catch (e) {
    expect(e).toBeInstanceOf(HsmClientError);
    return (e as HsmClientError).codeName;
  }
}

describe("the dev certificates", () => {
  it("scripts/dev-ca.sh writes keys mode 600 and keeps existing files", () => {
    for (const key of [certs.caKey, certs.serverKey, certs.clientKey]) expect(statSync(key).mode & 0o777).toBe(0o600);
    const before = [certs.ca, certs.serverCert, certs.clientCert, certs.serverKey].map((f) => readFileSync(f, "utf8"));
    makeDevCertificates(certs.dir);
    expect([certs.ca, certs.serverCert, certs.clientCert, certs.serverKey].map((f) => readFileSync(f, "utf8"))).toEqual(before);
  });
});

describe("TLS", () => {
  let td: TestDaemon;
  beforeAll(async () => {
    td = await startTestDaemon({ token, dataDir, config: { devMode: false, tls: { cert: certs.serverCert, key: certs.serverKey } } });
  });
  afterAll(async () => {
    await td?.stop();
  });

  it("the SDK trusting the dev CA generates a key and signs, by IP and by name", async () => {
    await withClient(td.grpc, { ca: pem(certs.ca) }, generateAndSign);
    await withClient(`localhost:${td.daemon.grpcPort}`, { ca: pem(certs.ca) }, (c) => c.generateRandom({ length: 8 }));
  });

  it("the status says TLS", async () => {
    const status = (await (await fetch(`${td.admin}/v1/status`)).json()) as { transport: { grpc: string } };
    expect(status.transport.grpc).toBe("TLS");
  });

  it("a plaintext client is refused (UNAVAILABLE)", async () => {
    expect(await outcome(td.grpc, undefined)).toBe("UNAVAILABLE");
  });

  it("a client trusting another CA is refused (UNAVAILABLE)", async () => {
    expect(await outcome(td.grpc, { ca: pem(other.ca) })).toBe("UNAVAILABLE");
  });

  it("a client checking another name than the certificate's is refused", async () => {
    expect(await outcome(td.grpc, { ca: pem(certs.ca), serverNameOverride: "hsmd.example" })).toBe("UNAVAILABLE");
  });
});

describe("mutual TLS (requireClientCert)", () => {
  let td: TestDaemon;
  beforeAll(async () => {
    td = await startTestDaemon({
      token,
      dataDir,
      config: { devMode: false, tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.ca, requireClientCert: true } },
    });
  });
  afterAll(async () => {
    await td?.stop();
  });

  it("a client with a certificate from the configured CA works", async () => {
    await withClient(td.grpc, { ca: pem(certs.ca), cert: pem(certs.clientCert), key: pem(certs.clientKey) }, generateAndSign);
    const status = (await (await fetch(`${td.admin}/v1/status`)).json()) as { transport: { grpc: string } };
    expect(status.transport.grpc).toBe("TLS, client certificates required");
  });

  it("a client without a certificate is refused", async () => {
    expect(await outcome(td.grpc, { ca: pem(certs.ca) })).toBe("UNAVAILABLE");
  });

  it("a client with a certificate from another CA is refused", async () => {
    expect(await outcome(td.grpc, { ca: pem(certs.ca), cert: pem(other.clientCert), key: pem(other.clientKey) })).toBe("UNAVAILABLE");
  });

  it("a plaintext client is refused", async () => {
    expect(await outcome(td.grpc, undefined)).toBe("UNAVAILABLE");
  });
});

describe("config: plaintext only in dev mode on loopback", () => {
  const doc = (extra: object) => ({
    node: { id: "tls-config", dataDir },
    listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
    device: { profile: "softhsm2", module: SOFTHSM_MODULE, tokenLabel: token.label, pin: { env: "HSMD_TEST_PIN" } },
    ...extra,
  });
  const load = (extra: object) => loadConfig({ env: { ...process.env, HSMD_TEST_PIN: token.pin }, overrides: doc(extra) });
  const problems = (extra: object) => {
    try {
      load(extra);
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).message).not.toContain(token.pin);
      return (e as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
    }
    return [];
  };

  it("no tls and no devMode: ConfigError at /tls", () => {
    expect(problems({})).toEqual([`/tls: ${TLS_REQUIRED}`]);
    expect(problems({ devMode: false })).toEqual([`/tls: ${TLS_REQUIRED}`]);
  });

  it("devMode with a non-loopback listen address: ConfigError", () => {
    expect(problems({ devMode: true, listen: { grpc: "0.0.0.0:0", admin: "127.0.0.1:0" } })).toEqual([expect.stringMatching(/^\/listen\/grpc: must be a loopback address .* not 0\.0\.0\.0/)]);
    expect(problems({ devMode: true, listen: { grpc: "127.0.0.1:0", admin: "0.0.0.0:0" } })).toEqual([expect.stringMatching(/^\/listen\/admin: must be a loopback address/)]);
    expect(problems({ devMode: true })).toEqual([]);
  });

  it("requireClientCert without ca: ConfigError", () => {
    expect(problems({ tls: { cert: certs.serverCert, key: certs.serverKey, requireClientCert: true } })).toEqual([expect.stringMatching(/^\/tls\/requireClientCert: needs \/tls\/ca/)]);
  });

  it("an unreadable certificate path: ConfigError naming the path", () => {
    const missing = join(root, "no-such-dir", "server.pem");
    expect(problems({ tls: { cert: missing, key: certs.serverKey } })).toEqual([`/tls/cert: certificate file ${missing} does not exist`]);
    expect(problems({ tls: { cert: certs.dir, key: certs.serverKey } })).toEqual([`/tls/cert: certificate file ${certs.dir} is a directory`]);
  });

  it("a TLS file that became unreadable after the config was compiled: Daemon.start refuses with a ConfigError naming it", async () => {
    const copyDir = mkdtempSync(join(root, "later-"));
    const later = makeDevCertificates(copyDir);
    const config = load({ tls: { cert: later.serverCert, key: later.serverKey } });
    rmSync(later.serverKey);
    const err = await Daemon.start({ config, log: () => undefined }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toBe(`config: /tls/key: private key file ${later.serverKey} does not exist`);
  });
});
