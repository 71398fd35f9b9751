/**
 * The daemon, the users and the built CLI of the hsmctl end-to-end tests (hsmctl.test.ts,
 * hsmctl-keys.test.ts, hsmctl-crypto.test.ts): hsmctl runs as a child process with its endpoint,
 * passwords and session file given through the environment (or in this process for the help, or under
 * script(1) for a terminal); every stdout and stderr is kept, and after each file's tests searched for
 * the passwords and session tokens used.
 */
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect } from "vitest";
import { startTestDaemon, type TestDaemon } from "./daemon";
import { distIsFresh } from "./daemon-process";
import { ensureUser, officerClient, OFFICER_PASSWORD, USER_PASSWORD } from "./users";
import { Role } from "../../src/sdk";
import { runHsmctl, type CliIo } from "../../src/cli";

/** The repository and the built CLI. */
export const REPO = join(__dirname, "../..");
export const CLI = join(REPO, "dist/src/cli/main.js");
/** Whether script(1) is there to give hsmctl a pty. */
export const HAVE_SCRIPT = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

/** What one hsmctl run did. */
export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  out: Buffer;
}

/** The daemon and the temp dir (HOME, session files, inputs and outputs), set before the tests. */
export let td: TestDaemon;
export let dir: string;
/** Every password and token the test used: none may ever appear in what hsmctl printed. */
export const secrets = new Set<string>([OFFICER_PASSWORD, USER_PASSWORD]);
/** Everything hsmctl printed. */
export const transcripts: string[] = [];

/** The environment of an hsmctl child: no HSMCTL_* from outside, HOME in the temp dir. */
export function baseEnv(session: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("HSMCTL_")) env[k] = v;
  return {
    ...env,
    HOME: dir,
    XDG_CONFIG_HOME: join(dir, "xdg"),
    HSMCTL_ENDPOINTS: td.grpc,
    HSMCTL_INSECURE_PLAINTEXT: "1",
    HSMCTL_SESSION_FILE: join(dir, `${session}.session.json`),
  };
}

/** Runs the built hsmctl as `session`'s user; resolves with its exit code and output (never rejects). */
export function hsmctl(args: string[], opts: { as?: string; env?: Record<string, string | undefined>; input?: Buffer | string } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const env = { ...baseEnv(opts.as ?? "alice"), ...opts.env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
    const child = spawn(process.execPath, [CLI, ...args], { cwd: dir, env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
    child.on("close", (code) => {
      const r = { code, out: Buffer.concat(out), stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
      transcripts.push(r.out.toString("latin1"), r.stderr);
      resolve(r);
    });
  });
}

/** runHsmctl in this process, for the help of every command (no daemon involved, no child per command). */
export async function inProcess(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const io = {
    stdin: process.stdin,
    stdout: { write: (s: string) => ((stdout += s), true), isTTY: false },
    stderr: { write: (s: string) => ((stderr += s), true), isTTY: false },
    env: { HOME: dir },
  } as unknown as CliIo;
  const code = await runHsmctl(argv, io);
  return { code, stdout, stderr };
}

/** Runs hsmctl under script(1); `answer` is typed once `prompt` has appeared. Output is stdout and stderr merged, as on a terminal. */
export function onTerminal(args: string[], opts: { as?: string; env?: Record<string, string | undefined>; prompt?: string; answer?: string } = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const env = { ...baseEnv(opts.as ?? "alice"), ...opts.env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
    const command = [process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
    const child = spawn("script", ["-qefc", command, "/dev/null"], { cwd: dir, env, stdio: ["pipe", "pipe", "pipe"] });
    let output = "";
    let answered = false;
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString("latin1");
      if (opts.prompt && !answered && output.includes(opts.prompt)) {
        answered = true;
        child.stdin.write(`${opts.answer ?? ""}\r`);
      }
    });
    child.stderr.on("data", (d: Buffer) => (output += d.toString("latin1")));
    child.on("close", (code) => {
      transcripts.push(output);
      resolve({ code, output });
    });
  });
}

