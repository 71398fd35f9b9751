/**
 * `hsmd officer unlock NAME --config FILE`: the offline way back for a crypto officer nobody can
 * unlock (failed logins locked the only one, and UnlockUser needs an officer). Like CloudHSM's
 * recovery, it takes local access to the node (its config and data directory, with hsmd stopped on
 * this host) and the token's security-officer PIN, proved by a real CKU_SO login on the token. It
 * clears the lockout, gives the officer a fresh one-time password (written to a mode-600 file, as
 * `hsmd init` does for the first officer) that must be changed before anything else, revokes the
 * officer's sessions, and writes an audit entry naming the officer (never the PIN or password).
 * Works on the embedded store and on etcd (the record is the cluster's: every node sees the unlock).
 */
import { existsSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AuditLog } from "./audit";
import { promptHidden } from "./cli";
import { ConfigError, loadConfig, type Config } from "./config";
import { officerPasswordFile } from "./daemon";
import { Code, HsmError, invalid } from "./errors";
import { checkSoPin } from "./pkcs11";
import { DirLock, openEmbeddedStore, openEtcdStore, type StateStore } from "./store";
import { UserService, checkUsername, generateOneTimePassword } from "./users";

/** Environment variable the SO PIN may come from (never a flag: flags land in `ps` and shell history). */
export const SO_PIN_ENV = "HSMD_SO_PIN";

/** Usage text of {@link runOfficerUnlock}. */
export const OFFICER_USAGE = "usage: hsmd officer unlock NAME --config FILE [--so-pin-file FILE]   (SO PIN from HSMD_SO_PIN, the file, or a no-echo prompt)\n";

/** The streams and environment the command uses (process ones, or a test's). */
export interface OfficerIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

/** The audit operation name of an offline officer recovery. */
export const OFFICER_UNLOCK_OPERATION = "OfficerUnlock";

/** The SO PIN: HSMD_SO_PIN, else the file given, else a no-echo prompt on a terminal. */
async function readSoPin(io: OfficerIo, file: string | undefined): Promise<string> {
  const fromEnv = io.env[SO_PIN_ENV];
  if (fromEnv) return fromEnv;
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (e) {
      throw invalid(`cannot read the SO PIN file ${file}: ${(e as NodeJS.ErrnoException).code ?? "error"}`);
    }
    const pin = text.replace(/\r?\n$/, "");
    if (!pin) throw invalid(`the SO PIN file ${file} is empty`);
    return pin;
  }
  if (!io.stdin.isTTY || typeof io.stdin.setRawMode !== "function") {
    throw invalid(`the token's security officer PIN is needed: set ${SO_PIN_ENV}, give --so-pin-file FILE, or run on a terminal to be asked for it (it is never a flag)`);
  }
  const pin = await promptHidden(io, "Security officer PIN of the token: ");
  if (!pin) throw invalid("the security officer PIN must not be empty");
  return pin;
}

/** Opens the node's store the daemon would open, refusing while hsmd runs on this node. */
async function openNodeStore(config: Config): Promise<{ store: StateStore; lock?: DirLock }> {
  const stopFirst = (e: unknown) => new HsmError(Code.FailedPrecondition, `hsmd is running on this node: stop it first (officer unlock works offline); ${(e as Error).message}`, { cause: e });
  const cluster = config.cluster;
  if (!cluster) {
    try {
      return { store: await openEmbeddedStore(join(config.node.dataDir, "store")) };
    } catch (e) {
      throw e instanceof HsmError && /is locked by/.test(e.message) ? stopFirst(e) : e;
    }
  }
  let lock: DirLock;
  try {
    lock = DirLock.acquire(config.node.dataDir, "node data directory");
  } catch (e) {
    throw e instanceof HsmError && /is locked by/.test(e.message) ? stopFirst(e) : e;
  }
  try {
    return { store: await openEtcdStore({ endpoints: [...cluster.endpoints], prefix: `hsmd/${cluster.name}/`, tls: cluster.tls ?? undefined, log: () => undefined }), lock };
  } catch (e) {
    lock.release();
    throw e;
  }
}

