/**
 * Users, sessions, lockout, token revocation, M-of-N quorum and the audit log, through real gRPC
 * against real in-process daemons on fresh SoftHSM2 tokens. Every refusal is checked for its exact
 * status and, where a person has to act on it, for the words that tell them what to do.
 *
 * Daemons (one at a time: SoftHSM2 is initialized once per process and finalized by each stop):
 * - "main" (`auth.maxFailedLogins: 3`): first login, password and name rules, lockout (also across a
 *   restart), token revocation, malformed tokens, then the audit log of everything that happened.
 * - "short lifetimes" (`sessionTtlSeconds: 4`, quorum `ttlSeconds: 2`): expired sessions, the SDK's
 *   refresh in the last quarter of a session, expired quorum requests.
 * - "quorum" (`DeleteUser: 2, ShareKey: 2`): the whole M-of-N flow.
 */
import { spawn, spawnSync } from "node:child_process";
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { firstOfficerPasswordFile } from "../../src/daemon";
import { hashEntry, verifyAuditLog, type AuditRecord, type StoredAuditEntry } from "../../src/audit";
import { UserServiceClient, type Session } from "../../src/gen/hsm/v1/users";
import { HsmClient, HsmClientError, KeySpec, QuorumStatus, Role, SigningAlgorithm, type AuditEntry } from "../../src/sdk";
import { MAIN_JS, REPO, distIsFresh } from "../helpers/daemon-process";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { OFFICER_PASSWORD, USER_PASSWORD } from "../helpers/users";

// ---- fixtures: every secret this file sends, so that the audit log can be searched for them ----

const OFFICER2_PASSWORD = "second-officer-pw-1";
const CHANGED_PASSWORD = "changed-by-itself-1";
const RESET_PASSWORD = "reset-by-officer-77";
const AFTER_RESET_PASSWORD = "after-the-reset-99";
const WRONG_PASSWORD = "wrong-password-x1";
const WRONG_PASSWORD_2 = "wrong-password-y2";
const WRONG_PASSWORD_3 = "wrong-password-z3";
const PASSWORD_8 = "eight-ch"; // exactly 8: the shortest accepted
const PASSWORD_64 = "p".repeat(60) + "-64!"; // exactly 64: the longest accepted
const PASSWORD_7 = "seven-c";
const PASSWORD_65 = "q".repeat(65);
const PLAINTEXT = Buffer.from("audit must never hold this plaintext: 4f1d9c0e-sign-me", "utf8");

/** Session tokens seen by this file (raw logins), searched for in the audit log. */
const tokensSeen = new Set<string>();

/**
 * What a revoked session answers: "session revoked", or "invalid session token" once the daemon's
 * 30-second sweep has purged the dead session record (it may run between two calls of a test).
 */
const REVOKED = /session revoked|invalid session token/;

const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const CU = Role.ROLE_CRYPTO_USER;
const CO = Role.ROLE_CRYPTO_OFFICER;

// ---- helpers ----

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sleepUntil = (t: number) => sleep(Math.max(0, t - Date.now()));

/** Clients opened by a test file section, closed in its afterAll. */
let clients: HsmClient[] = [];
function track(c: HsmClient): HsmClient {
  clients.push(c);
  return c;
}
function closeClients(): void {
  for (const c of clients) c.close();
  clients = [];
}

const newClient = (td: TestDaemon) => track(new HsmClient({ endpoint: td.grpc, defaultDeadlineMs: 20_000 }));

/** An SDK client logged in as `user`. */
async function login(td: TestDaemon, user: string, password: string): Promise<HsmClient> {
  const c = newClient(td);
  await c.login(user, password);
  return c;
}

/** A client that sends `token` as is: never refreshes it (useToken without an expiry). */
function tokenClient(td: TestDaemon, token: string): HsmClient {
  const c = newClient(td);
  c.useToken(token);
  return c;
}

/** Login through the generated gRPC client, to hold the session token itself (the SDK never shows it). */
function rawLogin(td: TestDaemon, username: string, password: string): Promise<Session> {
  const client = new UserServiceClient(td.grpc, grpc.credentials.createInsecure());
  return new Promise<Session>((resolve, reject) =>
    client.login({ username, password }, (err, s) => {
      client.close();
      if (err) reject(HsmClientError.from(err));
      else {
        tokensSeen.add(s.token);
        resolve(s);
      }
    }),
  );
}

