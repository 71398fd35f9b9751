/**
 * hsmctl end to end: the BUILT CLI (`node dist/src/cli/main.js`, compiled in beforeAll) as a child
 * process against a real daemon on a SoftHSM2 token, its endpoint, passwords and session file given
 * through the environment. Results are checked with openssl and Node's crypto; every stdout and
 * stderr is kept and searched at the end for passwords and session tokens.
 *
 * Here: help, sessions, users, cluster and audit, the terminal, secrets. Keys: hsmctl-keys.test.ts;
 * crypto: hsmctl-crypto.test.ts. The daemon, the users and the hsmctl runner: test/helpers/hsmctl.ts.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ensureUser, USER_PASSWORD } from "../helpers/users";
import { COMMANDS } from "../../src/cli";
import { dir, file, HAVE_SCRIPT, hsmctl, inProcess, json, ok, onTerminal, rememberToken, secrets, td, transcripts, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

describe("help", () => {
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
    const logins = await json<{ entries: { operation: string; user?: string; target: string; status: string }[] }>(["audit", "tail", "--operation", "Login", "--target", "mallory", "--last", "100"], {
      as: "admin",
    });
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
