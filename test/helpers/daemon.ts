import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/config";
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

/** Config for a daemon on a temp token, bound to free loopback ports. */
export function testConfig(token: TempToken, dataDir: string, limits: Record<string, number> = {}) {
  return loadConfig({
    env: { ...process.env, HSMD_TEST_PIN: token.pin },
    overrides: {
      node: { id: "test-node", dataDir },
      listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
      device: { profile: "softhsm2", module: SOFTHSM_MODULE, tokenLabel: token.label, pin: { env: "HSMD_TEST_PIN" }, poolSize: 4 },
      limits,
    },
  });
}

/** A real daemon, in this process, on a fresh SoftHSM2 token and data directory (initialized). */
export async function startTestDaemon(opts: { limits?: Record<string, number>; token?: TempToken; dataDir?: string } = {}): Promise<TestDaemon> {
  const token = opts.token ?? createTempToken();
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), "hsmd-data-"));
  const config = testConfig(token, dataDir, opts.limits);
  const daemon = await Daemon.start({ config, init: true, log: () => undefined });
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
