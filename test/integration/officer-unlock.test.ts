/**
 * `hsmd officer unlock`: the only crypto officer, locked by failed logins, is recovered offline on
 * its node (embedded store, real SoftHSM2 token, hsmd as a child process) with the token's SO PIN.
 * Refused while hsmd runs, without a PIN, with a wrong one, for an unknown user and for a crypto
 * user; then the right PIN unlocks, the old password is dead, the one-time password must be
 * changed, and the audit log (still a valid chain) names the officer and never the PIN or password.
 */
import { readFileSync, statSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PassThrough } from "node:stream";
import { runOfficerUnlock } from "../../src/officer-unlock";
import { HsmClient, Role } from "../../src/sdk";
import { buildDist, runHsmdCommand, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { OFFICER_PASSWORD, USER_PASSWORD, officerClient } from "../helpers/users";

let dp: DaemonProcess;

beforeAll(async () => {
  buildDist();
  dp = await startDaemonProcess({ config: { auth: { maxFailedLogins: 5 } } });
  const co = await officerClient(dp);
  await co.createUser({ username: "carol", role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
  co.close();
}, 180_000);
afterAll(async () => {
  await dp?.cleanup();
});

const client = () => new HsmClient({ endpoint: dp.grpc, defaultDeadlineMs: 20_000 });
/** `hsmd officer unlock NAME` as its own process (the wiring in main.ts, the exit code). */
const unlock = (name: string, env: Record<string, string | undefined>, extra: string[] = []) =>
  runHsmdCommand(dp, ["officer", "unlock", name, "--config", dp.configFile, ...extra], { HSMD_SO_PIN: undefined, ...env });

/** The same command in this process (no node start-up to pay): exit code and what it wrote. */
async function unlockHere(name: string, env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = { stdout: "", stderr: "" };
  const sink = (k: "stdout" | "stderr") => new PassThrough().on("data", (d: Buffer) => (out[k] += d.toString()));
  const code = await runOfficerUnlock(["unlock", name, "--config", dp.configFile], {
    stdin: new PassThrough(),
    stdout: sink("stdout"),
    stderr: sink("stderr"),
    env: { SOFTHSM2_CONF: dp.token.conf, ...env },
  });
  return { code, ...out };
}

describe("hsmd officer unlock", () => {
  it("answers usage errors with exit 2 and the usage, touching nothing", async () => {
    const run = async (argv: string[], env: NodeJS.ProcessEnv = {}) => {
      const out = new PassThrough();
      const err = new PassThrough();
      let text = "";
      out.on("data", (d: Buffer) => (text += d.toString()));
      err.on("data", (d: Buffer) => (text += d.toString()));
      const code = await runOfficerUnlock(argv, { stdin: new PassThrough(), stdout: out, stderr: err, env });
      return { code, text };
    };
    expect(await run(["lock", "admin", "--config", dp.configFile])).toEqual({ code: 2, text: expect.stringContaining('unknown officer command "lock"') });
    expect(await run(["unlock", "--config", dp.configFile])).toEqual({ code: 2, text: expect.stringContaining("missing the officer's name") });
    expect(await run(["unlock", "admin"])).toEqual({ code: 2, text: expect.stringContaining("missing --config FILE") });
    expect(await run(["unlock", "Not A Name", "--config", dp.configFile])).toEqual({ code: 2, text: expect.stringContaining('username "Not A Name" is not allowed') });
    expect(await run(["unlock", "admin", "--so-pin", "1234", "--config", dp.configFile])).toEqual({ code: 2, text: expect.stringContaining("Unknown option '--so-pin'") });
  });

  it("recovers the only crypto officer locked by failed logins, and refuses everything else", async () => {
    // Five wrong passwords lock the only officer; nobody is left to call UnlockUser.
    const c = client();
    for (let i = 1; i <= 5; i++) {
      await expect(c.login("admin", `wrong-password-${i}`)).rejects.toMatchObject({ codeName: i < 5 ? "UNAUTHENTICATED" : "PERMISSION_DENIED" });
    }
    await expect(c.login("admin", OFFICER_PASSWORD)).rejects.toMatchObject({ codeName: "PERMISSION_DENIED", details: expect.stringContaining("locked after 5 failed logins") });

    // While hsmd runs on the node, the command refuses (the store and audit log have one writer).
    const running = await unlock("admin", { HSMD_SO_PIN: dp.token.soPin });
    expect(running.code).toBe(1);
    expect(running.stderr).toMatch(/hsmd is running on this node: stop it first/);

    dp.kill("SIGTERM");
    await dp.waitExit();

    const noPin = await unlockHere("admin", {});
    expect(noPin.code).toBe(2);
    expect(noPin.stderr).toMatch(/security officer PIN is needed: set HSMD_SO_PIN, give --so-pin-file FILE, or run on a terminal/);

    const wrongPin = await unlockHere("admin", { HSMD_SO_PIN: "not-the-so-pin" });
    expect(wrongPin.code).toBe(1);
    expect(wrongPin.stderr).toMatch(/the security officer PIN of this node's token is incorrect/);

    const unknown = await unlockHere("nobody", { HSMD_SO_PIN: dp.token.soPin });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/user nobody not found/);

    const notOfficer = await unlockHere("carol", { HSMD_SO_PIN: dp.token.soPin });
    expect(notOfficer.code).toBe(1);
    expect(notOfficer.stderr).toMatch(/user carol is a CU, not a crypto officer/);
    expect(existsSync(join(dp.dataDir, "officer-carol-password"))).toBe(false);

    // The right PIN, from a file this time.
    const pinFile = join(dp.root, "so-pin");
    writeFileSync(pinFile, `${dp.token.soPin}\n`, { mode: 0o600 });
    const ok = await unlock("admin", {}, ["--so-pin-file", pinFile]);
    expect(ok.stderr).toBe("");
    expect(ok.code).toBe(0);
    const otpFile = join(dp.dataDir, "officer-admin-password");
    expect(ok.stdout).toContain(`crypto officer "admin" unlocked; its one-time password is in ${otpFile} (mode 600)`);
    expect(statSync(otpFile).mode & 0o777).toBe(0o600);
    const otp = readFileSync(otpFile, "utf8").trim();
    for (const out of [running, noPin, wrongPin, unknown, notOfficer, ok]) {
      expect(out.stdout + out.stderr).not.toContain(dp.token.soPin);
      expect(out.stdout + out.stderr).not.toContain(otp);
    }

    dp.setCommand("start");
    await dp.restart();
    const after = client();
    await expect(after.login("admin", OFFICER_PASSWORD)).rejects.toMatchObject({ codeName: "UNAUTHENTICATED" });
    const session = await after.login("admin", otp);
    expect(session.mustChangePassword).toBe(true);
    await expect(after.listUsers()).rejects.toMatchObject({ codeName: "FAILED_PRECONDITION", details: expect.stringContaining("change the one-time password first") });
    await after.changePassword(otp, OFFICER_PASSWORD);
    expect(existsSync(otpFile)).toBe(false);
    const admin = (await after.listUsers()).users.find((u) => u.username === "admin");
    expect(admin).toMatchObject({ locked: false, failedLogins: 0, mustChangePassword: false });

    const entries = (await after.queryAuditLog({ operation: "OfficerUnlock" })).entries;
    expect(entries.map((e) => [e.target, e.status])).toEqual([
      ["admin", "PERMISSION_DENIED"],
      ["nobody", "NOT_FOUND"],
      ["carol", "FAILED_PRECONDITION"],
      ["admin", "OK"],
    ]);
    expect(entries[3]!.detail).toMatch(/SO PIN: lockout cleared, one-time password issued/);
    expect((await after.verifyAuditLog()).ok).toBe(true);
    const log = readFileSync(join(dp.dataDir, "audit", "audit.log"), "utf8");
    expect(log).not.toContain(dp.token.soPin);
    expect(log).not.toContain(otp);
    after.close();
    c.close();
  });
});
