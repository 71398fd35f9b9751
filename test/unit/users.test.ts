import { rmSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Code } from "../../src/errors";
import { INVALID_CREDENTIALS, hashPassword, requirePasswordChanged, sessionIdOf, verifyPassword } from "../../src/users";
import { dir, openStore, ready, record, rejectsWith, service, store, useUserStore } from "../helpers/user-service";

// UserService against an embedded store (test/helpers/user-service.ts): initialization, the password
// and username policy, login. Sessions, officers and what the store holds: users-sessions.test.ts.
useUserStore();

describe("users: initialization and the one-time password", () => {
  it("creates the first CO with a one-time password that must be changed before anything else", async () => {
    const users = service();
    const init = await users.initialize();
    expect(init.name).toBe("admin");
    expect(init.role).toBe("CO");
    expect(init.oneTimePassword.length).toBeGreaterThanOrEqual(20);
    expect((await record("admin"))?.mustChangePassword).toBe(true);
    expect((await record("admin"))?.role).toBe("CO");

    const first = await users.login("admin", init.oneTimePassword);
    expect(first.mustChangePassword).toBe(true);
    expect(first.role).toBe("CO");
    const p = await users.authenticate(first.token);
    expect(p).toMatchObject({ user: "admin", role: "CO", mustChangePassword: true, sessionId: sessionIdOf(first.token) });

    expect(() => requirePasswordChanged(p, "CreateUser")).toThrow("change the one-time password first (ChangePassword)");
    try {
      requirePasswordChanged(p, "/hsmd.v1.Keys/CreateKey");
      expect.unreachable();
    } catch (err) {
      expect((err as { code: Code }).code).toBe(Code.FailedPrecondition);
    }
    expect(() => requirePasswordChanged(p, "ChangePassword")).not.toThrow();
    expect(() => requirePasswordChanged(p, "/hsmd.v1.Users/ChangePassword")).not.toThrow();
    expect(() => requirePasswordChanged(p, "Logout")).not.toThrow();

    await rejectsWith(users.changePassword(p, init.oneTimePassword, init.oneTimePassword), Code.InvalidArgument, /must differ/);
    const changed = await users.changePassword(p, init.oneTimePassword, "a-new-password");
    expect(changed.mustChangePassword).toBe(false);
    // The session that changed the password is revoked with every other one; the answer is a new one.
    await rejectsWith(users.authenticate(first.token), Code.Unauthenticated, "session revoked");
    const p2 = await users.authenticate(changed.token);
    expect(p2.mustChangePassword).toBe(false);
    expect(() => requirePasswordChanged(p2, "CreateUser")).not.toThrow();
    expect((await record("admin"))?.mustChangePassword).toBe(false);

    await rejectsWith(users.login("admin", init.oneTimePassword), Code.Unauthenticated, INVALID_CREDENTIALS);
    expect((await users.login("admin", "a-new-password")).mustChangePassword).toBe(false);
  });

  it("initializes once: refused when initialized, when any user exists, and in a race", async () => {
    const users = service();
    await users.initialize("root");
    expect(await record("root")).toBeDefined();
    await rejectsWith(users.initialize(), Code.FailedPrecondition, /already initialized/);
    await rejectsWith(users.initialize("root"), Code.FailedPrecondition, /already initialized/);
    expect(await record("admin")).toBeUndefined();
  });

  it("initialization is refused when a user exists, and concurrent initializations make one CO", async () => {
    const users = service();
    await users.createUser("x", "carol", "CU", "carol-password");
    await rejectsWith(users.initialize(), Code.FailedPrecondition);
    expect(await record("admin")).toBeUndefined();

    await store.close();
    rmSync(dir, { recursive: true, force: true });
    await openStore();
    const again = service();
    const results = await Promise.allSettled(["co-a", "co-b", "co-c"].map((n) => again.initialize(n)));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(await store.count("users/")).toBe(1);
  });
});

