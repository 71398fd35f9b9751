#!/usr/bin/env node
/**
 * hsmd entry point: load config → size the libuv pool → build the daemon → start; SIGTERM/SIGINT →
 * stop. `hsmd init` also creates the node's domain key inside the HSM when it has none.
 *
 *   hsmd [start|init|join] --config FILE [--data-dir DIR] [--grpc HOST:PORT] [--admin HOST:PORT] [--purge-orphans] [--full-check]
 *   hsmd audit verify FILE [--expect-last-hash HASH] [--min-entries N]
 *   hsmd officer unlock NAME --config FILE [--so-pin-file FILE]
 */
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "./config";
import { existsSync, mkdirSync } from "node:fs";
import { Daemon, firstOfficerPasswordFile, stderrLog } from "./daemon";
import { HsmError } from "./errors";
import { describeTransport } from "./grpc";
import { runAuditVerify } from "./audit";
import { runOfficerUnlock } from "./officer-unlock";

async function main(): Promise<number> {
  // `hsmd audit verify FILE …`: checks an audit log's hash chain offline (exit 0 intact, 1 tampered, 2 usage/I/O).
  if (process.argv[2] === "audit") return runAuditVerify(process.argv.slice(3));
  // `hsmd officer unlock NAME --config FILE`: offline recovery of a locked crypto officer (the token's SO PIN; see officer-unlock.ts).
  if (process.argv[2] === "officer") return runOfficerUnlock(process.argv.slice(3));
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      config: { type: "string", short: "c" },
      "data-dir": { type: "string" },
      grpc: { type: "string" },
      admin: { type: "string" },
      "purge-orphans": { type: "boolean" },
      "full-check": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const cmd = positionals[0] ?? "start";
  if (values.help || !["start", "init", "join"].includes(cmd)) {
    process.stdout.write(
      "usage: hsmd [start|init|join] --config FILE [--data-dir DIR] [--grpc HOST:PORT] [--admin HOST:PORT] [--purge-orphans] [--full-check]\n       hsmd audit verify FILE [--expect-last-hash HASH] [--min-entries N]\n       hsmd officer unlock NAME --config FILE [--so-pin-file FILE]\n",
    );
    return values.help ? 0 : 2;
  }
  const overrides: Record<string, unknown> = {};
  if (values["data-dir"]) overrides.node = { dataDir: values["data-dir"] };
  if (values.grpc || values.admin) overrides.listen = { ...(values.grpc ? { grpc: values.grpc } : {}), ...(values.admin ? { admin: values.admin } : {}) };
  const config = loadConfig({ file: values.config ?? process.env.HSMD_CONFIG, env: process.env, overrides });

  // The daemon runs in its data directory (every configured path is absolute by now): files a
  // device library writes relative to the working directory stay with the node's data, never in a
  // source tree or wherever it was started from.
  mkdirSync(config.node.dataDir, { recursive: true, mode: 0o700 });
  process.chdir(config.node.dataDir);

  // Device calls with an async form run on libuv's thread pool: one thread per pooled session, the
  // password-hashing lane's threads, plus a few for fs and DNS. With session workers
  // (device.workers ≥ 1) the hot path (sign, verify, encrypt, decrypt, random) runs in the workers
  // and uses none of it; the pool then carries the control path (key creation, unwraps, the
  // applier's materializations), still one call per pooled session, so the size stays bounded by
  // the same sum. Must be set before the pool is first used.
  if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(Math.min(1024, config.device.poolSize + config.auth.hashLane.concurrency + 4));

  const daemon = await Daemon.start({
    config,
    init: cmd === "init",
    join: cmd === "join",
    // Destroys key objects no record explains instead of quarantining them (see KeyService.reconcile).
    purgeOrphans: values["purge-orphans"] === true,
    // A cluster node proves every record at start, not only those changed since its watermark (see cluster/catch-up.ts).
    fullCheck: values["full-check"] === true,
    onJoinRequest: (r) =>
      process.stdout.write(`join request: node ${r.nodeId}, transport key sha256 ${r.fingerprint} (a crypto officer approves it with ApproveJoin; expires ${new Date(r.expiresAt).toISOString()})\n`),
  });
  const mode = describeTransport(config);
  const otpFile = firstOfficerPasswordFile(config.node.dataDir);
  process.stdout.write(
    `hsmd ready: node ${config.node.id}, token "${daemon.device.token.label}", ${daemon.keys.keyCount} keys\n` +
      `  gRPC  ${config.listen.grpc.host}:${daemon.grpcPort}  (${mode})\n` +
      `  admin http://${config.listen.admin.host}:${daemon.adminPort}  (plain HTTP, no secrets: /healthz /readyz /metrics /v1/status)\n` +
      (existsSync(otpFile) ? `  first crypto officer "${config.auth.firstOfficer}": one-time password in ${otpFile} (log in, then ChangePassword)\n` : ""),
  );
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      stderrLog(`${sig}: stopping`);
      resolve();
    };
    process.once("SIGTERM", () => onSignal("SIGTERM"));
    process.once("SIGINT", () => onSignal("SIGINT"));
  });
  await daemon.stop();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    const err = e as Error;
    if (e instanceof ConfigError) stderrLog(`configuration rejected:\n${e.message}`);
    else if (e instanceof HsmError) stderrLog(`cannot start: ${e.message}`);
    else stderrLog(`cannot start: ${err?.stack ?? String(e)}`);
    process.exit(1);
  },
);
