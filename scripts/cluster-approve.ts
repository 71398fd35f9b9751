/**
 * The officer's side of scripts/cluster.sh, through the SDK: logs in as the first crypto officer
 * (changing its one-time password to a random one kept in a mode-600 file the first time), then
 * approves a node's join or prints the cluster's status.
 *
 *   node dist/scripts/cluster-approve.js approve --endpoint HOST:PORT --node ID --fingerprint HEX --so-pin-file FILE [officer options]
 *   node dist/scripts/cluster-approve.js status  --endpoint HOST:PORT [--endpoint …] [--expect N] [--wait-seconds S] [officer options]
 *
 * Officer options: --user NAME (default admin), --password-file FILE (where the changed password is
 * kept), --otp-file FILE (the `<dataDir>/first-officer-password` that `hsmd init` left). The password
 * is taken from HSMD_OFFICER_PASSWORD when set, else from --password-file when it exists, else from
 * --otp-file. When the daemon says the password must be changed, a random one replaces it and is
 * written to --password-file (mode 600).
 *
 * `approve` sends ApproveJoin to the one --endpoint given: the SO PIN must be that node's token's.
 * Exit status: 0 done, 1 refused or failed (the daemon's message on stderr), 2 usage.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { HsmClient, HsmClientError, JoinStatus, type ClusterStatus } from "../src/sdk";

const USAGE =
  "usage: cluster-approve approve --endpoint HOST:PORT --node ID --fingerprint HEX --so-pin-file FILE [--user NAME] [--password-file FILE] [--otp-file FILE]\n" +
  "       cluster-approve status  --endpoint HOST:PORT [--endpoint …] [--expect N] [--wait-seconds S] [--user NAME] [--password-file FILE] [--otp-file FILE]\n";

class UsageError extends Error {}

function readSecret(file: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${what} from ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const value = text.replace(/\r?\n$/, "");
  if (!value) throw new UsageError(`${file} is empty (expected ${what})`);
  return value;
}

/** Writes a secret to a file only its owner can read, durably. */
function writeSecret(file: string, value: string): void {
  writeFileSync(file, `${value}\n`, { mode: 0o600, flush: true });
}

/**
 * A client logged in as the officer. A must-change password (the one-time one) is replaced by a
 * random one first written to `<password-file>.new`, renamed into place once the change succeeded.
 */
async function officerClient(endpoints: string[], user: string, passwordFile: string | undefined, otpFile: string | undefined): Promise<HsmClient> {
  let password: string;
  let from: string;
  if (process.env.HSMD_OFFICER_PASSWORD) {
    password = process.env.HSMD_OFFICER_PASSWORD;
    from = "HSMD_OFFICER_PASSWORD";
  } else if (passwordFile && existsSync(passwordFile)) {
    password = readSecret(passwordFile, "the officer's password");
    from = passwordFile;
  } else if (otpFile && existsSync(otpFile)) {
    password = readSecret(otpFile, "the one-time password");
    from = otpFile;
  } else if (passwordFile && existsSync(`${passwordFile}.new`)) {
    // A change that succeeded just before a crash, before the rename.
    password = readSecret(`${passwordFile}.new`, "the officer's password");
    from = `${passwordFile}.new`;
  } else {
    throw new UsageError(`no password for ${user}: set HSMD_OFFICER_PASSWORD, or give --password-file or --otp-file naming an existing file`);
  }
  const client = new HsmClient({ endpoints, defaultDeadlineMs: 30_000 });
  try {
    const session = await client.login(user, password);
    if (from === `${passwordFile}.new`) renameSync(from, passwordFile!);
    if (session.mustChangePassword) {
      if (!passwordFile) throw new UsageError(`${user} must change its password first: give --password-file to keep the new one in`);
      const next = randomBytes(24).toString("base64url"); // 32 characters
      const pending = `${passwordFile}.new`;
      writeSecret(pending, next);
      try {
        await client.changePassword(password, next);
      } catch (e) {
        rmSync(pending, { force: true });
        throw e;
      }
      renameSync(pending, passwordFile);
      process.stderr.write(`the one-time password of ${user} (${from}) was changed; the new password is in ${passwordFile} (mode 600)\n`);
    }
    return client;
  } catch (e) {
    client.close();
    throw e;
  }
}