describe("users: password and username policy", () => {
  it("refuses passwords shorter than 8 or longer than 64 characters, naming the rule, everywhere", async () => {
    const users = await ready();
    await rejectsWith(users.createUser("admin", "bob", "CU", "1234567"), Code.InvalidArgument, /8 to 64 characters/);
    await rejectsWith(users.createUser("admin", "bob", "CU", "x".repeat(65)), Code.InvalidArgument, /8 to 64 characters/);
    expect(await record("bob")).toBeUndefined();
    await users.createUser("admin", "bob", "CU", "12345678");
    await users.createUser("admin", "bob64", "CU", "y".repeat(64));
    // Characters, not UTF-16 units: eight emoji are eight characters.
    await users.createUser("admin", "emoji", "CU", "🔑".repeat(8));
    expect((await users.login("emoji", "🔑".repeat(8))).role).toBe("CU");
    await rejectsWith(users.createUser("admin", "emoji2", "CU", "🔑".repeat(65)), Code.InvalidArgument, /8 to 64/);

    await rejectsWith(users.resetPassword("admin", "bob", "short"), Code.InvalidArgument, /8 to 64 characters/);
    const bob = await users.authenticate((await users.login("bob", "12345678")).token);
    await rejectsWith(users.changePassword(bob, "12345678", "z".repeat(65)), Code.InvalidArgument, /8 to 64 characters/);
    expect((await users.login("bob", "12345678")).role).toBe("CU");
  });

  it("validates usernames (1-32 of [a-z0-9][a-z0-9._-]*) and roles, and refuses duplicates", async () => {
    const users = await ready();
    for (const bad of ["", "x".repeat(33), "Alice", "-bob", ".bob", "a b", "é", "a/b", "bob\n"]) {
      await rejectsWith(users.createUser("admin", bad, "CU", "password-1"), Code.InvalidArgument, /username/);
    }
    for (const good of ["a", "x".repeat(32), "a.b_c-d", "0day"]) await users.createUser("admin", good, "CU", "password-1");
    await rejectsWith(users.createUser("admin", "bob", "XX" as never, "password-1"), Code.InvalidArgument, /role must be one of CO, CU, AU/);
    await users.createUser("admin", "bob", "AU", "password-1");
    await rejectsWith(users.createUser("admin", "bob", "CU", "password-2"), Code.AlreadyExists, "user bob already exists");
    expect((await record("bob"))?.role).toBe("AU");
    expect((await users.login("bob", "password-1")).role).toBe("AU");

    const racing = await Promise.allSettled(["CU", "CO", "AU", "CU", "CU"].map((r) => users.createUser("admin", "dup", r as "CU", "password-1")));
    expect(racing.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of racing) if (r.status === "rejected") expect((r.reason as { code: Code }).code).toBe(Code.AlreadyExists);
  });

  it("lists users without hashes", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const list = await users.listUsers("admin");
    expect(list.map((u) => [u.name, u.role])).toEqual([
      ["admin", "CO"],
      ["bob", "CU"],
    ]);
    const text = JSON.stringify(list);
    const raw = (await record("bob"))!;
    expect(text).not.toContain(raw.password.hash);
    expect(text).not.toContain(raw.password.salt);
    expect(text).not.toContain('password":');
    expect(text).not.toContain(raw.id);
  });
});

