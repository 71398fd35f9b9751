/**
 * Tokens initialized without a PIN on any command line (where /proc/<pid>/cmdline shows it to every
 * local user): scripts/dev-token.sh runs for real in a temp HSMD_DEV_DIR with `node` and
 * `softhsm2-util` behind recording shims, so every argv it passes is checked; the token it makes
 * logs in with the PIN in its file (pkcs11js, in this process) and refuses another. The
 * init-token script's refusals (label taken, PIN out of the module's range, usage) leave no token
 * and never print a PIN; and no script passes a PIN to softhsm2-util any more.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as pk from "pkcs11js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDist, REPO } from "../helpers/daemon-process";
import { SOFTHSM_MODULE } from "../helpers/softhsm";

const INIT = join(REPO, "dist/scripts/init-token.js");
let dir: string;
let devDir: string;
let argvLog: string;
let shims: string;

beforeAll(() => {
  buildDist();
  dir = mkdtempSync(join(tmpdir(), "hsmd-token-init-"));
  devDir = join(dir, "dev");
  argvLog = join(dir, "argv.log");
  shims = join(dir, "bin");
  mkdirSync(shims);
  // Each shim appends its argv (one line) to the log, then runs the real program.
  for (const [name, real] of [
    ["node", process.execPath],
    ["softhsm2-util", spawnSync("sh", ["-c", "command -v softhsm2-util"], { encoding: "utf8" }).stdout.trim()],
  ] as const) {
    writeFileSync(join(shims, name), `#!/bin/sh\nprintf '%s %s\\n' "${name}" "$*" >> "${argvLog}"\nexec "${real}" "$@"\n`);
    chmodSync(join(shims, name), 0o755);
  }
}, 120_000);
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Logs in to the token labelled `label` (SOFTHSM2_CONF `conf`) as CKU_USER: "ok" or the CKR_* name. */
function userLogin(conf: string, label: string, pin: string): string {
  process.env.SOFTHSM2_CONF = conf;
  const p11 = new pk.PKCS11();
  p11.load(SOFTHSM_MODULE);
  p11.C_Initialize();
  try {
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === label);
    if (!slot) return "no such token";
    const s = p11.C_OpenSession(slot, pk.CKF_SERIAL_SESSION);
    try {
      p11.C_Login(s, pk.CKU_USER, pin);
      p11.C_Logout(s);
      return "ok";
    } catch (e) {
      return /CKR_\w+/.exec(String(e))?.[0] ?? String(e);
    } finally {
      p11.C_CloseSession(s);
    }
  } finally {
    p11.C_Finalize();
  }
}

/** The labels of the initialized tokens softhsm2-util shows for `conf`. */
function labels(conf: string): string[] {
  const out = spawnSync("softhsm2-util", ["--show-slots"], { env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: "utf8" }).stdout;
  return [...out.matchAll(/Label:\s+(\S+)/g)].map((m) => m[1]!);
}

describe("scripts/dev-token.sh", () => {
  it("creates the dev token with no PIN in any argv; its user PIN logs in, another does not; a second run changes nothing", () => {
    const env = { ...process.env, HSMD_DEV_DIR: devDir, PATH: `${shims}:${process.env.PATH}` };
    const first = spawnSync("bash", [join(REPO, "scripts/dev-token.sh")], { env, encoding: "utf8" });
    expect(first.status, first.stderr).toBe(0);
    expect(first.stdout).toBe(`created SoftHSM2 token hsmd-dev in ${devDir}/tokens (user PIN in ${devDir}/pin)\n`);
    const pin = readFileSync(join(devDir, "pin"), "utf8").trim();
    expect(pin.length).toBeGreaterThanOrEqual(16);
    expect(statSync(join(devDir, "pin")).mode & 0o777).toBe(0o600);
    expect(readdirSync(devDir).filter((f) => f.includes("so-pin"))).toEqual([]); // the SO PIN is not kept

    const argv = readFileSync(argvLog, "utf8");
    expect(argv).toMatch(/^node dist\/scripts\/init-token\.js --label hsmd-dev --pin-file \S+\/pin --so-pin-file \S+\.so-pin\.\S+$/m);
    expect(argv).toContain("softhsm2-util --show-slots");
    expect(argv).not.toContain(pin);
    expect(argv).not.toMatch(/--(so-)?pin /);

    const conf = join(devDir, "softhsm2.conf");
    expect(userLogin(conf, "hsmd-dev", pin)).toBe("ok");
    expect(userLogin(conf, "hsmd-dev", `${pin}x`)).toBe("CKR_PIN_INCORRECT");

    const again = spawnSync("bash", [join(REPO, "scripts/dev-token.sh")], { env, encoding: "utf8" });
    expect({ status: again.status, stdout: again.stdout }).toEqual({ status: 0, stdout: "" });
    expect(readFileSync(join(devDir, "pin"), "utf8").trim()).toBe(pin);
    expect(labels(conf)).toEqual(["hsmd-dev"]);
  });
});

