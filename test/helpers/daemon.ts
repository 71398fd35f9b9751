import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config";
import { mergeConfig } from "../../src/config/merge";
import { Daemon } from "../../src/daemon";
import { createTempToken, SOFTHSM_MODULE, type TempToken } from "./softhsm";

export interface TestDaemon {
  daemon: Daemon;
  token: TempToken;
  dataDir: string;
  /** host:port of the gRPC server */
  grpc: string;
  /** base URL of the admin server */
  admin: string;
  /** Stops the daemon (keeps token and data: for restart tests). */
  stop(): Promise<void>;
  /** Starts a new daemon on the same token and data directory. */
  restart(): Promise<TestDaemon>;
  /** Stops and removes everything. */
  cleanup(): Promise<void>;
}

/**
 * Config for a daemon on a temp token, bound to free loopback ports, in dev mode (plaintext gRPC on
 * loopback). `extra` is deep-merged over it last (e.g. `{ devMode: false, tls: { cert, key } }`).
 */
export function testConfig(token: TempToken, dataDir: string, limits: Record<string, number> = {}, extra: object = {}) {
  return loadConfig({
    env: { ...process.env, HSMD_TEST_PIN: token.pin },
    overrides: mergeConfig(
      {
        node: { id: "test-node", dataDir },
        listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
        devMode: true,
        device: { profile: "softhsm2", module: SOFTHSM_MODULE, tokenLabel: token.label, pin: { env: "HSMD_TEST_PIN" }, poolSize: 4 },
        limits,
      },
      extra,
    ) as object,
  });
}

/**
 * A real daemon, in this process, on a fresh SoftHSM2 token and data directory (initialized).
 * `config` is deep-merged over {@link testConfig}'s document (TLS tests: `{ devMode: false, tls: {...} }`).
 */
export async function startTestDaemon(opts: { limits?: Record<string, number>; token?: TempToken; dataDir?: string; config?: object } = {}): Promise<TestDaemon> {
  const token = opts.token ?? createTempToken();
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), "hsmd-data-"));
  const config = testConfig(token, dataDir, opts.limits, opts.config);
  const daemon = await Daemon.start({
    config,
    init: true,
    log: (m: string) => {
      if (m.includes("internal error")) process.stderr.write(`DAEMONLOG ${m}\n`);
    },
  });
  const td: TestDaemon = {
    daemon,
    token,
    dataDir,
    grpc: `127.0.0.1:${daemon.grpcPort}`,
    admin: `http://127.0.0.1:${daemon.adminPort}`,
    stop: () => daemon.stop(),
    restart: async () => {
      await daemon.stop();
      return startTestDaemon({ ...opts, token, dataDir });
    },
    cleanup: async () => {
      await daemon.stop();
      token.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return td;
}

/** Paths of the files `scripts/dev-ca.sh DIR` writes. */
export interface DevCertificates {
  dir: string;
  ca: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** Runs `scripts/dev-ca.sh DIR [CLIENT_CN]`: a dev CA, a server cert (localhost, 127.0.0.1) and a client cert. */
export function makeDevCertificates(dir: string, clientCn?: string): DevCertificates {
  execFileSync("bash", [join(__dirname, "../../scripts/dev-ca.sh"), dir, ...(clientCn ? [clientCn] : [])], { stdio: "pipe" });
  return {
    dir,
    ca: join(dir, "ca.pem"),
    caKey: join(dir, "ca.key"),
    serverCert: join(dir, "server.pem"),
    serverKey: join(dir, "server.key"),
    clientCert: join(dir, "client.pem"),
    clientKey: join(dir, "client.key"),
  };
}