describe("users: login", () => {
  it("answers the same for an unknown user and a wrong password, after the same scrypt work", async () => {
    const slow = { N: 2 ** 14, r: 8, p: 1 };
    const users = await ready({ scrypt: slow, maxFailedLogins: 100 });
    await users.createUser("admin", "bob", "CU", "bob-password");
    const errOf = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: unknown) => e as { code: Code; message: string },
      );
    const wrong = await errOf(users.login("bob", "not-bobs-password"));
    const unknown = await errOf(users.login("nobody", "not-bobs-password"));
    const badName = await errOf(users.login("No Such/User", "not-bobs-password"));
    for (const e of [wrong, unknown, badName]) {
      expect(e?.code).toBe(Code.Unauthenticated);
      expect(e?.message).toBe(INVALID_CREDENTIALS);
    }
    // Timing: an unknown user costs (at least about) one scrypt verification, like a wrong password.
    const h = await hashPassword("reference-password", slow);
    let oneHash = Infinity;
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      await verifyPassword("other-password", h);
      oneHash = Math.min(oneHash, performance.now() - start);
    }
    let start: number;
    for (const name of ["nobody", "No Such/User"]) {
      start = performance.now();
      await users.login(name, "whatever-password").catch(() => undefined);
      expect(performance.now() - start).toBeGreaterThan(oneHash * 0.4);
    }
  });

  it("locks after N consecutive failures, counted in the store across service instances, until a CO unlocks", async () => {
    await ready({ maxFailedLogins: 3 });
    const a = service({ maxFailedLogins: 3 });
    await a.createUser("admin", "bob", "CU", "bob-password");
    const before = await a.login("bob", "bob-password");

    await rejectsWith(a.login("bob", "wrong-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
    expect((await record("bob"))?.failedLogins).toBe(1);
    // A success resets the count.
    await a.login("bob", "bob-password");
    expect((await record("bob"))?.failedLogins).toBe(0);
    await rejectsWith(a.login("bob", "wrong-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
    await rejectsWith(a.login("bob", "wrong-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
    expect((await record("bob"))?.failedLogins).toBe(2);
    expect((await record("bob"))?.locked).toBe(false);

    // A new service (another node, a restart) continues the count from the store: the third failure locks.
    const b = service({ maxFailedLogins: 3 });
    const lockedMsg = "user bob is locked after 3 failed logins: a crypto officer must unlock it";
    await rejectsWith(b.login("bob", "wrong-password"), Code.PermissionDenied, lockedMsg);
    expect(await record("bob")).toMatchObject({ locked: true, failedLogins: 3, lockReason: "failedLogins" });
    await rejectsWith(b.login("bob", "bob-password"), Code.PermissionDenied, lockedMsg);
    await rejectsWith(a.login("bob", "wrong-password"), Code.PermissionDenied, lockedMsg);
    await rejectsWith(b.authenticate(before.token), Code.Unauthenticated, "session revoked");

    // The lock survives a reopened store (it was fsync'd, not held in memory).
    await store.close();
    await openStore();
    const c = service({ maxFailedLogins: 3 });
    await rejectsWith(c.login("bob", "bob-password"), Code.PermissionDenied, lockedMsg);

    const info = await c.unlockUser("admin", "bob");
    expect(info).toMatchObject({ locked: false, failedLogins: 0, lockReason: null });
    const after = await c.login("bob", "bob-password");
    expect((await c.authenticate(after.token)).user).toBe("bob");
    // The old session stays revoked after the unlock.
    await rejectsWith(c.authenticate(before.token), Code.Unauthenticated, "session revoked");
  });

  it("counts 10 parallel failed logins as 10, and locks exactly at the limit under concurrency", async () => {
    const users = await ready({ maxFailedLogins: 100 });
    await users.createUser("admin", "bob", "CU", "bob-password");
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => users.login("bob", "wrong-password")));
    expect(results.every((r) => r.status === "rejected" && (r.reason as { code: Code }).code === Code.Unauthenticated)).toBe(true);
    expect((await record("bob"))?.failedLogins).toBe(10);

    const five = service({ maxFailedLogins: 5 });
    await five.createUser("admin", "carol", "CU", "carol-password");
    const r5 = await Promise.allSettled(Array.from({ length: 10 }, () => five.login("carol", "wrong-password")));
    const codes = r5.map((r) => (r.status === "rejected" ? (r.reason as { code: Code }).code : "ok"));
    expect(codes.filter((c) => c === Code.Unauthenticated)).toHaveLength(4);
    expect(codes.filter((c) => c === Code.PermissionDenied)).toHaveLength(6);
    expect(await record("carol")).toMatchObject({ failedLogins: 5, locked: true });
  });

  it("a wrong current password in ChangePassword is refused and counts as a failed login", async () => {
    const users = await ready({ maxFailedLogins: 5 });
    await users.createUser("admin", "bob", "CU", "bob-password");
    const bob = await users.authenticate((await users.login("bob", "bob-password")).token);
    await rejectsWith(users.changePassword(bob, "not-the-password", "new-password-1"), Code.PermissionDenied, /current password is incorrect/);
    expect((await record("bob"))?.failedLogins).toBe(1);
    expect((await users.login("bob", "bob-password")).role).toBe("CU");
  });
});