/**
 * Runs `officer unlock NAME --config FILE [--so-pin-file FILE]` (argv after `officer`). Exit 0 when
 * the officer was unlocked (the one-time password's file is printed), 1 when refused (wrong SO PIN,
 * unknown user, not an officer, hsmd running), 2 on a usage or configuration error.
 */
export async function runOfficerUnlock(argv: string[], io: OfficerIo = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const parse = () =>
    parseArgs({
      args: argv,
      allowPositionals: true,
      options: { config: { type: "string", short: "c" }, "so-pin-file": { type: "string" }, help: { type: "boolean", short: "h" } },
    });
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse();
  } catch (e) {
    io.stderr.write(`${(e as Error).message}\n${OFFICER_USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout.write(OFFICER_USAGE);
    return 0;
  }
  const [verb, name, ...rest] = positionals;
  const configFile = values.config ?? io.env.HSMD_CONFIG;
  if (verb !== "unlock" || !name || rest.length || !configFile) {
    io.stderr.write(
      `${verb !== "unlock" ? `unknown officer command ${JSON.stringify(verb ?? "")}` : !name ? "missing the officer's name" : rest.length ? `unexpected ${JSON.stringify(rest[0])}` : "missing --config FILE"}\n${OFFICER_USAGE}`,
    );
    return 2;
  }
  let config: Config;
  try {
    checkUsername(name);
    config = loadConfig({ file: configFile, env: io.env });
  } catch (e) {
    io.stderr.write(e instanceof ConfigError ? `configuration rejected:\n${e.message}\n` : `${(e as Error).message}\n`);
    return 2;
  }

  let store: StateStore | undefined;
  let lock: DirLock | undefined;
  let audit: AuditLog | undefined;
  let otpFile: string | undefined;
  const record = (status: string, detail: string) => audit?.append({ operation: OFFICER_UNLOCK_OPERATION, target: name, status, client: "local", detail }, { sync: true });
  try {
    const soPin = await readSoPin(io, values["so-pin-file"]);
    ({ store, lock } = await openNodeStore(config));
    audit = await AuditLog.open(config.audit.file, { node: config.node.id, fsync: "never" });
    try {
      // Authority first: nothing about the user is looked at before the SO login succeeded.
      await checkSoPin({ module: config.device.module, tokenLabel: config.device.tokenLabel ?? undefined, slot: config.device.slot ?? undefined, soPin });
    } catch (e) {
      const err = HsmError.from(e);
      await record(err.code, "offline recovery refused: the security officer login failed");
      throw err;
    }
    const users = new UserService({ store, maxFailedLogins: config.auth.maxFailedLogins, sessionTtlMs: config.auth.sessionTtlMs });
    const otp = generateOneTimePassword();
    otpFile = officerPasswordFile(config.node.dataDir, name);
    // The file is on disk before the record changes: a crash in between never leaves an officer with a password nobody has.
    writeFileSync(otpFile, `${otp}\n`, { mode: 0o600, flush: true });
    try {
      await users.recoverOfficer(name, otp);
    } catch (e) {
      const err = HsmError.from(e);
      if (err.code === Code.Unavailable) {
        // The write may have committed: keep the password the record may now hold.
        throw new HsmError(Code.Unavailable, `${err.message}; the unlock may or may not have been made: if logging in with the one-time password in ${otpFile} fails, run this again`);
      }
      if (existsSync(otpFile)) unlinkSync(otpFile);
      await record(err.code, "offline recovery refused");
      throw err;
    }
    await record("OK", "offline recovery with the token's SO PIN: lockout cleared, one-time password issued, sessions revoked");
    io.stdout.write(`crypto officer "${name}" unlocked; its one-time password is in ${otpFile} (mode 600): log in and change it (ChangePassword) before anything else\n`);
    return 0;
  } catch (e) {
    const err = HsmError.from(e);
    io.stderr.write(`officer unlock refused: ${err.code === Code.Internal ? `${err.message}: ${err.cause instanceof Error ? err.cause.message : String(err.cause)}` : err.message}\n`);
    return err.code === Code.InvalidArgument ? 2 : 1;
  } finally {
    await audit?.close().catch(() => undefined);
    await store?.close().catch(() => undefined);
    lock?.release();
  }
}