/** Runs hsmctl and expects exit 0; returns stdout parsed as JSON when `--output json` is among args. */
export async function ok(args: string[], opts: Parameters<typeof hsmctl>[1] = {}): Promise<Run> {
  const r = await hsmctl(args, opts);
  expect(r.code, `hsmctl ${args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

/** Runs hsmctl with `--output json`, expects exit 0, and parses stdout. */
export async function json<T = Record<string, unknown>>(args: string[], opts: Parameters<typeof hsmctl>[1] = {}): Promise<T> {
  const r = await ok([...args, "--output", "json"], opts);
  return JSON.parse(r.stdout) as T;
}

/** The token in a session file, remembered as a secret. */
export function rememberToken(session: string): string {
  const s = JSON.parse(readFileSync(join(dir, `${session}.session.json`), "utf8")) as { token: string };
  secrets.add(s.token);
  return s.token;
}

/** A path in the temp dir. */
export function file(name: string): string {
  return join(dir, name);
}

/** Runs openssl in the temp dir and returns its stdout (throws on a non-zero exit). */
export function opensslOk(args: string[]): string {
  return execFileSync("openssl", args, { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** The keys of hsmctl-crypto.test.ts, by the names its tests use. */
export type CliKeys = Record<"aes" | "hmac" | "ec" | "rsa" | "ed" | "exp", string>;

/**
 * Alice's keys for hsmctl-crypto.test.ts, made through hsmctl as hsmctl-keys.test.ts's first test makes
 * them (same specs, labels and usages), and ec-pub.pem and ed-pub.pem written as its public-key test
 * writes them: the crypto tests run on a daemon of their own, after useHsmctlDaemon's setup.
 */
export async function generateCliKeys(): Promise<CliKeys> {
  const [aes, hmac, ec, rsa, ed, exp] = await Promise.all([
    json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-aes", "--usage", "encrypt,decrypt", "--usage", "wrap", "--usage", "unwrap"]),
    json<{ id: string }>(["key", "generate-symmetric", "--spec", "hmac-sha256", "--label", "cli-hmac"]),
    json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-ec", "--request-id", "cli-ec-1"]),
    json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "rsa-2048", "--label", "cli-rsa", "--usage", "sign,verify,encrypt,decrypt"]),
    json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ed25519", "--label", "cli-ed"]),
    json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-128", "--label", "cli-exportable", "--exportable"]),
  ]);
  await Promise.all([ok(["key", "public-key", "--key-id", ec.id, "--format", "pem", "--out", "ec-pub.pem"]), ok(["key", "public-key", "--key-id", ed.id, "--format", "pem", "--out", "ed-pub.pem"])]);
  return { aes: aes.id, hmac: hmac.id, ec: ec.id, rsa: rsa.id, ed: ed.id, exp: exp.id };
}

/** Compiles the project (as the other CLI tests do); the CLI must come out of it fresh. */
export function build(): Promise<void> {
  if (distIsFresh()) return Promise.resolve();
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn("npx", ["tsc", "-p", "tsconfig.json"], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const fresh = existsSync(CLI) && statSync(CLI).mtimeMs >= started - 2_000;
      // tsc emits even with type errors elsewhere (files others are editing); the CLI must be fresh.
      if (!fresh) reject(new Error(`npx tsc -p tsconfig.json did not produce ${CLI} (exit ${code}):\n${output}`));
      else {
        if (code !== 0) console.warn(`npx tsc -p tsconfig.json exited ${code} (emitted anyway):\n${output}`);
        resolve();
      }
    });
  });
}

/**
 * No password, PIN or session token appeared in what hsmctl printed, and the session files are mode
 * 600 (the "secrets" tests of hsmctl.test.ts check the same for theirs; this runs after every file's).
 */
export function expectSecretsKept(): void {
  const all = transcripts.join("\n");
  for (const s of secrets) expect(all.includes(s), `a secret (${s.slice(0, 3)}…) was printed`).toBe(false);
  for (const f of readdirSync(dir).filter((n) => n.endsWith(".session.json") && !n.startsWith("forged") && !n.startsWith("expired"))) {
    expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
  }
}

/**
 * Before the calling file's tests: a daemon (DeleteUser needs a quorum of 2), the crypto users alice and
 * bob and a second officer, the CLI built, and each of admin, alice, bob and officer2 logged in through
 * hsmctl. After them: expectSecretsKept, then the daemon and the temp dir are removed.
 */
export function useHsmctlDaemon(): void {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsmctl-test-"));
    const built = build();
    td = await startTestDaemon({ config: { auth: { quorum: { operations: { DeleteUser: 2 } } } } });
    // The first officer's one-time password is changed by the helper; alice and bob are crypto users,
    // officer2 a second crypto officer (for the quorum).
    (await officerClient(td)).close();
    await ensureUser(td, "alice");
    await ensureUser(td, "bob");
    await ensureUser(td, "officer2", Role.ROLE_CRYPTO_OFFICER);
    await built;
    const logins = await Promise.all([
      hsmctl(["login", "--username", "admin"], { as: "admin", env: { HSMCTL_PASSWORD: OFFICER_PASSWORD } }),
      hsmctl(["login", "--username", "alice"], { as: "alice", env: { HSMCTL_PASSWORD: USER_PASSWORD } }),
      hsmctl(["login", "--username", "bob"], { as: "bob", env: { HSMCTL_PASSWORD: USER_PASSWORD } }),
      hsmctl(["login", "--username", "officer2"], { as: "officer2", env: { HSMCTL_PASSWORD: USER_PASSWORD } }),
    ]);
    for (const l of logins) expect(l.code, l.stderr).toBe(0);
    for (const s of ["admin", "alice", "bob", "officer2"]) rememberToken(s);
  }, 120_000);

  afterAll(async () => {
    try {
      if (td && dir) expectSecretsKept();
    } finally {
      await td?.cleanup();
      if (dir) rmSync(dir, { recursive: true, force: true });
    }
  });
}