describe("scripts/init-token.ts", () => {
  it("refuses a taken label, a PIN out of the module's range and bad usage, leaving no token and printing no PIN", () => {
    const root = join(dir, "refusals");
    mkdirSync(join(root, "tokens"), { recursive: true });
    const conf = join(root, "softhsm2.conf");
    writeFileSync(conf, `directories.tokendir = ${join(root, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    const files = { pin: join(root, "pin"), so: join(root, "so"), short: join(root, "short") };
    writeFileSync(files.pin, "user-pin-123\n", { mode: 0o600 });
    writeFileSync(files.so, "so-pin-456", { mode: 0o600 });
    writeFileSync(files.short, "12", { mode: 0o600 });
    const run = (args: string[]) => spawnSync(process.execPath, [INIT, ...args], { env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: "utf8" });

    const made = run(["--label", "t1", "--pin-file", files.pin, "--so-pin-file", files.so]);
    expect(made.status, made.stderr).toBe(0);
    expect(made.stdout).toMatch(/^initialized token "t1" \(serial [0-9a-f]+\)\n$/);

    const taken = run(["--label", "t1", "--pin-file", files.pin, "--so-pin-file", files.so]);
    expect(taken.status).toBe(1);
    expect(taken.stderr).toContain('a token labelled "t1" already exists');

    const short = run(["--label", "t2", "--pin-file", files.short, "--so-pin-file", files.so]);
    expect(short.status).toBe(1);
    expect(short.stderr).toContain("the user PIN is 2 bytes; this module takes 4 to 255 (CKR_PIN_LEN_RANGE)");

    const usage = run(["--label", "t3", "--pin-file", files.pin]);
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain("missing --so-pin-file");
    const empty = join(root, "empty");
    writeFileSync(empty, "");
    const emptyPin = run(["--label", "t3", "--pin-file", empty, "--so-pin-file", files.so]);
    expect(emptyPin.status).toBe(2);
    expect(emptyPin.stderr).toContain(`--pin-file: ${empty} is empty`);

    expect(labels(conf)).toEqual(["t1"]); // nothing half-made by the refusals
    for (const r of [made, taken, short, usage, emptyPin]) expect(`${r.stdout}${r.stderr}`).not.toMatch(/user-pin-123|so-pin-456/);
  });

  it("no script passes a PIN to softhsm2-util on its command line", () => {
    const scripts = readdirSync(join(REPO, "scripts")).filter((f) => /\.(sh|ts)$/.test(f));
    for (const f of scripts) {
      // Code only: comments may name the old way.
      const text = readFileSync(join(REPO, "scripts", f), "utf8")
        .split("\n")
        .filter((l) => !/^\s*(#|\*|\/\*\*|\/\/)/.test(l))
        .join("\n");
      expect(text, `scripts/${f}`).not.toMatch(/softhsm2-util[^\n]*--(so-)?pin\b/);
      expect(text, `scripts/${f}`).not.toMatch(/"--init-token"/);
    }
    expect(existsSync(INIT)).toBe(true);
  });
});
