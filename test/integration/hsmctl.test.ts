/**
 * hsmctl end to end: the BUILT CLI (`node dist/src/cli/main.js`, compiled in beforeAll) as a child
 * process against a real daemon on a SoftHSM2 token, its endpoint, passwords and session file given
 * through the environment. Results are checked with openssl and Node's crypto; every stdout and
 * stderr is kept and searched at the end for passwords and session tokens.
 */
import { spawn, execFileSync } from "node:child_process";
import { constants as cryptoConstants, createDecipheriv, createHash, createPublicKey, generateKeyPairSync, publicEncrypt, verify as nodeVerify } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { distIsFresh } from "../helpers/daemon-process";
import { ensureUser, officerClient, OFFICER_PASSWORD, USER_PASSWORD } from "../helpers/users";
import { Role } from "../../src/sdk";
import { COMMANDS, runHsmctl, type CliIo } from "../../src/cli";

const REPO = join(__dirname, "../..");
const CLI = join(REPO, "dist/src/cli/main.js");
const HAVE_SCRIPT = (() => {
  try {
    execFileSync("script", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  out: Buffer;
}

let td: TestDaemon;
let dir: string;
/** Every password and token the test used: none may ever appear in what hsmctl printed. */
const secrets = new Set<string>([OFFICER_PASSWORD, USER_PASSWORD]);
/** Everything hsmctl printed. */
const transcripts: string[] = [];

/** The environment of an hsmctl child: no HSMCTL_* from outside, HOME in the temp dir. */
function baseEnv(session: string): NodeJS.ProcessEnv {
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
function hsmctl(args: string[], opts: { as?: string; env?: Record<string, string | undefined>; input?: Buffer | string } = {}): Promise<Run> {
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

/** Runs hsmctl and expects exit 0; returns stdout parsed as JSON when `--output json` is among args. */
async function ok(args: string[], opts: Parameters<typeof hsmctl>[1] = {}): Promise<Run> {
  const r = await hsmctl(args, opts);
  expect(r.code, `hsmctl ${args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

async function json<T = Record<string, unknown>>(args: string[], opts: Parameters<typeof hsmctl>[1] = {}): Promise<T> {
  const r = await ok([...args, "--output", "json"], opts);
  return JSON.parse(r.stdout) as T;
}

/** The token in a session file, remembered as a secret. */
function rememberToken(session: string): string {
  const s = JSON.parse(readFileSync(join(dir, `${session}.session.json`), "utf8")) as { token: string };
  secrets.add(s.token);
  return s.token;
}

function file(name: string): string {
  return join(dir, name);
}

function opensslOk(args: string[]): string {
  return execFileSync("openssl", args, { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** Compiles the project (as the other CLI tests do); the CLI must come out of it fresh. */
function build(): Promise<void> {
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
  await td?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("help", () => {
  /** runHsmctl in this process, for the help of every command (no daemon involved). */
  async function inProcess(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
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

  it("documents every command: the global help lists them, each one's --help shows its usage and flags", async () => {
    const g = await ok(["--help"]);
    for (const c of COMMANDS) expect(g.stdout).toContain(c.words.join(" "));
    expect(g.stdout).toContain("exit status");
    for (const c of COMMANDS) {
      const h = await inProcess([...c.words, "--help"]);
      expect(h.code).toBe(0);
      expect(h.stdout).toContain(`usage: hsmctl ${c.words.join(" ")}`);
      for (const flag of Object.keys(c.options)) expect(h.stdout).toContain(`--${flag}`);
      expect(h.stdout).toContain("--output");
    }
    const built = await ok(["key", "import", "--help"]);
    expect(built.stdout).toContain("BYOK");
    const noun = await ok(["crypto", "--help"]);
    expect(noun.stdout).toContain("envelope-encrypt");
    expect((await ok(["help", "audit", "verify"])).stdout).toContain("usage: hsmctl audit verify");
    expect((await ok(["--version"])).stdout).toMatch(/^hsmctl \d+\.\d+\.\d+/);
  });

  it("usage errors exit 2 with the usage line: no command, unknown command, unknown flag, missing verb", async () => {
    const [none, unknown, verb, flag, positional, missing] = await Promise.all([
      hsmctl([]),
      hsmctl(["frobnicate"]),
      hsmctl(["key"]),
      hsmctl(["key", "list", "--colour"]),
      hsmctl(["key", "get", "some-id"]),
      hsmctl(["key", "get"]),
    ]);
    for (const r of [none, unknown, verb, flag, positional, missing]) expect(r.code).toBe(2);
    expect(none.stderr).toContain("missing command");
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    expect(verb.stderr).toContain("needs a verb");
    expect(verb.stderr).toContain("generate-symmetric");
    expect(flag.stderr).toContain("error: unknown option --colour");
    expect(flag.stderr).toContain("usage: hsmctl key list");
    expect(positional.stderr).toContain('unexpected argument "some-id"');
    expect(missing.stderr).toContain("--key-id is required");
  });
});

describe("session", () => {
  it("login saves the session (mode 600, no token printed), whoami shows it, logout ends it", async () => {
    const r = await ok(["login", "--username", "bob"], { as: "bob2", env: { HSMCTL_PASSWORD: USER_PASSWORD } });
    expect(r.stdout).toMatch(/^logged in as bob \(crypto-user\) until \d{4}-/);
    const sessionFile = file("bob2.session.json");
    expect(statSync(sessionFile).mode & 0o777).toBe(0o600);
    const token = rememberToken("bob2");
    expect(r.stdout + r.stderr).not.toContain(token);

    const who = await json<{ username: string; role: string; expired: boolean }>(["whoami"], { as: "bob2" });
    expect(who).toMatchObject({ username: "bob", role: "crypto-user", expired: false });
    expect(JSON.stringify(who)).not.toContain(token);
    expect((await ok(["whoami"], { as: "bob2" })).stdout).toContain("username:");

    const out = await ok(["logout"], { as: "bob2" });
    expect(out.stdout).toContain("logged out bob");
    expect(existsSync(sessionFile)).toBe(false);
    const after = await hsmctl(["key", "list"], { as: "bob2" });
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/^error: UNAUTHENTICATED: not logged in/);
  });

  it("login and logout in JSON", async () => {
    const j = await json<{ username: string; sessionFile: string; expiresAt: string }>(["login", "--username", "bob"], { as: "bob3", env: { HSMCTL_PASSWORD: USER_PASSWORD } });
    rememberToken("bob3");
    expect(j.username).toBe("bob");
    expect(Date.parse(j.expiresAt)).toBeGreaterThan(Date.now());
    expect(Object.keys(j)).not.toContain("token");
    expect(await json(["logout"], { as: "bob3" })).toMatchObject({ username: "bob", loggedOut: true });
  });

  it("a first login that must change its password, then user change-password renews the saved session", async () => {
    await ok(["user", "create", "--username", "officer3", "--role", "co", "--must-change-password"], {
      as: "admin",
      env: { HSMCTL_NEW_PASSWORD: "officer3-first-pass" },
    });
    secrets.add("officer3-first-pass");
    const l = await ok(["login", "--username", "officer3"], { as: "officer3", env: { HSMCTL_PASSWORD: "officer3-first-pass" } });
    rememberToken("officer3");
    expect(l.stdout).toContain("must change its password");
    const blocked = await hsmctl(["user", "list"], { as: "officer3" });
    expect(blocked.code).toBe(1);
    expect(blocked.stderr).toMatch(/^error: [A-Z_]+: /);
    const c = await ok(["user", "change-password"], { as: "officer3", env: { HSMCTL_PASSWORD: "officer3-first-pass", HSMCTL_NEW_PASSWORD: "officer3-second-pass" } });
    secrets.add("officer3-second-pass");
    rememberToken("officer3");
    expect(c.stdout).toContain("password of officer3 changed");
    expect(statSync(file("officer3.session.json")).mode & 0o777).toBe(0o600);
    expect((await ok(["user", "list"], { as: "officer3" })).stdout).toContain("officer3");
  });

  it("a wrong password is UNAUTHENTICATED (exit 1), and no session file is written", async () => {
    await ensureUser(td, "mallory");
    const r = await hsmctl(["login", "--username", "mallory"], { as: "mallory", env: { HSMCTL_PASSWORD: "not-the-password" } });
    secrets.add("not-the-password");
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("error: UNAUTHENTICATED: invalid username or password\n");
    expect(existsSync(file("mallory.session.json"))).toBe(false);
  });

  it("no password: without HSMCTL_PASSWORD and without a terminal it says how to give one (exit 2)", async () => {
    const r = await hsmctl(["login", "--username", "alice"], { as: "nobody" });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("set HSMCTL_PASSWORD");
    expect(r.stderr).toContain("never a flag");
    const flag = await hsmctl(["login", "--username", "alice", "--password", "x"], { as: "nobody" });
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("unknown option --password");
  });

  it("refresh saves a fresh token: the new one works, the old one is refused; no, stale or expired sessions say to log in", async () => {
    await ok(["login", "--username", "bob"], { as: "bob4", env: { HSMCTL_PASSWORD: USER_PASSWORD } });
    const oldToken = rememberToken("bob4");
    const before = JSON.parse(readFileSync(file("bob4.session.json"), "utf8")) as { expiresAt: string };

    const r = await json<{ username: string; role: string; expiresAt: string }>(["refresh"], { as: "bob4" });
    expect(r).toMatchObject({ username: "bob", role: "crypto-user" });
    expect(Object.keys(r)).not.toContain("token");
    const newToken = rememberToken("bob4");
    expect(newToken).not.toBe(oldToken);
    expect(Date.parse(r.expiresAt)).toBeGreaterThanOrEqual(Date.parse(before.expiresAt));
    expect(statSync(file("bob4.session.json")).mode & 0o777).toBe(0o600);
    await ok(["key", "list"], { as: "bob4" });

    // The old token, as another process holding the previous session file would still send it.
    writeFileSync(file("bob4old.session.json"), JSON.stringify({ ...before, token: oldToken }), { mode: 0o600 });
    const stale = await hsmctl(["key", "list"], { as: "bob4old" });
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/^error: UNAUTHENTICATED: /);
    const staleRefresh = await hsmctl(["refresh"], { as: "bob4old" });
    expect(staleRefresh.code).toBe(1);
    expect(staleRefresh.stderr).toMatch(/^error: UNAUTHENTICATED: .*run "hsmctl login --username bob" again\n$/);

    const text = await ok(["refresh"], { as: "bob4" });
    rememberToken("bob4");
    expect(text.stdout).toMatch(/^refreshed the session of bob \(crypto-user\): valid until \d{4}-/);
    await ok(["key", "list"], { as: "bob4" });

    const none = await hsmctl(["refresh"], { as: "nobody-refresh" });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^error: UNAUTHENTICATED: not logged in/);
    writeFileSync(file("expired2.session.json"), JSON.stringify({ version: 1, username: "bob", role: "crypto-user", token: "expired-token-2", expiresAt: "2001-01-01T00:00:00Z" }), { mode: 0o600 });
    secrets.add("expired-token-2");
    const expired = await hsmctl(["refresh"], { as: "expired2" });
    expect(expired.code).toBe(1);
    expect(expired.stderr).toContain("error: UNAUTHENTICATED: the session of bob expired at 2001-01-01T00:00:00Z");
  });

  it("a revoked session file is refused by the server with a hint to log in again", async () => {
    writeFileSync(file("forged.session.json"), JSON.stringify({ version: 1, username: "alice", role: "crypto-user", token: "forged-token-value", expiresAt: "2099-01-01T00:00:00Z" }), { mode: 0o600 });
    secrets.add("forged-token-value");
    const r = await hsmctl(["key", "list"], { as: "forged" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: UNAUTHENTICATED: /);
    expect(r.stderr).toContain('run "hsmctl login --username alice" again');
    writeFileSync(file("expired.session.json"), JSON.stringify({ version: 1, username: "alice", role: "crypto-user", token: "expired-token-value", expiresAt: "2001-01-01T00:00:00Z" }));
    secrets.add("expired-token-value");
    const e = await hsmctl(["key", "list"], { as: "expired" });
    expect(e.code).toBe(1);
    expect(e.stderr).toContain("error: UNAUTHENTICATED: the session of alice expired");
  });

  it("connection settings: a config file, no endpoint, plaintext refused off loopback, unreachable daemon", async () => {
    writeFileSync(file("config.json"), JSON.stringify({ endpoints: [td.grpc], insecurePlaintext: true, output: "json" }));
    writeFileSync(file("bad-config.json"), JSON.stringify({ endpoint: "x:1" }));
    const [viaConfig, badConfig, noEndpoint, remote, down, missingCa] = await Promise.all([
      hsmctl(["key", "list", "--config", file("config.json")], { env: { HSMCTL_ENDPOINTS: undefined, HSMCTL_INSECURE_PLAINTEXT: undefined } }),
      hsmctl(["key", "list", "--config", file("bad-config.json")]),
      hsmctl(["key", "list"], { env: { HSMCTL_ENDPOINTS: undefined } }),
      hsmctl(["key", "list", "--endpoint", "192.0.2.1:7443"]),
      hsmctl(["key", "list", "--endpoint", "127.0.0.1:1", "--timeout", "3"]),
      hsmctl(["key", "list", "--ca", file("nope.pem")], { env: { HSMCTL_INSECURE_PLAINTEXT: undefined } }),
    ]);
    expect(viaConfig.code, viaConfig.stderr).toBe(0);
    expect(JSON.parse(viaConfig.stdout)).toHaveProperty("keys");
    expect(badConfig.code).toBe(2);
    expect(badConfig.stderr).toContain('unknown field "endpoint"');
    expect(noEndpoint.code).toBe(2);
    expect(noEndpoint.stderr).toContain("no endpoint");
    expect(remote.code).toBe(2);
    expect(remote.stderr).toContain("--insecure-plaintext is only for a dev-mode daemon on loopback");
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^error: UNAVAILABLE: /);
    expect(missingCa.code).toBe(2);
    expect(missingCa.stderr).toContain("--ca: cannot read");
  });
});

describe("users (crypto officer)", () => {
  it("create, list, get, lock, unlock, reset-password in text and JSON", async () => {
    const created = await ok(["user", "create", "--username", "carol"], { as: "admin", env: { HSMCTL_NEW_PASSWORD: "carol-pass-1" } });
    secrets.add("carol-pass-1");
    expect(created.stdout).toBe("created crypto-user carol\n");
    const list = await ok(["user", "list"], { as: "admin" });
    expect(list.stdout).toMatch(/^USERNAME\s+ROLE/);
    expect(list.stdout).toMatch(/carol\s+crypto-user\s+no/);
    const users = await json<{ users: { username: string; role: string }[] }>(["user", "list"], { as: "admin" });
    expect(users.users).toContainEqual(expect.objectContaining({ username: "carol", role: "crypto-user" }));
    expect(await json(["user", "get", "--username", "carol"], { as: "admin" })).toMatchObject({ username: "carol", locked: false });

    expect((await ok(["user", "lock", "--username", "carol"], { as: "admin" })).stdout).toBe("locked carol\n");
    const locked = await hsmctl(["login", "--username", "carol"], { as: "carol", env: { HSMCTL_PASSWORD: "carol-pass-1" } });
    expect(locked.code).toBe(1);
    expect(locked.stderr).toMatch(/^error: PERMISSION_DENIED: /);
    expect(await json(["user", "unlock", "--username", "carol"], { as: "admin" })).toMatchObject({ username: "carol", locked: false });
    await ok(["login", "--username", "carol"], { as: "carol", env: { HSMCTL_PASSWORD: "carol-pass-1" } });
    rememberToken("carol");

    const reset = await ok(["user", "reset-password", "--username", "carol"], { as: "admin", env: { HSMCTL_NEW_PASSWORD: "carol-pass-2" } });
    secrets.add("carol-pass-2");
    expect(reset.stdout).toContain("must change it at its next login");
    const again = await ok(["login", "--username", "carol"], { as: "carol", env: { HSMCTL_PASSWORD: "carol-pass-2" } });
    rememberToken("carol");
    expect(again.stdout).toContain("must change its password");
  });

  it("a crypto user may not manage users: PERMISSION_DENIED, exit 1", async () => {
    const r = await hsmctl(["user", "list"], { as: "alice" });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: PERMISSION_DENIED: /);
  });

  it("user delete needs a quorum here: quorum list, approve by two officers, reject, then delete with the request id", async () => {
    await ok(["user", "create", "--username", "dave"], { as: "admin", env: { HSMCTL_NEW_PASSWORD: "dave-pass-1" } });
    await ok(["user", "create", "--username", "erin"], { as: "admin", env: { HSMCTL_NEW_PASSWORD: "erin-pass-1" } });
    secrets.add("dave-pass-1").add("erin-pass-1");

    const first = await hsmctl(["user", "delete", "--username", "dave"], { as: "admin" });
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(/^error: FAILED_PRECONDITION: /);
    const id = /quorum request (\S+) recorded/.exec(first.stderr)?.[1];
    expect(id, first.stderr).toBeDefined();
    expect(first.stderr).toContain(`--quorum-request-id ${id}`);

    const listed = await ok(["quorum", "list", "--status", "pending"], { as: "admin" });
    expect(listed.stdout).toContain(id!);
    expect(listed.stdout).toMatch(/DeleteUser\s+username=dave\s+pending\s+0\/2/);
    const q = await json<{ requests: { id: string; params: Record<string, string> }[] }>(["quorum", "list"], { as: "admin" });
    expect(q.requests.find((r) => r.id === id)?.params).toEqual({ username: "dave" });
    expect(await json(["quorum", "get", "--id", id!], { as: "admin" })).toMatchObject({ id, operation: "DeleteUser", status: "pending" });

    expect((await ok(["quorum", "approve", "--id", id!], { as: "admin" })).stdout).toContain(`approved ${id}: 1 of 2 approvals`);
    const second = await json<{ status: string; duplicate: boolean }>(["quorum", "approve", "--id", id!], { as: "officer2" });
    expect(second).toMatchObject({ status: "approved", duplicate: false });
    expect((await ok(["user", "delete", "--username", "dave", "--quorum-request-id", id!], { as: "admin" })).stdout).toBe("deleted user dave\n");
    const gone = await hsmctl(["user", "get", "--username", "dave"], { as: "admin" });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^error: NOT_FOUND: /);

    const other = await hsmctl(["user", "delete", "--username", "erin"], { as: "admin" });
    const otherId = /quorum request (\S+) recorded/.exec(other.stderr)![1]!;
    expect(await json(["quorum", "reject", "--id", otherId], { as: "officer2" })).toMatchObject({ id: otherId, status: "rejected" });
    const refused = await hsmctl(["user", "delete", "--username", "erin", "--quorum-request-id", otherId], { as: "admin" });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: [A-Z_]+: /);
  });
});

describe("keys", () => {
  const ids: Record<string, string> = {};

  it("generate-symmetric and generate-asymmetric-pair, text and JSON; a repeated --request-id gives the same key", async () => {
    const aes = await ok(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-aes", "--usage", "encrypt,decrypt", "--usage", "wrap", "--usage", "unwrap"]);
    expect(aes.stdout).toMatch(/^id:\s+\S+\nlabel:\s+cli-aes\nspec:\s+aes-256\nusages:\s+encrypt, decrypt, wrap, unwrap/);
    ids.aes = /^id:\s+(\S+)/.exec(aes.stdout)![1]!;
    const [hmac, ec, rsa, ed, exp] = await Promise.all([
      json<{ id: string; spec: string; usages: string[] }>(["key", "generate-symmetric", "--spec", "hmac-sha256", "--label", "cli-hmac"]),
      json<{ id: string; spec: string; publicKeySpki: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-ec", "--request-id", "cli-ec-1"]),
      json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "rsa-2048", "--label", "cli-rsa", "--usage", "sign,verify,encrypt,decrypt"]),
      json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ed25519", "--label", "cli-ed"]),
      json<{ id: string; exportable: boolean }>(["key", "generate-symmetric", "--spec", "aes-128", "--label", "cli-exportable", "--exportable"]),
    ]);
    expect(hmac).toMatchObject({ spec: "hmac-sha256", usages: ["sign", "verify"] });
    expect(ec.spec).toBe("ec-p256");
    expect(createPublicKey({ key: Buffer.from(ec.publicKeySpki, "base64"), format: "der", type: "spki" }).asymmetricKeyType).toBe("ec");
    expect(exp.exportable).toBe(true);
    Object.assign(ids, { hmac: hmac.id, ec: ec.id, rsa: rsa.id, ed: ed.id, exp: exp.id });
    const retried = await json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-ec", "--request-id", "cli-ec-1"]);
    expect(retried.id).toBe(ec.id);

    const wrongKind = await hsmctl(["key", "generate-symmetric", "--spec", "ec-p256", "--label", "x"]);
    expect(wrongKind.code).toBe(2);
    expect(wrongKind.stderr).toContain("use key generate-asymmetric-pair");
    const badSpec = await hsmctl(["key", "generate-symmetric", "--spec", "aes-512", "--label", "x"]);
    expect(badSpec.code).toBe(2);
    expect(badSpec.stderr).toContain('--spec: unknown value "aes-512"');
    expect(badSpec.stderr).toContain("usage: hsmctl key generate-symmetric");
  });

  it("list with filters (every page), get, in text and JSON", async () => {
    const all = await ok(["key", "list"]);
    expect(all.stdout).toMatch(/^ID\s+LABEL\s+SPEC/);
    for (const label of ["cli-aes", "cli-hmac", "cli-ec", "cli-rsa", "cli-ed"]) expect(all.stdout).toContain(label);
    const ecOnly = await json<{ keys: { id: string; spec: string }[] }>(["key", "list", "--spec", "ec-p256"]);
    expect(ecOnly.keys.map((k) => k.id)).toEqual([ids.ec]);
    const prefix = await json<{ keys: { label: string }[] }>(["key", "list", "--label-prefix", "cli-e"]);
    expect(prefix.keys.map((k) => k.label).sort()).toEqual(["cli-ec", "cli-ed", "cli-exportable"]);
    const wrap = await json<{ keys: { id: string }[] }>(["key", "list", "--usage", "wrap"]);
    expect(wrap.keys.map((k) => k.id)).toEqual([ids.aes]);
    expect((await ok(["key", "get", "--key-id", ids.rsa!])).stdout).toMatch(/spec:\s+rsa-2048/);
    expect(await json(["key", "get", "--key-id", ids.ec!])).toMatchObject({ id: ids.ec, owner: "alice", origin: "generated" });
  });

  it("public-key as PEM, DER and JWK, read by openssl pkey -pubin", async () => {
    await ok(["key", "public-key", "--key-id", ids.ec!, "--format", "pem", "--out", "ec-pub.pem"]);
    expect(opensslOk(["pkey", "-pubin", "-in", "ec-pub.pem", "-noout", "-text"])).toContain("prime256v1");
    await ok(["key", "public-key", "--key-id", ids.rsa!, "--format", "der", "--out", "rsa-pub.der"]);
    expect(opensslOk(["pkey", "-pubin", "-inform", "DER", "-in", "rsa-pub.der", "-noout", "-text"])).toContain("2048 bit");
    const pemStdout = await ok(["key", "public-key", "--key-id", ids.ed!]);
    expect(pemStdout.stdout).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    writeFileSync(file("ed-pub.pem"), pemStdout.stdout);
    expect(opensslOk(["pkey", "-pubin", "-in", "ed-pub.pem", "-noout", "-text"])).toContain("ED25519");
    const jwk = await json<{ keyId: string; format: string; jwk: { kty: string; crv: string } }>(["key", "public-key", "--key-id", ids.ec!, "--format", "jwk"]);
    expect(jwk).toMatchObject({ keyId: ids.ec, format: "jwk", jwk: { kty: "EC", crv: "P-256" } });
    const derJson = await json<{ der: string }>(["key", "public-key", "--key-id", ids.ec!, "--format", "der"]);
    expect(Buffer.from(derJson.der, "base64")).toEqual(createPublicKey(readFileSync(file("ec-pub.pem"))).export({ format: "der", type: "spki" }));
    const secret = await hsmctl(["key", "public-key", "--key-id", ids.aes!]);
    expect(secret.code).toBe(1);
    expect(secret.stderr).toMatch(/^error: [A-Z_]+: /);
  });

  it("share and unshare with another crypto user", async () => {
    const shared = await ok(["key", "share", "--key-id", ids.ec!, "--username", "bob"]);
    expect(shared.stdout).toContain("now shared with: bob");
    const bobSigns = await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "-", "--out", "bob-sig.der"], { as: "bob", input: "from bob" });
    expect(bobSigns.stdout).toContain("bytes written to bob-sig.der");
    expect(await json(["key", "unshare", "--key-id", ids.ec!, "--username", "bob"])).toMatchObject({ id: ids.ec, sharedWith: [] });
    const refused = await hsmctl(["crypto", "sign", "--key-id", ids.ec!, "--in", "-"], { as: "bob", input: "from bob" });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: (NOT_FOUND|PERMISSION_DENIED): /);
  });

  it("import-public (PEM, DER, JWK) verifies what openssl signed; wrong formats are refused before the server", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    writeFileSync(file("partner.pem"), publicKey.export({ format: "pem", type: "spki" }));
    writeFileSync(file("partner.der"), publicKey.export({ format: "der", type: "spki" }));
    writeFileSync(file("partner.jwk"), JSON.stringify(publicKey.export({ format: "jwk" })));
    writeFileSync(file("partner-key.pem"), privateKey.export({ format: "pem", type: "pkcs8" }));
    writeFileSync(file("partner-msg"), "signed by the partner");
    opensslOk(["dgst", "-sha256", "-sign", "partner-key.pem", "-out", "partner-sig.der", "partner-msg"]);
    const [pem, der, jwk] = await Promise.all([
      json<{ id: string; publicOnly: boolean; origin: string }>(["key", "import-public", "--in", "partner.pem", "--format", "pem", "--label", "partner-pem"]),
      json<{ id: string }>(["key", "import-public", "--in", "partner.der", "--format", "der", "--label", "partner-der"]),
      json<{ id: string }>(["key", "import-public", "--in", "partner.jwk", "--label", "partner-jwk"]),
    ]);
    expect(pem).toMatchObject({ publicOnly: true, origin: "public" });
    const verified = await Promise.all([pem.id, der.id, jwk.id].map((id) => ok(["crypto", "verify", "--key-id", id, "--in", "partner-msg", "--signature", "partner-sig.der"])));
    for (const v of verified) expect(v.stdout).toContain("signature valid");
    const [pemAsDer, priv, notJwk, badFormat] = await Promise.all([
      hsmctl(["key", "import-public", "--in", "partner.pem", "--format", "der", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner-key.pem", "--format", "pem", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner.der", "--format", "jwk", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner.pem", "--format", "x509", "--label", "x"]),
    ]);
    for (const r of [pemAsDer, priv, notJwk, badFormat]) expect(r.code).toBe(2);
    expect(pemAsDer.stderr).toContain("is PEM, not DER");
    expect(priv.stderr).toContain("holds a private key");
    expect(notJwk.stderr).toContain("not a JWK");
    expect(badFormat.stderr).toContain("--format: must be one of pem, der, jwk");
  });

  it("key import (BYOK) of an openssl-generated EC key: signs in the HSM, openssl verifies with its own public key", async () => {
    opensslOk(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "byok-ec.pem"]);
    opensslOk(["pkey", "-in", "byok-ec.pem", "-pubout", "-out", "byok-ec.pub"]);
    const key = await json<{ id: string; origin: string; spec: string }>(["key", "import", "--spec", "ec-p256", "--in", "byok-ec.pem", "--label", "byok-ec"]);
    expect(key).toMatchObject({ origin: "imported", spec: "ec-p256" });
    writeFileSync(file("byok-msg"), "imported key, signed in the HSM");
    await ok(["crypto", "sign", "--key-id", key.id, "--in", "byok-msg", "--out", "byok-sig.der"]);
    expect(opensslOk(["dgst", "-sha256", "-verify", "byok-ec.pub", "-signature", "byok-sig.der", "byok-msg"])).toContain("Verified OK");

    // SEC1 ("EC PRIVATE KEY") works too; a key of another curve is refused before anything is sent.
    opensslOk(["ec", "-in", "byok-ec.pem", "-out", "byok-ec-sec1.pem"]);
    expect((await ok(["key", "import", "--spec", "ec-p256", "--in", "byok-ec-sec1.pem", "--label", "byok-sec1"])).stdout).toMatch(/origin:\s+imported/);
    const wrongCurve = await hsmctl(["key", "import", "--spec", "ec-p384", "--in", "byok-ec.pem", "--label", "x"]);
    expect(wrongCurve.code).toBe(2);
    expect(wrongCurve.stderr).toContain("holds an EC key on prime256v1, which is not --spec ec-p384");
  });

  it("key import of a raw AES key: what the HSM encrypts, Node decrypts with the same bytes", async () => {
    const raw = Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 7 + 3) & 0xff));
    writeFileSync(file("byok-aes.key"), raw);
    const key = await json<{ id: string }>(["key", "import", "--spec", "aes-256", "--in", "byok-aes.key", "--label", "byok-aes"]);
    const enc = await json<{ iv: string; ciphertext: string }>(["crypto", "encrypt", "--key-id", key.id, "--in", "-", "--aad", "ctx"], { input: "raw import" });
    const ct = Buffer.from(enc.ciphertext, "base64");
    const d = createDecipheriv("aes-256-gcm", raw, Buffer.from(enc.iv, "base64"));
    d.setAAD(Buffer.from("ctx"));
    d.setAuthTag(ct.subarray(ct.length - 16));
    expect(Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString()).toBe("raw import");
    const short = await hsmctl(["key", "import", "--spec", "aes-128", "--in", "byok-aes.key", "--label", "x"]);
    expect(short.code).toBe(2);
    expect(short.stderr).toContain("needs exactly 16 raw bytes");
    const pemForAes = await hsmctl(["key", "import", "--spec", "aes-256", "--in", "byok-ec.pem", "--label", "x"]);
    expect(pemForAes.code).toBe(2);
    expect(pemForAes.stderr).toContain("takes the raw key bytes");
    const notAKey = await hsmctl(["key", "import", "--spec", "rsa-2048", "--in", "byok-msg", "--label", "x"]);
    expect(notAKey.code).toBe(2);
    expect(notAKey.stderr).toContain("is neither a PEM private key nor a DER");
  });

  describe("crypto", () => {
    it("sign: ECDSA (DER and raw), RSA and Ed25519 signatures verified by openssl; stdin and stdout", async () => {
      writeFileSync(file("msg"), "the message to sign\n");
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--out", "ec-sig.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "ec-sig.der", "msg"])).toContain("Verified OK");

      await ok(["key", "public-key", "--key-id", ids.rsa!, "--out", "rsa-pub.pem"]);
      const rsaSig = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--in", "-", "--out", "-"], { input: readFileSync(file("msg")) });
      writeFileSync(file("rsa-sig.bin"), rsaSig.out);
      expect(rsaSig.out.length).toBe(256);
      expect(opensslOk(["dgst", "-sha256", "-verify", "rsa-pub.pem", "-signature", "rsa-sig.bin", "msg"])).toContain("Verified OK");
      const pss = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--algorithm", "rsa-pss-sha256", "--in", "msg"]);
      writeFileSync(file("rsa-pss.bin"), pss.out);
      expect(opensslOk(["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-verify", "rsa-pub.pem", "-signature", "rsa-pss.bin", "msg"])).toContain("Verified OK");

      await ok(["crypto", "sign", "--key-id", ids.ed!, "--in", "msg", "--out", "ed-sig.bin"]);
      expect(opensslOk(["pkeyutl", "-verify", "-pubin", "-inkey", "ed-pub.pem", "-rawin", "-in", "msg", "-sigfile", "ed-sig.bin"])).toContain("Signature Verified Successfully");

      const raw = await json<{ signature: string; algorithm: string }>(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--format", "raw"]);
      expect(raw.algorithm).toBe("ecdsa-sha256");
      const rs = Buffer.from(raw.signature, "base64");
      expect(rs.length).toBe(64);
      expect(nodeVerify("sha256", readFileSync(file("msg")), { key: createPublicKey(readFileSync(file("ec-pub.pem"))), dsaEncoding: "ieee-p1363" }, rs)).toBe(true);
      writeFileSync(file("ec-sig.raw"), rs);
      await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "ec-sig.raw", "--format", "raw"]);

      const digest = createHash("sha256").update(readFileSync(file("msg"))).digest();
      writeFileSync(file("msg.sha256"), digest);
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg.sha256", "--digest", "--out", "ec-digest-sig.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "ec-digest-sig.der", "msg"])).toContain("Verified OK");

      const hex = await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--encoding", "hex"]);
      expect(hex.stdout).toMatch(/^[0-9a-f]{64}\n$/);
      const rawForRsa = await hsmctl(["crypto", "sign", "--key-id", ids.rsa!, "--in", "msg", "--format", "raw"]);
      expect(rawForRsa.code).toBe(2);
      expect(rawForRsa.stderr).toContain("--format raw is for ECDSA");
    });

    it("verify: exit 0 for a valid signature, 1 for an invalid one (text and JSON)", async () => {
      const good = await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "ec-sig.der"]);
      expect(good.stdout).toBe(`signature valid (key ${ids.ec}, ecdsa-sha256)\n`);
      writeFileSync(file("msg-tampered"), "the message to sign!\n");
      const bad = await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg-tampered", "--signature", "ec-sig.der"]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain("error: signature INVALID");
      const badJson = await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg-tampered", "--signature", "ec-sig.der", "-o", "json"]);
      expect(badJson.code).toBe(1);
      expect(JSON.parse(badJson.stdout)).toMatchObject({ valid: false });
      const hmacSig = await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--out", "hmac.bin"]);
      expect(hmacSig.stdout).toContain("32 bytes");
      expect(await json(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac.bin"])).toMatchObject({ valid: true, algorithm: "hmac-sha256" });
      // --mac-length: the leftmost bytes of the full tag, verified as such; a changed byte is invalid.
      await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--mac-length", "16", "--out", "hmac16.bin"]);
      expect(readFileSync(file("hmac16.bin"))).toEqual(readFileSync(file("hmac.bin")).subarray(0, 16));
      expect(await json(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac16.bin", "--mac-length", "16"])).toMatchObject({ valid: true });
      const flipped = readFileSync(file("hmac16.bin"));
      flipped[15]! ^= 1;
      writeFileSync(file("hmac16-bad.bin"), flipped);
      expect((await hsmctl(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac16-bad.bin", "--mac-length", "16"])).code).toBe(1);
      // Under the floor, or on a key that is not HMAC: the daemon's INVALID_ARGUMENT, named.
      const short = await hsmctl(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--mac-length", "8"]);
      expect(short.code).not.toBe(0);
      expect(short.stderr).toMatch(/INVALID_ARGUMENT.*mac_length/);
      const onEc = await hsmctl(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--mac-length", "16"]);
      expect(onEc.code).not.toBe(0);
      expect(onEc.stderr).toMatch(/INVALID_ARGUMENT.*mac_length/);
    });

    it("sign and verify a 1 MiB file (over the 64 KiB message limit): hashed locally, checked by openssl; Ed25519 and HMAC refused before sending", async () => {
      const big = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
      writeFileSync(file("big.bin"), big);
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "big.bin", "--out", "big-ec.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "big-ec.der", "big.bin"])).toContain("Verified OK");
      const valid = await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "big.bin", "--signature", "big-ec.der"]);
      expect(valid.stdout).toBe(`signature valid (key ${ids.ec}, ecdsa-sha256)\n`);
      const flipped = Buffer.from(big);
      flipped[big.length - 1]! ^= 1;
      writeFileSync(file("big-flipped.bin"), flipped);
      expect((await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "big-flipped.bin", "--signature", "big-ec.der"])).code).toBe(1);
      // From stdin too, RSA-PSS: the same streaming hash.
      const pss = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--algorithm", "rsa-pss-sha256", "--in", "-", "--out", "-"], { input: big });
      writeFileSync(file("big-pss.bin"), pss.out);
      expect(opensslOk(["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-verify", "rsa-pub.pem", "-signature", "big-pss.bin", "big.bin"])).toContain("Verified OK");

      // Ed25519 (PureEdDSA) and HMAC sign the message itself: over the limit, refused here (exit 2) with why.
      for (const [id, name] of [[ids.ed!, "ed25519"], [ids.hmac!, "hmac-sha256"]] as const) {
        const r = await hsmctl(["crypto", "sign", "--key-id", id, "--in", "big.bin"]);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain(`--in: big.bin holds 1048576 bytes (1.0 MiB); ${name} is computed over the whole message in the HSM`);
        expect(r.stderr).toContain("at most 65536 bytes (64.0 KiB) per message (its limits.maxPayloadBytes; if yours allows more, give --max-message-bytes)");
      }
      const piped = await hsmctl(["crypto", "verify", "--key-id", ids.hmac!, "--in", "-", "--signature", "hmac.bin"], { input: big });
      expect(piped.code).toBe(2);
      expect(piped.stderr).toContain("--in: - holds more than 65536 bytes; hmac-sha256 is computed over the whole message");
      // Lifting the client's check sends it: the daemon itself answers RESOURCE_EXHAUSTED (its limit is intact).
      const sent = await hsmctl(["crypto", "sign", "--key-id", ids.ed!, "--in", "big.bin", "--max-message-bytes", String(big.length)]);
      expect(sent.code).toBe(1);
      expect(sent.stderr).toContain("error: RESOURCE_EXHAUSTED: message is 1048576 bytes; the limit is 65536 (limits.maxPayloadBytes)");
      // At the limit it is sent whole, and openssl checks the Ed25519 signature over it.
      writeFileSync(file("limit.bin"), big.subarray(0, 65536));
      await ok(["crypto", "sign", "--key-id", ids.ed!, "--in", "limit.bin", "--out", "limit-ed.bin"]);
      expect(opensslOk(["pkeyutl", "-verify", "-pubin", "-inkey", "ed-pub.pem", "-rawin", "-in", "limit.bin", "-sigfile", "limit-ed.bin"])).toContain("Signature Verified Successfully");
    });

    it("encrypt and decrypt: AES-GCM with AAD in the HCE1 file, CBC with --iv-out, RSA-OAEP; a wrong AAD writes nothing", async () => {
      const plaintext = Buffer.from(Array.from({ length: 5000 }, (_, i) => i & 0xff));
      writeFileSync(file("plain.bin"), plaintext);
      expect((await ok(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "plain.bin", "--out", "plain.hce", "--aad", "record-42"])).stdout).toContain("written to plain.hce");
      const hce = readFileSync(file("plain.hce"));
      expect(hce.subarray(0, 4).toString()).toBe("HCE1");
      expect(hce[4]).toBe(1); // aes-gcm
      expect(hce[5]).toBe(12); // IV length
      await ok(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "plain.hce", "--out", "plain.out", "--aad", "record-42"]);
      expect(readFileSync(file("plain.out"))).toEqual(plaintext);
      const wrongAad = await hsmctl(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "plain.hce", "--out", "plain.bad", "--aad", "record-43"]);
      expect(wrongAad.code).toBe(1);
      expect(wrongAad.stderr).toMatch(/^error: INVALID_ARGUMENT: /);
      expect(existsSync(file("plain.bad"))).toBe(false);

      await ok(["crypto", "encrypt", "--key-id", ids.aes!, "--algorithm", "aes-cbc-pad", "--in", "plain.bin", "--iv-out", "cbc.iv", "--out", "cbc.bin"]);
      expect(readFileSync(file("cbc.iv")).length).toBe(16);
      expect(readFileSync(file("cbc.bin")).length).toBe(5008);
      const cbc = await ok(["crypto", "decrypt", "--key-id", ids.aes!, "--algorithm", "aes-cbc-pad", "--in", "cbc.bin", "--iv", "cbc.iv", "--out", "-"]);
      expect(cbc.out).toEqual(plaintext);
      const noIv = await hsmctl(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "cbc.bin", "--out", "x"]);
      expect(noIv.code).toBe(2);
      expect(noIv.stderr).toContain('is not an hsmctl ciphertext file (no "HCE1" header)');

      const rsa = await ok(["crypto", "encrypt", "--key-id", ids.rsa!, "--in", "-", "--out", "rsa.hce"], { input: "to rsa" });
      expect(rsa.stdout).toContain("ciphertext:");
      const back = await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--in", "rsa.hce"]);
      expect(back.stdout).toBe("to rsa");
      // An OAEP label: Node's crypto encrypts under the public key with it; hsmctl decrypts only with it.
      const pub = createPublicKey(readFileSync(file("rsa-pub.pem")));
      writeFileSync(file("labelled.bin"), publicEncrypt({ key: pub, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("invoice-7") }, Buffer.from("labelled")));
      const withLabel = await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--algorithm", "rsa-oaep-sha256", "--in", "labelled.bin", "--oaep-label", "invoice-7"]);
      expect(withLabel.stdout).toBe("labelled");
      const noLabel = await hsmctl(["crypto", "decrypt", "--key-id", ids.rsa!, "--algorithm", "rsa-oaep-sha256", "--in", "labelled.bin"]);
      expect(noLabel.code).not.toBe(0);
      expect(noLabel.stdout).toBe("");
      await ok(["crypto", "encrypt", "--key-id", ids.rsa!, "--in", "-", "--out", "rsa-label.hce", "--oaep-label", "invoice-7"], { input: "round trip" });
      expect((await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--in", "rsa-label.hce", "--oaep-label", "invoice-7"])).stdout).toBe("round trip");
      const onAes = await hsmctl(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "-", "--oaep-label", "x"], { input: "x" });
      expect(onAes.code).not.toBe(0);
      expect(onAes.stderr).toMatch(/INVALID_ARGUMENT.*oaep_label/);
      const viaJson = await json<{ algorithm: string; iv: string; ciphertext: string }>(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "-"], { input: "json" });
      expect(viaJson.algorithm).toBe("aes-gcm");
      expect(Buffer.from(viaJson.iv, "base64").length).toBe(12);
      expect(Buffer.from(viaJson.ciphertext, "base64").length).toBe(4 + 16);
    });

    it("wrap and unwrap: an exportable key wrapped out and back decrypts what the original encrypted", async () => {
      await ok(["crypto", "wrap", "--wrapping-key-id", ids.aes!, "--key-id", ids.exp!, "--out", "exp.wrapped"]);
      expect(readFileSync(file("exp.wrapped")).length).toBe(24);
      const unwrapped = await json<{ id: string; origin: string; spec: string }>([
        "crypto", "unwrap", "--unwrapping-key-id", ids.aes!, "--in", "exp.wrapped", "--spec", "aes-128", "--label", "cli-unwrapped",
      ]);
      expect(unwrapped).toMatchObject({ origin: "unwrapped", spec: "aes-128" });
      await ok(["crypto", "encrypt", "--key-id", ids.exp!, "--in", "-", "--out", "exp.hce"], { input: "same key" });
      expect((await ok(["crypto", "decrypt", "--key-id", unwrapped.id, "--in", "exp.hce"])).stdout).toBe("same key");
      const notExportable = await hsmctl(["crypto", "wrap", "--wrapping-key-id", ids.aes!, "--key-id", ids.hmac!, "--out", "x.wrapped"]);
      expect(notExportable.code).toBe(1);
      expect(notExportable.stderr).toMatch(/^error: [A-Z_]+: /);
    });

    it("random: hex, base64 JSON and a file", async () => {
      expect((await ok(["crypto", "random", "--length", "32", "--encoding", "hex"])).stdout).toMatch(/^[0-9a-f]{64}\n$/);
      const j = await json<{ random: string; length: number }>(["crypto", "random", "--length", "16"]);
      expect(Buffer.from(j.random, "base64").length).toBe(16);
      await ok(["crypto", "random", "--length", "48", "--out", "random.bin"]);
      expect(readFileSync(file("random.bin")).length).toBe(48);
      expect(statSync(file("random.bin")).mode & 0o777).toBe(0o600);
      const zero = await hsmctl(["crypto", "random", "--length", "0"]);
      expect(zero.code).toBe(2);
      expect(zero.stderr).toContain("--length: must be from 1");
    });

    it("envelope-encrypt and envelope-decrypt: a file across many frames round trips; damage, truncation and a wrong context write nothing", async () => {
      const data = Buffer.alloc(300_000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 8)) & 0xff;
      writeFileSync(file("big.bin"), data);
      const enc = await json<{ bytesIn: number; bytesOut: number; keyId: string }>([
        "crypto", "envelope-encrypt", "--in", "big.bin", "--out", "big.hsme", "--key-id", ids.aes!, "--context", "purpose=test", "--context", "owner=alice",
      ]);
      expect(enc).toMatchObject({ bytesIn: data.length, keyId: ids.aes });
      expect(enc.bytesOut).toBe(statSync(file("big.hsme")).size);
      const dec = await ok(["crypto", "envelope-decrypt", "--in", "big.hsme", "--out", "big.out", "--context", "purpose=test"]);
      expect(dec.stdout).toContain(`with key ${ids.aes}, context `);
      expect(readFileSync(file("big.out")).equals(data)).toBe(true);

      const piped = await ok(["crypto", "envelope-encrypt", "--in", "-", "--out", "-", "--key-id", ids.aes!], { input: "small, through pipes" });
      const back = await ok(["crypto", "envelope-decrypt", "--in", "-", "--out", "-"], { input: piped.out });
      expect(back.stdout).toBe("small, through pipes");
      await ok(["crypto", "envelope-encrypt", "--in", "-", "--out", "empty.hsme", "--key-id", ids.aes!], { input: "" });
      await ok(["crypto", "envelope-decrypt", "--in", "empty.hsme", "--out", "empty.out"]);
      expect(readFileSync(file("empty.out")).length).toBe(0);

      const msg = readFileSync(file("big.hsme"));
      const flipped = Buffer.from(msg);
      flipped[200_000] ^= 0x01;
      writeFileSync(file("big.flipped"), flipped);
      writeFileSync(file("big.truncated"), msg.subarray(0, msg.length - 100));
      const results = await Promise.all([
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.flipped", "--out", "out.flipped"]),
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.truncated", "--out", "out.truncated"]),
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.hsme", "--out", "out.context", "--context", "purpose=other"]),
      ]);
      for (const [r, out] of [
        [results[0]!, "out.flipped"],
        [results[1]!, "out.truncated"],
        [results[2]!, "out.context"],
      ] as const) {
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toMatch(/^error: INVALID_ARGUMENT: envelope: /);
        expect(r.stderr).toContain(`nothing written to ${out}`);
        expect(existsSync(file(out))).toBe(false);
      }
      expect(readdirSync(dir).filter((f) => f.endsWith(".partial"))).toEqual([]);
      const missing = await hsmctl(["crypto", "envelope-encrypt", "--in", "no-such-file", "--out", "x.hsme", "--key-id", ids.aes!]);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toContain("--in: cannot read no-such-file: no such file or directory");
      const badContext = await hsmctl(["crypto", "envelope-encrypt", "--in", "big.bin", "--out", "x.hsme", "--key-id", ids.aes!, "--context", "novalue"]);
      expect(badContext.code).toBe(2);
      expect(badContext.stderr).toContain("--context: expected KEY=VALUE");
    });
  });

  it("bad input: missing files, unknown keys, wrong formats, each with a clear message and a non-zero exit", async () => {
    const cases: [string[], number, RegExp][] = [
      [["crypto", "sign", "--key-id", ids.ec!, "--in", "does-not-exist"], 2, /--in: cannot read does-not-exist: no such file or directory/],
      [["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "nope.sig"], 2, /--signature: cannot read nope.sig: no such file/],
      [["key", "get", "--key-id", "no-such-key"], 1, /^error: NOT_FOUND: /],
      [["crypto", "sign", "--key-id", "no-such-key", "--in", "msg"], 1, /^error: NOT_FOUND: /],
      [["key", "delete", "--key-id", "no-such-key"], 1, /^error: NOT_FOUND: /],
      [["key", "import-public", "--in", "msg", "--format", "pem", "--label", "x"], 2, /is not a PEM public key/],
      [["key", "import", "--spec", "ec-p256", "--in", "nowhere.pem", "--label", "x"], 2, /--in: cannot read nowhere.pem/],
      [["crypto", "encrypt", "--key-id", ids.ec!, "--in", "msg"], 2, /cannot encrypt/],
      [["crypto", "decrypt", "--key-id", ids.aes!, "--in", "msg", "--algorithm", "aes-gcm"], 2, /not an hsmctl ciphertext file/],
      [["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--algorithm", "md5"], 2, /--algorithm: unknown value "md5"/],
      [["key", "list", "--output", "yaml"], 2, /--output: must be text or json/],
      [["audit", "verify", "--file", "no-audit.log"], 2, /--file: cannot verify no-audit.log/],
    ];
    const runs = await Promise.all(cases.map(([args]) => hsmctl(args)));
    runs.forEach((r, i) => {
      const [args, code, pattern] = cases[i]!;
      expect(r.code, `hsmctl ${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(pattern);
      if (code === 2) expect(r.stderr).toContain(`usage: hsmctl ${args[0]} ${args[1]}`);
      expect(r.stdout).toBe("");
    });
  });

  it("key delete: the key is gone afterwards", async () => {
    const k = await json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-128", "--label", "to-delete"]);
    expect((await ok(["key", "delete", "--key-id", k.id])).stdout).toBe(`deleted key ${k.id}\n`);
    const gone = await hsmctl(["key", "get", "--key-id", k.id]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^error: NOT_FOUND: /);
  });
});

describe("cluster and audit (crypto officer)", () => {
  it("cluster status on a single node; the join commands answer the server's error; cluster join without a usable hsmd config fails", async () => {
    expect((await ok(["cluster", "status"], { as: "admin" })).stdout).toMatch(/^single node \(embedded store, revision \d+\)/);
    expect(await json(["cluster", "status"], { as: "admin" })).toMatchObject({ store: "embedded", nodes: [] });
    const joins = await hsmctl(["cluster", "join-requests"], { as: "admin" });
    expect(joins.code).toBe(1);
    expect(joins.stderr).toMatch(/^error: FAILED_PRECONDITION: .*not part of a cluster/);
    const pin = "so-pin-never-printed";
    secrets.add(pin);
    const approve = await hsmctl(["cluster", "approve", "--node", "n2", "--fingerprint", "ab".repeat(32)], { as: "admin", env: { HSMCTL_SO_PIN: pin } });
    expect(approve.code).toBe(1);
    expect(approve.stderr).toMatch(/^error: [A-Z_]+: /);
    const badFingerprint = await hsmctl(["cluster", "approve", "--node", "n2", "--fingerprint", "abc"], { as: "admin", env: { HSMCTL_SO_PIN: pin } });
    expect(badFingerprint.code).toBe(2);
    expect(badFingerprint.stderr).toContain("--fingerprint: must be 64 hex digits");
    const noPin = await hsmctl(["cluster", "approve", "--node", "n2", "--fingerprint", "ab".repeat(32)], { as: "admin" });
    expect(noPin.code).toBe(2);
    expect(noPin.stderr).toContain("set HSMCTL_SO_PIN");
    const remove = await hsmctl(["cluster", "remove", "--node", "n2"], { as: "admin" });
    expect(remove.code).toBe(1);
    expect(remove.stderr).toMatch(/^error: [A-Z_]+: /);
    // cluster join runs this host's hsmd: without its config it is a usage error; with a config hsmd
    // refuses, hsmd's reason and exit status come through (the joining itself: cluster-join.test.ts).
    const noConfig = await hsmctl(["cluster", "join"], { as: "nobody" });
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toContain("--hsmd-config");
    writeFileSync(file("bad-hsmd.json"), JSON.stringify({ node: { id: "x" }, surprise: true }));
    const badConfig = await hsmctl(["cluster", "join", "--hsmd-config", file("bad-hsmd.json")], { as: "nobody" });
    expect(badConfig.code).toBe(1);
    expect(badConfig.stderr).toContain("configuration rejected");
  });

  it("audit tail (last N, filters) and audit verify on the daemon and offline, in text and JSON", async () => {
    const tail = await ok(["audit", "tail", "--last", "5"], { as: "admin" });
    expect(tail.stdout.trim().split("\n")).toHaveLength(6);
    expect(tail.stdout).toMatch(/^SEQ\s+TIME\s+USER\s+OPERATION/);
    const logins = await json<{ entries: { operation: string; user?: string; target: string; status: string }[] }>(
      ["audit", "tail", "--operation", "Login", "--target", "mallory", "--last", "100"],
      { as: "admin" },
    );
    expect(logins.entries.length).toBeGreaterThan(0);
    expect(logins.entries.every((e) => e.operation === "Login" && e.target === "mallory")).toBe(true);
    expect(logins.entries.some((e) => e.status === "UNAUTHENTICATED")).toBe(true);
    const byAlice = await json<{ entries: { user: string }[] }>(["audit", "tail", "--user", "alice", "--last", "3"], { as: "admin" });
    expect(byAlice.entries).toHaveLength(3);
    expect(byAlice.entries.every((e) => e.user === "alice")).toBe(true);
    const badTime = await hsmctl(["audit", "tail", "--from", "yesterday"], { as: "admin" });
    expect(badTime.code).toBe(2);

    expect((await ok(["audit", "verify"], { as: "admin" })).stdout).toMatch(/^ok: \d+ entries, last hash [0-9a-f]{64}\n$/);
    const logFile = join(td.dataDir, "audit", "audit.log");
    const offline = await json<{ ok: boolean; entries: number }>(["audit", "verify", "--file", logFile], { as: "nobody" });
    expect(offline.ok).toBe(true);
    expect(offline.entries).toBeGreaterThan(10);
    const lines = readFileSync(logFile, "utf8").split("\n");
    const at = lines.findIndex((l, i) => i >= 3 && l.includes('"status":"OK"'));
    lines[at] = lines[at]!.replace('"status":"OK"', '"status":"PERMISSION_DENIED"');
    writeFileSync(file("tampered.log"), lines.join("\n"));
    const tampered = await hsmctl(["audit", "verify", "--file", "tampered.log"], { as: "nobody" });
    expect(tampered.code).toBe(1);
    expect(tampered.stderr).toContain(`TAMPERED at line ${at + 1} (seq ${at + 1}): edited`);
    const cuAudit = await hsmctl(["audit", "tail"], { as: "alice" });
    expect(cuAudit.code).toBe(1);
    expect(cuAudit.stderr).toMatch(/^error: PERMISSION_DENIED: /);
  });
});

describe.skipIf(!HAVE_SCRIPT)("on a terminal (script(1) gives hsmctl a pty)", () => {
  /** Runs hsmctl under script(1); `answer` is typed once `prompt` has appeared. Output is stdout and stderr merged, as on a terminal. */
  function onTerminal(args: string[], opts: { as?: string; env?: Record<string, string | undefined>; prompt?: string; answer?: string } = {}): Promise<{ code: number | null; output: string }> {
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

  it("login prompts for the password without echoing it", async () => {
    const r = await onTerminal(["login", "--username", "alice"], { as: "tty", prompt: "Password for alice: ", answer: USER_PASSWORD });
    expect(r.code, r.output).toBe(0);
    expect(r.output).toContain("Password for alice: ");
    expect(r.output).toContain("logged in as alice");
    expect(r.output).not.toContain(USER_PASSWORD);
    rememberToken("tty");
  });

  it("refuses raw binary output to a terminal, draws a progress bar for envelope encryption", async () => {
    const r = await onTerminal(["crypto", "random", "--length", "16"], { as: "tty" });
    expect(r.code).toBe(2);
    expect(r.output).toContain("refusing to write binary random bytes to a terminal");
    writeFileSync(file("tty.bin"), Buffer.alloc(1_000_000, 7));
    const aes = await json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "tty-kek"], { as: "tty" });
    const p = await onTerminal(["crypto", "envelope-encrypt", "--in", "tty.bin", "--out", "tty.hsme", "--key-id", aes.id], { as: "tty" });
    expect(p.code, p.output).toBe(0);
    expect(p.output).toMatch(/encrypting \[#+\] 100%/);
    expect(p.output).toContain("encrypted tty.bin");
  });
});

describe("secrets", () => {
  it("no password, PIN or session token ever appeared in hsmctl's stdout or stderr", () => {
    expect(transcripts.length).toBeGreaterThan(100);
    const all = transcripts.join("\n");
    for (const s of secrets) expect(all.includes(s), `a secret (${s.slice(0, 3)}…) was printed`).toBe(false);
  });

  it("session files are mode 600", () => {
    for (const f of readdirSync(dir).filter((n) => n.endsWith(".session.json") && !n.startsWith("forged") && !n.startsWith("expired"))) {
      expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    }
  });
});
