/**
 * Users, sessions, lockout, token revocation and the audit log, through real gRPC against real
 * in-process daemons on fresh SoftHSM2 tokens. Every refusal is checked for its exact status and,
 * where a person has to act on it, for the words that tell them what to do.
 *
 * Daemons (one at a time: SoftHSM2 is initialized once per process and finalized by each stop):
 * - "main" (`auth.maxFailedLogins: 3`): first login, password and name rules, lockout (also across a
 *   restart), token revocation, malformed tokens, then the audit log of everything that happened
 *   (test/helpers/auth-audit-log.ts).
 * - "short lifetimes" (`sessionTtlSeconds: 4`, quorum `ttlSeconds: 2`): expired sessions, the SDK's
 *   refresh in the last quarter of a session, expired quorum requests.
 * The M-of-N quorum flow: auth-flows-quorum.test.ts. Shared fixtures: test/helpers/auth-flows.ts.
 */
import { existsSync, readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { firstOfficerPasswordFile } from "../../src/daemon";
import { type Session } from "../../src/gen/hsm/v1/users";
import { HsmClient, QuorumStatus, Role } from "../../src/sdk";
import { eventually } from "../helpers/cluster";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { OFFICER_PASSWORD, USER_PASSWORD } from "../helpers/users";
import {
  AFTER_RESET_PASSWORD,
  CHANGED_PASSWORD,
  CO,
  CU,
  closeClients,
  createUser,
  cuClient,
  expectError,
  login,
  newClient,
  OFFICER2_PASSWORD,
  officer,
  officers,
  PASSWORD_64,
  PASSWORD_65,
  PASSWORD_7,
  PASSWORD_8,
  rawLogin,
  RESET_PASSWORD,
  REVOKED,
  sleepUntil,
  tokenClient,
  useBuiltDist,
  useTrackedClients,
  WRONG_PASSWORD,
  WRONG_PASSWORD_2,
  WRONG_PASSWORD_3,
} from "../helpers/auth-flows";
import { describeMainAuditLog } from "../helpers/auth-audit-log";

useBuiltDist();
useTrackedClients();

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
      // The session opened before the lockout no longer works. Its crypto stream (the SDK's default)
      // was authenticated when it opened: the daemon ends it within grpc.streamAuthRecheckMs of the lock.
      await eventually(() => victim.streamStats.open === 0, "the daemon ended the locked user's crypto stream", 10_000, 20);
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
      await expectError(newClient(td).generateRandom({ length: 4 }, { metadata: { authorization: "Basic YWRtaW46cGFzcw==" } }), "UNAUTHENTICATED", "`Bearer <token>`");
      await expectError(newClient(td).logout(), "UNAUTHENTICATED");
    });
  });

  describeMainAuditLog(() => ({ td, otp }));
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