/** The call must reject with an HsmClientError of exactly `codeName` whose details contain every phrase. */
async function expectError(p: Promise<unknown>, codeName: string, ...phrases: (string | RegExp)[]): Promise<HsmClientError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${codeName}, but the call succeeded`).toBeInstanceOf(HsmClientError);
  const e = err as HsmClientError;
  expect({ codeName: e.codeName, details: e.details }).toEqual({ codeName, details: expect.any(String) });
  for (const phrase of phrases) {
    if (typeof phrase === "string") expect(e.details).toContain(phrase);
    else expect(e.details).toMatch(phrase);
  }
  expect(e.details).not.toMatch(/CKR_|internal error/);
  return e;
}

/**
 * The first crypto officer, logged in: the one-time password changed to OFFICER_PASSWORD if that was
 * not done yet. One cached client per daemon endpoint (a restart gets a new one).
 */
const officers = new Map<string, HsmClient>();
async function officer(td: TestDaemon): Promise<HsmClient> {
  const cached = officers.get(td.grpc);
  if (cached) return cached;
  const c = newClient(td);
  const otpFile = firstOfficerPasswordFile(td.dataDir);
  if (existsSync(otpFile)) {
    const otp = readFileSync(otpFile, "utf8").trim();
    await c.login("admin", otp);
    await c.changePassword(otp, OFFICER_PASSWORD);
  } else {
    await c.login("admin", OFFICER_PASSWORD);
  }
  officers.set(td.grpc, c);
  return c;
}

async function createUser(td: TestDaemon, username: string, role: Role = CU, password = USER_PASSWORD): Promise<void> {
  await (await officer(td)).createUser({ username, role, password });
}

/** Creates a crypto user and logs it in. */
async function cuClient(td: TestDaemon, username: string): Promise<HsmClient> {
  await createUser(td, username);
  return login(td, username, USER_PASSWORD);
}

/** The compiled CLI (`npx tsc -p tsconfig.json`, as test/helpers/daemon-process.ts buildDist does), started early, awaited where needed. */
function buildDist(): Promise<{ code: number | null; output: string }> {
  if (distIsFresh()) return Promise.resolve({ code: 0, output: "" });
  return new Promise((resolve) => {
    const child = spawn("npx", ["tsc", "-p", "tsconfig.json"], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    child.on("error", (e) => resolve({ code: -1, output: String(e) }));
    child.on("close", (code) => resolve({ code, output }));
  });
}
let built: Promise<{ code: number | null; output: string }>;
beforeAll(() => {
  built = buildDist();
});

afterAll(() => {
  closeClients();
});

// =================================================================================================

describe("main daemon (auth.maxFailedLogins 3)", () => {
  let td: TestDaemon;
  let otp: string;

  beforeAll(async () => {
    td = await startTestDaemon({ config: { auth: { maxFailedLogins: 3 } } });
    otp = readFileSync(firstOfficerPasswordFile(td.dataDir), "utf8").trim();
  });
  afterAll(async () => {
    closeClients();
    officers.clear();
    await td?.cleanup();
  });

  describe("first login of the first crypto officer", () => {
    it("the one-time password allows nothing but ChangePassword; after the change the OTP file is gone, the OTP and the old token are refused", async () => {
      const otpFile = firstOfficerPasswordFile(td.dataDir);
      expect(existsSync(otpFile)).toBe(true);
      expect(otp).toMatch(/^[A-Za-z0-9_-]{24}$/);

      // A second session of the same one-time login, whose token we hold.
      const before = await rawLogin(td, "admin", otp);
      expect(before.mustChangePassword).toBe(true);

      const c = newClient(td);
      const session = await c.login("admin", otp);
      expect(session).toMatchObject({ username: "admin", role: CO, mustChangePassword: true });
      expect(c.session?.mustChangePassword).toBe(true);

      await expectError(c.listUsers(), "FAILED_PRECONDITION", "ChangePassword");
      await expectError(c.createUser({ username: "too-early", role: CU, password: USER_PASSWORD }), "FAILED_PRECONDITION", "ChangePassword");
      await expectError(c.queryAuditLog(), "FAILED_PRECONDITION", "ChangePassword");
      await expectError(tokenClient(td, before.token).getUser({ username: "admin" }), "FAILED_PRECONDITION", "ChangePassword");
      // Refresh is not among the calls allowed before the change either.
      await expectError(c.refreshSession(), "FAILED_PRECONDITION", "ChangePassword");

      // The new password is held to the policy too.
      await expectError(c.changePassword(otp, PASSWORD_7), "INVALID_ARGUMENT", "8 to 64 characters");
      await expectError(c.changePassword(otp, otp), "INVALID_ARGUMENT", "must differ");

      const changed = await c.changePassword(otp, OFFICER_PASSWORD);
      expect(changed.mustChangePassword).toBe(false);
      expect(c.session?.mustChangePassword).toBe(false);
      expect(existsSync(otpFile)).toBe(false);

      // The client carries on with its new token.
      const users = await c.listUsers();
      expect(users.users.map((u) => u.username)).toContain("admin");
      expect(users.users.find((u) => u.username === "admin")).toMatchObject({ role: CO, mustChangePassword: false, locked: false });

      // The token from before the change is revoked; the OTP no longer logs in; the new password does.
      await expectError(tokenClient(td, before.token).getUser({ username: "admin" }), "UNAUTHENTICATED", REVOKED);
      await expectError(newClient(td).login("admin", otp), "UNAUTHENTICATED", "invalid username or password");
      const again = await login(td, "admin", OFFICER_PASSWORD);
      expect(again.session).toMatchObject({ username: "admin", role: CO, mustChangePassword: false });
      officers.set(td.grpc, again);
      // The successful login cleared the failed one.
      expect((await again.getUser({ username: "admin" })).failedLogins).toBe(0);
    });
  });

  describe("password and username rules", () => {
    it("CreateUser refuses 7- and 65-character passwords, bad names, ROLE_UNSPECIFIED and duplicates, naming the rule", async () => {
      const co = await officer(td);
      await expectError(co.createUser({ username: "pw-short", role: CU, password: PASSWORD_7 }), "INVALID_ARGUMENT", "8 to 64 characters", "got 7");
      await expectError(co.createUser({ username: "pw-long", role: CU, password: PASSWORD_65 }), "INVALID_ARGUMENT", "8 to 64 characters", "got 65");
      await expectError(co.createUser({ username: "bad name!", role: CU, password: USER_PASSWORD }), "INVALID_ARGUMENT", '"bad name!"', "lowercase letters, digits");
      await expectError(co.createUser({ username: "", role: CU, password: USER_PASSWORD }), "INVALID_ARGUMENT", "username");
      await expectError(co.createUser({ username: "no-role", role: Role.ROLE_UNSPECIFIED, password: USER_PASSWORD }), "INVALID_ARGUMENT", "role must be");

      // Exactly 8 and exactly 64 characters are accepted, and log in.
      await co.createUser({ username: "pw-eight", role: CU, password: PASSWORD_8 });
      await co.createUser({ username: "pw-sixtyfour", role: CU, password: PASSWORD_64 });
      expect((await login(td, "pw-eight", PASSWORD_8)).session?.username).toBe("pw-eight");
      expect((await login(td, "pw-sixtyfour", PASSWORD_64)).session?.username).toBe("pw-sixtyfour");

      await expectError(co.createUser({ username: "pw-eight", role: CU, password: USER_PASSWORD }), "ALREADY_EXISTS", "user pw-eight already exists");
      // None of the refused users exists.
      const names = (await co.listUsers()).users.map((u) => u.username);
      expect(names).not.toContain("pw-short");
      expect(names).not.toContain("pw-long");
      expect(names).not.toContain("no-role");
    });

    it("only crypto officers manage users: a CU calling CreateUser is PERMISSION_DENIED, saying why", async () => {
      const cu = await cuClient(td, "not-an-officer");
      await expectError(cu.createUser({ username: "sneaky", role: CO, password: USER_PASSWORD }), "PERMISSION_DENIED", "CreateUser is for crypto officer", "not-an-officer is a crypto user");
    });
  });

  describe("lockout after maxFailedLogins (3)", () => {
    it("the third wrong password locks; then even the right one is refused, open sessions are revoked, and a CO unlocks", async () => {
      const co = await officer(td);
      const victim = await cuClient(td, "lock-me");
      await victim.generateRandom({ length: 8 });

      const w1 = await expectError(newClient(td).login("lock-me", WRONG_PASSWORD), "UNAUTHENTICATED", "invalid username or password");
      expect((await co.getUser({ username: "lock-me" })).failedLogins).toBe(1);
      await expectError(newClient(td).login("lock-me", WRONG_PASSWORD_2), "UNAUTHENTICATED", "invalid username or password");
      await expectError(newClient(td).login("lock-me", WRONG_PASSWORD_3), "PERMISSION_DENIED", "lock-me is locked after 3 failed logins", "a crypto officer must unlock it");
      // The session opened before the lockout no longer works.
      await expectError(victim.generateRandom({ length: 8 }), "UNAUTHENTICATED", REVOKED);
      // Even the right password is refused now.
      await expectError(newClient(td).login("lock-me", USER_PASSWORD), "PERMISSION_DENIED", "locked", "a crypto officer must unlock it");

      const locked = await co.getUser({ username: "lock-me" });
      expect(locked).toMatchObject({ username: "lock-me", locked: true, lockReason: "failed_logins", failedLogins: 3 });

      // An unknown user and a bad user name answer exactly what a wrong password answers.
      const unknown = await expectError(newClient(td).login("no-such-user", WRONG_PASSWORD), "UNAUTHENTICATED");
      const badName = await expectError(newClient(td).login("Not A Name!", WRONG_PASSWORD), "UNAUTHENTICATED");
      expect(unknown.details).toBe(w1.details);
      expect(badName.details).toBe(w1.details);

      const unlocked = await co.unlockUser({ username: "lock-me" });
      expect(unlocked).toMatchObject({ locked: false, lockReason: "", failedLogins: 0 });
      const back = await login(td, "lock-me", USER_PASSWORD);
      expect((await back.generateRandom({ length: 8 })).random).toHaveLength(8);
    });

    it("a successful login resets the count of failures", async () => {
      const co = await officer(td);
      await createUser(td, "reset-count");
      await expectError(newClient(td).login("reset-count", WRONG_PASSWORD), "UNAUTHENTICATED");
      await expectError(newClient(td).login("reset-count", WRONG_PASSWORD_2), "UNAUTHENTICATED");
      await login(td, "reset-count", USER_PASSWORD);
      expect((await co.getUser({ username: "reset-count" })).failedLogins).toBe(0);
      await expectError(newClient(td).login("reset-count", WRONG_PASSWORD_3), "UNAUTHENTICATED", "invalid username or password");
      expect((await co.getUser({ username: "reset-count" })).locked).toBe(false);
    });

    it("the count of failures survives a daemon restart: 2 failures, restart, 1 more locks (sessions survive the restart too)", async () => {
      await createUser(td, "persist-count");
      const session = await rawLogin(td, "persist-count", USER_PASSWORD);
      await expectError(newClient(td).login("persist-count", WRONG_PASSWORD), "UNAUTHENTICATED");
      await expectError(newClient(td).login("persist-count", WRONG_PASSWORD_2), "UNAUTHENTICATED");

      closeClients();
      officers.clear();
      td = await td.restart();

      expect((await (await officer(td)).getUser({ username: "persist-count" })).failedLogins).toBe(2);
      // A session from before the restart is still valid (sessions live in the store).
      expect((await tokenClient(td, session.token).generateRandom({ length: 4 })).random).toHaveLength(4);
      await expectError(newClient(td).login("persist-count", WRONG_PASSWORD_3), "PERMISSION_DENIED", "locked after 3 failed logins");
      await expectError(tokenClient(td, session.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      expect(await (await officer(td)).getUser({ username: "persist-count" })).toMatchObject({ locked: true, failedLogins: 3 });
    });

    it("a wrong current password in ChangePassword counts as a failed login (PERMISSION_DENIED)", async () => {
      const co = await officer(td);
      const cu = await cuClient(td, "change-wrong");
      await expectError(cu.changePassword(WRONG_PASSWORD, CHANGED_PASSWORD), "PERMISSION_DENIED", "current password is incorrect");
      expect((await co.getUser({ username: "change-wrong" })).failedLogins).toBe(1);
    });
  });

  describe("token revocation", () => {
    it("Logout: the token stops working at once", async () => {
      await createUser(td, "rev-logout");
      const s = await rawLogin(td, "rev-logout", USER_PASSWORD);
      const c = tokenClient(td, s.token);
      await c.generateRandom({ length: 4 });
      await c.logout();
      expect(c.session).toBeUndefined();
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", "invalid session token");
      await expectError(tokenClient(td, s.token).logout(), "UNAUTHENTICATED");
    });

    it("the user's own ChangePassword: its other sessions stop working, the changing client carries on", async () => {
      await createUser(td, "rev-change");
      const other = await rawLogin(td, "rev-change", USER_PASSWORD);
      const mine = await rawLogin(td, "rev-change", USER_PASSWORD);
      const c = tokenClient(td, mine.token);
      const fresh = await c.changePassword(USER_PASSWORD, CHANGED_PASSWORD);
      expect(fresh).toMatchObject({ username: "rev-change", mustChangePassword: false });
      expect((await c.generateRandom({ length: 4 })).random).toHaveLength(4);
      await expectError(tokenClient(td, other.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      await expectError(tokenClient(td, mine.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      await expectError(newClient(td).login("rev-change", USER_PASSWORD), "UNAUTHENTICATED", "invalid username or password");
      await login(td, "rev-change", CHANGED_PASSWORD);
    });

    it("LockUser: the user's sessions stop working and it cannot log in until unlocked", async () => {
      const co = await officer(td);
      await createUser(td, "rev-lock");
      const s = await rawLogin(td, "rev-lock", USER_PASSWORD);
      const locked = await co.lockUser({ username: "rev-lock" });
      expect(locked).toMatchObject({ locked: true, lockReason: "officer" });
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      await expectError(newClient(td).login("rev-lock", USER_PASSWORD), "PERMISSION_DENIED", "locked by a crypto officer", "must unlock it");
      await co.unlockUser({ username: "rev-lock" });
      // Unlocking does not bring the old session back.
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      await login(td, "rev-lock", USER_PASSWORD);
      // A CO cannot lock itself.
      await expectError(co.lockUser({ username: "admin" }), "FAILED_PRECONDITION", "cannot lock itself");
    });

    it("DeleteUser: the user's sessions stop working; a new user of the same name does not inherit them", async () => {
      const co = await officer(td);
      await createUser(td, "rev-delete");
      const s = await rawLogin(td, "rev-delete", USER_PASSWORD);
      await co.deleteUser({ username: "rev-delete" });
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED");
      await expectError(co.getUser({ username: "rev-delete" }), "NOT_FOUND", "user rev-delete not found");
      await createUser(td, "rev-delete");
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED");
    });

    it("ResetPassword by a CO: the user's sessions stop working; it must change the new password before anything else", async () => {
      const co = await officer(td);
      await createUser(td, "rev-reset");
      const s = await rawLogin(td, "rev-reset", USER_PASSWORD);
      const reset = await co.resetPassword({ username: "rev-reset", newPassword: RESET_PASSWORD });
      expect(reset).toMatchObject({ username: "rev-reset", mustChangePassword: true });
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", REVOKED);
      await expectError(newClient(td).login("rev-reset", USER_PASSWORD), "UNAUTHENTICATED", "invalid username or password");

      const c = newClient(td);
      expect(await c.login("rev-reset", RESET_PASSWORD)).toMatchObject({ mustChangePassword: true });
      await expectError(c.generateRandom({ length: 4 }), "FAILED_PRECONDITION", "ChangePassword");
      await expectError(c.listKeys(), "FAILED_PRECONDITION", "ChangePassword");
      await c.changePassword(RESET_PASSWORD, AFTER_RESET_PASSWORD);
      expect((await c.generateRandom({ length: 4 })).random).toHaveLength(4);

      // The reset policy applies, and a CO resets others, not itself.
      await expectError(co.resetPassword({ username: "rev-reset", newPassword: PASSWORD_7 }), "INVALID_ARGUMENT", "8 to 64 characters");
      await expectError(co.resetPassword({ username: "admin", newPassword: RESET_PASSWORD }), "FAILED_PRECONDITION", "use ChangePassword");
      await expectError(co.resetPassword({ username: "nobody-here", newPassword: RESET_PASSWORD }), "NOT_FOUND", "user nobody-here not found");
    });

    it("RefreshSession: a fresh token, the old one stops working", async () => {
      await createUser(td, "rev-refresh");
      const s = await rawLogin(td, "rev-refresh", USER_PASSWORD);
      const c = tokenClient(td, s.token);
      const fresh = await c.refreshSession();
      expect(new Date(fresh.expiresAt).getTime()).toBeGreaterThanOrEqual(new Date(s.expiresAt).getTime());
      await c.generateRandom({ length: 4 });
      await expectError(tokenClient(td, s.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", "invalid session token");
    });

    it("no token, a malformed token, an unknown token, a non-Bearer header: UNAUTHENTICATED saying what is wrong", async () => {
      await expectError(newClient(td).generateRandom({ length: 4 }), "UNAUTHENTICATED", "log in", "Bearer");
      await expectError(newClient(td).listUsers(), "UNAUTHENTICATED", "log in");
      await expectError(tokenClient(td, "abc").generateRandom({ length: 4 }), "UNAUTHENTICATED", "invalid session token");
      await expectError(tokenClient(td, "A".repeat(43)).generateRandom({ length: 4 }), "UNAUTHENTICATED", "invalid session token");
      await expectError(
        newClient(td).generateRandom({ length: 4 }, { metadata: { authorization: "Basic YWRtaW46cGFzcw==" } }),
        "UNAUTHENTICATED",
        "`Bearer <token>`",
      );
      await expectError(newClient(td).logout(), "UNAUTHENTICATED");
    });
  });

  describe("audit log", () => {
    let cu: HsmClient;
    let keyId: string;
    let auditFile: string;
    let work: string;

    beforeAll(async () => {
      work = mkdtempSync(join(tmpdir(), "hsmd-audit-copies-"));
      auditFile = td.daemon.config.audit.file;
      expect(auditFile).toBe(join(td.dataDir, "audit", "audit.log"));

      // Allowed and denied calls with known secrets.
      cu = await cuClient(td, "audit-cu");
      const other = await cuClient(td, "audit-other");
      const key = await cu.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "audit-key" });
      keyId = key.id;
      const { signature } = await cu.sign({ keyId, algorithm: ECDSA, message: PLAINTEXT }, { metadata: { "x-request-id": "audit-sign-1" } });
      const { pem } = await cu.getPublicKey({ keyId });
      expect(verifySignature("sha256", PLAINTEXT, createPublicKey(pem), signature)).toBe(true);
      await expectError(other.sign({ keyId, algorithm: ECDSA, message: PLAINTEXT }), "NOT_FOUND", `key ${keyId} not found`);
      await expectError(cu.listUsers(), "PERMISSION_DENIED");
      await expectError(newClient(td).login("audit-cu", WRONG_PASSWORD), "UNAUTHENTICATED", "invalid username or password");
      await expectError(newClient(td).generateRandom({ length: 4 }), "UNAUTHENTICATED");
      await rawLogin(td, "audit-cu", USER_PASSWORD);
    });
    afterAll(() => {
      rmSync(work, { recursive: true, force: true });
    });

    it("a CU may neither query nor verify the audit log (PERMISSION_DENIED)", async () => {
      await expectError(cu.queryAuditLog(), "PERMISSION_DENIED", "QueryAuditLog is for crypto officer", "audit-cu is a crypto user");
      await expectError(cu.verifyAuditLog(), "PERMISSION_DENIED", "VerifyAuditLog is for crypto officer");
    });

    it("QueryAuditLog as a CO: entries carry operation, user, role, status, keyId, requestId, client; filter by user", async () => {
      const co = await officer(td);
      const { entries } = await co.queryAuditLog({ user: "audit-cu", limit: 1000 });
      expect(entries.length).toBeGreaterThan(0);
      for (const e of entries) expect(e.user).toBe("audit-cu");
      for (const e of entries) {
        expect(e.role).toBe("CU");
        expect(e.requestId).not.toBe("");
        expect(e.client).toMatch(/127\.0\.0\.1/);
        expect(e.node).toBe("test-node");
        expect(e.hash).toMatch(/^[0-9a-f]{64}$/);
        expect(e.time).toMatch(/^\d{4}-\d{2}-\d{2}T/);
      }
      const find = (pred: (e: AuditEntry) => boolean, what: string) => {
        const e = entries.find(pred);
        expect(e, what).toBeDefined();
        return e!;
      };
      find((e) => e.operation === "Login" && e.status === "OK", "a successful login");
      find((e) => e.operation === "GenerateKey" && e.status === "OK" && e.keyId === keyId, "the key creation with its id");
      const sign = find((e) => e.operation === "Sign" && e.status === "OK", "the sign");
      expect(sign).toMatchObject({ keyId, requestId: "audit-sign-1" });
      find((e) => e.operation === "ListUsers" && e.status === "PERMISSION_DENIED", "a denied user-management call");
      find((e) => e.operation === "QueryAuditLog" && e.status === "PERMISSION_DENIED", "the denied audit query");
      // Requests without an x-request-id get a generated one.
      expect(find((e) => e.operation === "GenerateKey", "GenerateKey").requestId).toMatch(/^[0-9a-f-]{36}$/);

      // Entries of the others: no audit-cu entries in a query for admin.
      const admin = await co.queryAuditLog({ user: "admin", limit: 1000 });
      expect(admin.entries.length).toBeGreaterThan(0);
      for (const e of admin.entries) expect(e).toMatchObject({ user: "admin", role: "CO" });
      expect(admin.entries.some((e) => e.operation === "CreateUser" && e.target === "audit-cu" && e.status === "OK")).toBe(true);
    });

    it("denied and unauthenticated calls are recorded too: a failed login names its target, not a user", async () => {
      const co = await officer(td);
      const logins = (await co.queryAuditLog({ operation: "Login", limit: 1000 })).entries;
      const failed = logins.find((e) => e.target === "audit-cu" && e.status === "UNAUTHENTICATED");
      expect(failed, "the failed login of audit-cu").toBeDefined();
      expect(failed!.user).toBe("");
      expect(logins.some((e) => e.target === "lock-me" && e.status === "PERMISSION_DENIED" && e.user === "")).toBe(true);
      const noSession = (await co.queryAuditLog({ operation: "GenerateRandom", limit: 1000 })).entries.filter((e) => e.status === "UNAUTHENTICATED");
      expect(noSession.length).toBeGreaterThan(0);
      expect(noSession.some((e) => e.user === "")).toBe(true);
    });

    it("filter by keyId: every entry about the key, allowed and denied, from its owner and others", async () => {
      const co = await officer(td);
      const { entries } = await co.queryAuditLog({ keyId, limit: 1000 });
      for (const e of entries) expect(e.keyId).toBe(keyId);
      expect(entries.map((e) => `${e.operation}:${e.user}:${e.status}`)).toEqual(
        expect.arrayContaining(["GenerateKey:audit-cu:OK", "Sign:audit-cu:OK", "GetPublicKey:audit-cu:OK", "Sign:audit-other:NOT_FOUND"]),
      );
      // Filters combine (AND) and page.
      const page1 = await co.queryAuditLog({ keyId, user: "audit-cu", limit: 2 });
      expect(page1.entries).toHaveLength(2);
      expect(page1.nextAfterSeq).toBe(page1.entries[1]!.seq);
      const page2 = await co.queryAuditLog({ keyId, user: "audit-cu", limit: 2, afterSeq: page1.nextAfterSeq });
      expect(page2.entries[0]!.seq).toBeGreaterThan(page1.entries[1]!.seq);
      for (const e of [...page1.entries, ...page2.entries]) expect(e).toMatchObject({ keyId, user: "audit-cu" });
      await expectError(co.queryAuditLog({ limit: 1001 }), "INVALID_ARGUMENT", "at most 1000");
      await expectError(co.queryAuditLog({ from: "yesterday" }), "INVALID_ARGUMENT", "ISO 8601");
    });

    it("the audit file holds no password, session token or plaintext", () => {
      const text = readFileSync(auditFile, "utf8");
      expect(text.length).toBeGreaterThan(0);
      const secrets: Record<string, string> = {
        otp,
        OFFICER_PASSWORD,
        USER_PASSWORD,
        OFFICER2_PASSWORD,
        CHANGED_PASSWORD,
        RESET_PASSWORD,
        AFTER_RESET_PASSWORD,
        WRONG_PASSWORD,
        WRONG_PASSWORD_2,
        WRONG_PASSWORD_3,
        PASSWORD_8,
        PASSWORD_64,
        PASSWORD_7,
        PASSWORD_65,
        "plaintext utf8": PLAINTEXT.toString("utf8"),
        "plaintext base64": PLAINTEXT.toString("base64"),
        "plaintext base64url": PLAINTEXT.toString("base64url"),
        "plaintext hex": PLAINTEXT.toString("hex"),
      };
      expect(tokensSeen.size).toBeGreaterThan(5);
      for (const [i, t] of [...tokensSeen].entries()) secrets[`token #${i}`] = t;
      const found = Object.entries(secrets)
        .filter(([, v]) => text.includes(v))
        .map(([k]) => k);
      expect(found).toEqual([]);
      // And every line is one of the allow-listed fields only.
      for (const line of text.trimEnd().split("\n")) {
        const keys = Object.keys(JSON.parse(line) as object);
        expect(keys.every((k) => ["seq", "prev", "hash", "time", "node", "user", "role", "operation", "keyId", "target", "status", "requestId", "client", "detail"].includes(k))).toBe(true);
      }
    });

    it("VerifyAuditLog over gRPC: ok, across the daemon restart; the offline verify agrees", async () => {
      const co = await officer(td);
      const v = await co.verifyAuditLog();
      expect(v.problems).toEqual([]);
      expect(v.ok).toBe(true);
      expect(v.entries).toBeGreaterThan(50n);
      expect(v.lastHash).toMatch(/^[0-9a-f]{64}$/);
      // The file (with the VerifyAuditLog entry appended since) still contains that state.
      const offline = await verifyAuditLog(auditFile, { expectLastHash: v.lastHash, minEntries: Number(v.entries) });
      expect(offline.ok).toBe(true);
      // One unbroken chain over every line, across the daemon restart earlier in this file.
      const lines = readFileSync(auditFile, "utf8").trimEnd().split("\n");
      expect(offline.ok && offline.entries).toBe(lines.length);
    });

    describe("tampering with a copy of the log is found, at the right line", () => {
      let lines: string[];
      const K = 5; // 1-based line tampered with
      let n = 0;

      /** Writes `content` lines to a fresh copy and verifies it. */
      async function verifyCopy(name: string, content: string[]) {
        const path = join(work, name);
        writeFileSync(path, content.map((l) => `${l}\n`).join(""));
        return verifyAuditLog(path);
      }

      beforeAll(() => {
        const copy = join(work, "pristine.log");
        copyFileSync(auditFile, copy);
        lines = readFileSync(copy, "utf8").split("\n");
        expect(lines.pop()).toBe(""); // ends with a newline
        n = lines.length;
        expect(n).toBeGreaterThan(20);
      });

      it("the untouched copy verifies", async () => {
        const r = await verifyCopy("same.log", lines);
        expect(r).toMatchObject({ ok: true, entries: n });
      });

      it("a field edited in place: edited, at that line", async () => {
        const rec = JSON.parse(lines[K - 1]!) as AuditRecord;
        const edited = { ...rec, status: rec.status === "OK" ? "PERMISSION_DENIED" : "OK" };
        const copy = [...lines];
        copy[K - 1] = JSON.stringify(edited);
        const r = await verifyCopy("edited.log", copy);
        expect(r.ok).toBe(false);
        expect(!r.ok && r.problem).toMatchObject({ kind: "edited", line: K, seq: K });
      });

      it("a line edited and re-hashed: the next line's chain breaks (broken-chain, at the next line)", async () => {
        const rec = JSON.parse(lines[K - 1]!) as AuditRecord;
        const { seq, prev, hash: _old, ...entry } = rec;
        void _old;
        const forged = { ...entry, user: "someone-else" } as StoredAuditEntry;
        const copy = [...lines];
        copy[K - 1] = JSON.stringify({ seq, prev, hash: hashEntry(seq, prev, forged), ...forged });
        const r = await verifyCopy("rehashed.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "broken-chain", line: K + 1, seq: K + 1 });
      });

      it("a line deleted: deleted, at the line after the gap", async () => {
        const copy = lines.filter((_, i) => i !== K - 1);
        const r = await verifyCopy("deleted.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "deleted", line: K, seq: K + 1 });
        expect(!r.ok && r.problem.message).toContain(`seq ${K} is missing`);
      });

      it("two lines swapped: reordered, at the first line out of place", async () => {
        const copy = [...lines];
        [copy[K - 1], copy[K]] = [copy[K]!, copy[K - 1]!];
        const r = await verifyCopy("swapped.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "reordered", line: K, seq: K + 1 });
      });

      it("a copy of an earlier line inserted: inserted, at the copy", async () => {
        const copy = [...lines];
        copy.splice(K - 1, 0, lines[1]!); // line 2 copied before line K
        const r = await verifyCopy("inserted-earlier.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K, seq: 2 });
      });

      it("a copy of a later line inserted: inserted, at the copy", async () => {
        const copy = [...lines];
        copy.splice(K - 1, 0, lines[K + 3]!); // line K+4 copied before line K
        const r = await verifyCopy("inserted-later.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K, seq: K + 4 });
      });

      it("a line duplicated in place: inserted, at the duplicate", async () => {
        const copy = [...lines];
        copy.splice(K, 0, lines[K - 1]!);
        const r = await verifyCopy("duplicated.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K + 1, seq: K });
      });

      it("a garbled line: malformed, at that line", async () => {
        const copy = [...lines];
        copy[K - 1] = lines[K - 1]!.slice(0, 40);
        const r = await verifyCopy("garbled.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "malformed", line: K });
      });

      it("the tail cut off: undetectable alone, truncated against a saved count or last hash", async () => {
        const copy = lines.slice(0, n - 3);
        const path = join(work, "truncated.log");
        writeFileSync(path, copy.map((l) => `${l}\n`).join(""));
        expect(await verifyAuditLog(path)).toMatchObject({ ok: true, entries: n - 3 });
        const lastHash = (JSON.parse(lines[n - 1]!) as AuditRecord).hash;
        const byHash = await verifyAuditLog(path, { expectLastHash: lastHash });
        expect(!byHash.ok && byHash.problem).toMatchObject({ kind: "truncated", line: n - 2 });
        const byCount = await verifyAuditLog(path, { minEntries: n });
        expect(!byCount.ok && byCount.problem).toMatchObject({ kind: "truncated", line: n - 2 });
      });

      it("`hsmd audit verify FILE` (built CLI): exit 0 on the real log, 1 on a tampered copy, 2 on a missing file", async () => {
        const b = await built;
        expect(b.code, `npx tsc -p tsconfig.json failed:\n${b.output}`).toBe(0);
        const run = (file: string) => spawnSync(process.execPath, [MAIN_JS, "audit", "verify", file], { encoding: "utf8" });

        const ok = run(auditFile);
        expect({ status: ok.status, stderr: ok.stderr }).toEqual({ status: 0, stderr: "" });
        expect(ok.stdout).toMatch(/^ok: \d+ entries, last hash [0-9a-f]{64}\n$/);

        const tampered = [...lines];
        tampered[K - 1] = JSON.stringify({ ...(JSON.parse(lines[K - 1]!) as AuditRecord), operation: "Forged" });
        const path = join(work, "cli-tampered.log");
        writeFileSync(path, tampered.map((l) => `${l}\n`).join(""));
        const bad = run(path);
        expect(bad.status).toBe(1);
        expect(bad.stdout).toContain(`TAMPERED at line ${K} (seq ${K}): edited`);

        const missing = run(join(work, "no-such.log"));
        expect(missing.status).toBe(2);
        expect(missing.stderr).toContain("does not exist");
      });
    });
  });
});

// =================================================================================================

describe("short lifetimes (sessionTtlSeconds 4, quorum ttlSeconds 2)", () => {
  let td: TestDaemon;
  /** Logged in at the start: the SDK client refreshes in the last quarter; the raw token just expires. */
  let refresher: HsmClient;
  let idle: HsmClient;
  let expiring: Session;

  beforeAll(async () => {
    td = await startTestDaemon({ config: { auth: { sessionTtlSeconds: 4, quorum: { ttlSeconds: 2, operations: { DeleteUser: 2 } } } } });
    const co = await officer(td);
    for (const u of ["ttl-refresh", "ttl-expire", "ttl-idle"]) await co.createUser({ username: u, role: CU, password: USER_PASSWORD });
    refresher = await login(td, "ttl-refresh", USER_PASSWORD);
    idle = await login(td, "ttl-idle", USER_PASSWORD);
    expiring = await rawLogin(td, "ttl-expire", USER_PASSWORD);
  });
  afterAll(async () => {
    closeClients();
    officers.clear();
    await td?.cleanup();
  });

  it("the SDK refreshes a session in its last quarter: the call succeeds and the expiry moves later", async () => {
    const before = refresher.session!.expiresAt.getTime();
    await sleepUntil(before - 800); // ~3.2 s into a 4 s session: past the SDK's refresh point, before expiry
    expect((await refresher.generateRandom({ length: 4 })).random).toHaveLength(4);
    const after = refresher.session!.expiresAt.getTime();
    expect(after).toBeGreaterThan(before);
    expect(refresher.session?.username).toBe("ttl-refresh");
  });

  it("an expired token answers UNAUTHENTICATED saying expired; the SDK cannot revive an expired session", async () => {
    await sleepUntil(new Date(expiring.expiresAt).getTime() + 300);
    await expectError(tokenClient(td, expiring.token).generateRandom({ length: 4 }), "UNAUTHENTICATED", "session expired");
    await expectError(tokenClient(td, expiring.token).refreshSession(), "UNAUTHENTICATED", "session expired");

    await sleepUntil(idle.session!.expiresAt.getTime() + 300);
    await expectError(idle.generateRandom({ length: 4 }), "UNAUTHENTICATED", "expired");
    // The refreshed client is still fine (its new session is younger).
    expect((await refresher.generateRandom({ length: 4 })).random).toHaveLength(4);
    // A new login works.
    await login(td, "ttl-expire", USER_PASSWORD);
  });

  it("quorum requests expire: a pending one cannot be approved, an approved one cannot run; both list as EXPIRED", async () => {
    // Fresh 4-second sessions: the officers' clients must outlive the wait below.
    const co = await login(td, "admin", OFFICER_PASSWORD);
    await co.createUser({ username: "officer2", role: CO, password: OFFICER2_PASSWORD, mustChangePassword: false });
    await co.createUser({ username: "q-expire-a", role: CU, password: USER_PASSWORD });
    await co.createUser({ username: "q-expire-b", role: CU, password: USER_PASSWORD });
    const co2 = await login(td, "officer2", OFFICER2_PASSWORD);

    const pendingId = (await expectError(co.deleteUser({ username: "q-expire-a" }), "FAILED_PRECONDITION")).quorumRequestId!;
    const approvedId = (await expectError(co.deleteUser({ username: "q-expire-b" }), "FAILED_PRECONDITION")).quorumRequestId!;
    await co.approveQuorumRequest({ id: approvedId });
    const approved = await co2.approveQuorumRequest({ id: approvedId });
    expect(approved.request?.status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);

    const deadlines = await Promise.all([pendingId, approvedId].map(async (id) => new Date((await co.getQuorumRequest({ id })).expiresAt).getTime()));
    await sleepUntil(Math.max(...deadlines) + 400);

    const a = await login(td, "admin", OFFICER_PASSWORD);
    const b = await login(td, "officer2", OFFICER2_PASSWORD);
    await expectError(b.approveQuorumRequest({ id: pendingId }), "FAILED_PRECONDITION", `quorum request ${pendingId} expired`, "make a new request");
    await expectError(a.deleteUser({ username: "q-expire-b", quorumRequestId: approvedId }), "FAILED_PRECONDITION", `quorum request ${approvedId} expired`, "make a new request");
    expect((await a.getUser({ username: "q-expire-b" })).username).toBe("q-expire-b");

    const all = (await a.listQuorumRequests()).requests;
    expect(all.find((r) => r.id === pendingId)?.status).toBe(QuorumStatus.QUORUM_STATUS_EXPIRED);
    expect(all.find((r) => r.id === approvedId)?.status).toBe(QuorumStatus.QUORUM_STATUS_EXPIRED);
    const expired = (await a.listQuorumRequests({ status: QuorumStatus.QUORUM_STATUS_EXPIRED })).requests.map((r) => r.id);
    expect(expired).toEqual(expect.arrayContaining([pendingId, approvedId]));
    expect((await a.listQuorumRequests({ status: QuorumStatus.QUORUM_STATUS_PENDING })).requests.map((r) => r.id)).not.toContain(pendingId);
  });
});

// =================================================================================================

describe("quorum (DeleteUser: 2, ShareKey: 2)", () => {
  let td: TestDaemon;
  let co: HsmClient;
  let co2: HsmClient;

  beforeAll(async () => {
    td = await startTestDaemon({ config: { auth: { quorum: { operations: { DeleteUser: 2, ShareKey: 2 } } } } });
    co = await officer(td);
    const o2 = await co.createUser({ username: "officer2", role: CO, password: OFFICER2_PASSWORD, mustChangePassword: false });
    expect(o2).toMatchObject({ role: CO, mustChangePassword: false });
    co2 = await login(td, "officer2", OFFICER2_PASSWORD);
    for (const u of ["victim-a", "victim-b", "victim-c"]) await co.createUser({ username: u, role: CU, password: USER_PASSWORD });
  });
  afterAll(async () => {
    closeClients();
    officers.clear();
    await td?.cleanup();
  });

  it("DeleteUser needs 2 distinct approvals, runs once, and only for the user that was approved", async () => {
    const e = await expectError(co.deleteUser({ username: "victim-a" }), "FAILED_PRECONDITION", "DeleteUser needs the approval of 2 crypto officers", "quorum_request_id=");
    const id = e.quorumRequestId;
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(e.details).toContain(`quorum request ${id} is pending`);
    expect(e.details).toContain(`quorum_request_id=${id}`);

    const q = await co2.getQuorumRequest({ id: id! });
    expect(q).toMatchObject({ id, operation: "DeleteUser", params: { username: "victim-a" }, requestedBy: "admin", required: 2, status: QuorumStatus.QUORUM_STATUS_PENDING, approvals: [] });

    // Not yet approved.
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", `quorum request ${id} is pending with 0 of 2 approvals`, "cannot run yet");

    const first = await co.approveQuorumRequest({ id: id! });
    expect(first).toMatchObject({ duplicate: false, message: "approval recorded (1 of 2 approvals)" });
    expect(first.request?.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", "1 of 2 approvals");

    // The same officer approving again counts once.
    const dup = await co.approveQuorumRequest({ id: id! });
    expect(dup.duplicate).toBe(true);
    expect(dup.message).toContain("counts once");
    expect(dup.request?.approvals.map((a) => a.officer)).toEqual(["admin"]);
    expect(dup.request?.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", "1 of 2 approvals", "cannot run yet");

    const second = await co2.approveQuorumRequest({ id: id! });
    expect(second).toMatchObject({ duplicate: false });
    expect(second.request?.status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);
    expect(second.request?.approvals.map((a) => a.officer)).toEqual(["admin", "officer2"]);
    expect(second.message).toContain("is approved");

    // An approval to delete victim-a never deletes victim-b (and is not used up by the attempt).
    await expectError(co.deleteUser({ username: "victim-b", quorumRequestId: id }), "PERMISSION_DENIED", `quorum request ${id} approved DeleteUser(username="victim-a")`, `not DeleteUser(username="victim-b")`);
    expect((await co.getUser({ username: "victim-b" })).username).toBe("victim-b");

    // Either approving officer may run it.
    await co2.deleteUser({ username: "victim-a", quorumRequestId: id });
    await expectError(co.getUser({ username: "victim-a" }), "NOT_FOUND", "user victim-a not found");
    expect((await co.getQuorumRequest({ id: id! })).status).toBe(QuorumStatus.QUORUM_STATUS_EXECUTED);

    // Used once: the same id does not delete a new user of the same name.
    await co.createUser({ username: "victim-a", role: CU, password: USER_PASSWORD });
    await expectError(co.deleteUser({ username: "victim-a", quorumRequestId: id }), "FAILED_PRECONDITION", `quorum request ${id} was already executed`);
    expect((await co.getUser({ username: "victim-a" })).username).toBe("victim-a");
    await expectError(co.approveQuorumRequest({ id: id! }), "FAILED_PRECONDITION", "already executed");

    // The audit log tells the story.
    const audit = (await co.queryAuditLog({ operation: "DeleteUser", limit: 1000 })).entries.filter((x) => x.target === "victim-a");
    expect(audit.find((x) => x.status === "FAILED_PRECONDITION" && x.detail.includes(`quorum request ${id} recorded`))).toBeDefined();
    expect(audit.find((x) => x.status === "OK" && x.user === "officer2" && x.detail === `quorum request ${id} executed`)).toBeDefined();
    const approvals = (await co.queryAuditLog({ operation: "ApproveQuorumRequest", limit: 1000 })).entries.filter((x) => x.target === id);
    expect(approvals.map((x) => `${x.user}:${x.status}`)).toEqual(["admin:OK", "admin:OK", "officer2:OK", "admin:FAILED_PRECONDITION"]);
  });

  it("a rejected request cannot be approved or run", async () => {
    const id = (await expectError(co.deleteUser({ username: "victim-c" }), "FAILED_PRECONDITION")).quorumRequestId!;
    await co.approveQuorumRequest({ id });
    const rejected = await co2.rejectQuorumRequest({ id });
    expect(rejected).toMatchObject({ status: QuorumStatus.QUORUM_STATUS_REJECTED, rejectedBy: "officer2" });
    await expectError(co2.approveQuorumRequest({ id }), "FAILED_PRECONDITION", `quorum request ${id} was rejected by officer2`);
    await expectError(co.deleteUser({ username: "victim-c", quorumRequestId: id }), "FAILED_PRECONDITION", "was rejected by officer2", "cannot be executed");
    expect((await co.getUser({ username: "victim-c" })).username).toBe("victim-c");
    expect((await co.listQuorumRequests({ status: QuorumStatus.QUORUM_STATUS_REJECTED })).requests.map((r) => r.id)).toContain(id);
  });

  it("unknown quorum request ids are NOT_FOUND", async () => {
    await expectError(co.approveQuorumRequest({ id: "00000000-0000-4000-8000-000000000000" }), "NOT_FOUND", "not found");
    await expectError(co.deleteUser({ username: "victim-c", quorumRequestId: "not-an-id" }), "NOT_FOUND", "quorum request not-an-id not found");
  });

  it("a crypto user cannot approve, reject or list quorum requests (PERMISSION_DENIED)", async () => {
    const id = (await expectError(co.deleteUser({ username: "victim-c" }), "FAILED_PRECONDITION")).quorumRequestId!;
    const cu = await login(td, "victim-b", USER_PASSWORD);
    await expectError(cu.approveQuorumRequest({ id }), "PERMISSION_DENIED", "ApproveQuorumRequest is for crypto officer", "victim-b is a crypto user");
    await expectError(cu.rejectQuorumRequest({ id }), "PERMISSION_DENIED", "RejectQuorumRequest is for crypto officer");
    await expectError(cu.listQuorumRequests(), "PERMISSION_DENIED", "ListQuorumRequests is for crypto officer");
    // Someone else's request is invisible to a CU.
    await expectError(cu.getQuorumRequest({ id }), "NOT_FOUND", `quorum request ${id} not found`);
    const q = await co.getQuorumRequest({ id });
    expect(q.approvals).toEqual([]);
    expect(q.status).toBe(QuorumStatus.QUORUM_STATUS_PENDING);
  });

  it("ShareKey by a CU owner needs the quorum: COs approve, the CU calls again with the id, and the other CU can sign", async () => {
    await co.createUser({ username: "share-owner", role: CU, password: USER_PASSWORD });
    await co.createUser({ username: "share-peer", role: CU, password: USER_PASSWORD });
    const owner = await login(td, "share-owner", USER_PASSWORD);
    const peer = await login(td, "share-peer", USER_PASSWORD);
    const key = await owner.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "to-share" });
    const message = Buffer.from("signed by the peer after the quorum");

    await expectError(peer.sign({ keyId: key.id, algorithm: ECDSA, message }), "NOT_FOUND", `key ${key.id} not found`);

    const e = await expectError(owner.shareKey({ keyId: key.id, username: "share-peer" }), "FAILED_PRECONDITION", "ShareKey needs the approval of 2 crypto officers");
    const id = e.quorumRequestId!;
    expect(e.details).toContain(`quorum_request_id=${id}`);

    // The requester may follow its own request; another CU may not see it.
    expect(await owner.getQuorumRequest({ id })).toMatchObject({ operation: "ShareKey", params: { keyId: key.id, username: "share-peer" }, requestedBy: "share-owner", status: QuorumStatus.QUORUM_STATUS_PENDING });
    await expectError(peer.getQuorumRequest({ id }), "NOT_FOUND");
    await expectError(owner.shareKey({ keyId: key.id, username: "share-peer", quorumRequestId: id }), "FAILED_PRECONDITION", "cannot run yet");

    await co.approveQuorumRequest({ id });
    expect((await co2.approveQuorumRequest({ id })).request?.status).toBe(QuorumStatus.QUORUM_STATUS_APPROVED);

    // Bound to the key and the user it names.
    await co.createUser({ username: "share-other", role: CU, password: USER_PASSWORD });
    await expectError(owner.shareKey({ keyId: key.id, username: "share-other", quorumRequestId: id }), "PERMISSION_DENIED", "not ShareKey(");

    const shared = await owner.shareKey({ keyId: key.id, username: "share-peer", quorumRequestId: id });
    expect(shared.sharedWith).toEqual(["share-peer"]);
    expect((await owner.getQuorumRequest({ id })).status).toBe(QuorumStatus.QUORUM_STATUS_EXECUTED);

    const { signature } = await peer.sign({ keyId: key.id, algorithm: ECDSA, message });
    const { pem } = await peer.getPublicKey({ keyId: key.id });
    expect(verifySignature("sha256", message, createPublicKey(pem), signature)).toBe(true);

    // A shared user uses the key but may not share it on.
    await expectError(peer.shareKey({ keyId: key.id, username: "share-other" }), "PERMISSION_DENIED", "only its owner share-owner may");
    // UnshareKey needs no quorum.
    const unshared = await owner.unshareKey({ keyId: key.id, username: "share-peer" });
    expect(unshared.sharedWith).toEqual([]);
    await expectError(peer.sign({ keyId: key.id, algorithm: ECDSA, message }), "NOT_FOUND");
  });
});