function printStatus(s: ClusterStatus): void {
  const rows = [["node", "advertise", "applied rev", "lag", "hsm", "store", "keys", "last contact"]];
  for (const n of [...s.nodes].sort((a, b) => a.nodeId.localeCompare(b.nodeId))) {
    rows.push([n.nodeId, n.advertise, String(n.appliedRevision), String(n.lag), n.hsmHealthy ? "ok" : "DOWN", n.storeReachable ? "ok" : "UNREACHABLE", String(n.keys), n.lastContact || "never"]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  process.stdout.write(`cluster ${s.cluster} (${s.store}, revision ${s.storeRevision}), answered by ${s.self}: ${s.nodes.length} node${s.nodes.length === 1 ? "" : "s"}\n`);
  for (const r of rows)
    process.stdout.write(
      `  ${r
        .map((c, i) => c.padEnd(widths[i]!))
        .join("  ")
        .trimEnd()}\n`,
    );
}

async function main(): Promise<number> {
  const [command, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({
    args: rest,
    options: {
      endpoint: { type: "string", multiple: true },
      node: { type: "string" },
      fingerprint: { type: "string" },
      "so-pin-file": { type: "string" },
      user: { type: "string", default: "admin" },
      "password-file": { type: "string" },
      "otp-file": { type: "string" },
      expect: { type: "string" },
      "wait-seconds": { type: "string", default: "30" },
    },
  });
  const endpoints = values.endpoint ?? [];
  if ((command !== "approve" && command !== "status") || endpoints.length === 0) throw new UsageError(USAGE.trimEnd());

  if (command === "approve") {
    if (endpoints.length !== 1) throw new UsageError("approve takes exactly one --endpoint: the node whose token the SO PIN belongs to");
    const nodeId = values.node;
    const fingerprint = values.fingerprint?.toLowerCase();
    if (!nodeId || !fingerprint || !values["so-pin-file"]) throw new UsageError("approve needs --node, --fingerprint and --so-pin-file");
    if (!/^[0-9a-f]{64}$/.test(fingerprint)) throw new UsageError("--fingerprint must be the 64 hex digits the joining node printed");
    const soPin = readSecret(values["so-pin-file"], "the SO PIN");
    const co = await officerClient(endpoints, values.user, values["password-file"], values["otp-file"]);
    try {
      const join = await co.approveJoin({ nodeId, transportKeySha256: fingerprint, soPin });
      process.stdout.write(`join of ${join.nodeId} approved by ${join.approvedBy} on ${join.approvedOn} (transport key sha256 ${join.transportKeySha256}, status ${JoinStatus[join.status]})\n`);
    } finally {
      await co.logout().catch(() => undefined);
      co.close();
    }
    return 0;
  }

  const expected = values.expect === undefined ? undefined : Number(values.expect);
  if (expected !== undefined && !(Number.isInteger(expected) && expected > 0)) throw new UsageError("--expect must be a positive integer");
  const waitMs = Number(values["wait-seconds"]) * 1000;
  const co = await officerClient(endpoints, values.user, values["password-file"], values["otp-file"]);
  try {
    // With --expect N: wait until N members are listed and each has reported a healthy HSM.
    const until = Date.now() + (expected === undefined ? 0 : waitMs);
    for (;;) {
      const s = await co.getClusterStatus();
      const ok = expected === undefined || (s.nodes.length === expected && s.nodes.every((n) => n.hsmHealthy && n.storeReachable && n.lastContact));
      if (ok || Date.now() >= until) {
        printStatus(s);
        if (!ok) process.stderr.write(`expected ${expected} healthy members, found ${s.nodes.filter((n) => n.hsmHealthy && n.storeReachable).length} of ${s.nodes.length} listed\n`);
        return ok ? 0 : 1;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  } finally {
    await co.logout().catch(() => undefined);
    co.close();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) {
      process.stderr.write(`cluster-approve: ${e.message}\n`);
      process.exit(2);
    }
    if (e instanceof HsmClientError) process.stderr.write(`cluster-approve: ${e.codeName}: ${e.details}\n`);
    else process.stderr.write(`cluster-approve: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
