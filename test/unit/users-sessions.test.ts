import { scryptSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Code } from "../../src/errors";
import { LOG_FILE } from "../../src/store";
import { INVALID_CREDENTIALS, SESSIONS_PREFIX, requirePasswordChanged, sessionIdOf } from "../../src/users";
import { adminPw, advance, dir, ready, record, rejectsWith, service, store, t, T0, useUserStore } from "../helpers/user-service";

// UserService against an embedded store (test/helpers/user-service.ts): sessions and revocation, the
// crypto officers' self-protection, what the store holds. The rest: users.test.ts.
useUserStore();

describe("users: sessions and revocation", () => {
  it("logout ends that session only", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const s1 = await users.login("bob", "bob-password");
    const s2 = await users.login("bob", "bob-password");
    expect(s1.token).not.toBe(s2.token);
    expect(s1.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await users.logout(s1.token);
    await rejectsWith(users.authenticate(s1.token), Code.Unauthenticated, "invalid session token");
    await rejectsWith(users.logout(s1.token), Code.Unauthenticated, "invalid session token");
    expect(await store.get(SESSIONS_PREFIX + sessionIdOf(s1.token))).toBeUndefined();
    expect((await users.authenticate(s2.token)).user).toBe("bob");
    await rejectsWith(users.authenticate("not a token"), Code.Unauthenticated, "invalid session token");
    await rejectsWith(users.authenticate("A".repeat(43)), Code.Unauthenticated, "invalid session token");
  });

  it("a password change revokes every session of that user and no one else's", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    await users.createUser("admin", "carol", "CU", "carol-password");
    const b1 = await users.login("bob", "bob-password");
    const b2 = await users.login("bob", "bob-password");
    const c1 = await users.login("carol", "carol-password");
    const fresh = await users.changePassword(await users.authenticate(b1.token), "bob-password", "bob-password-2");
    await rejectsWith(users.authenticate(b1.token), Code.Unauthenticated, "session revoked");
    await rejectsWith(users.authenticate(b2.token), Code.Unauthenticated, "session revoked");
    expect((await users.authenticate(fresh.token)).user).toBe("bob");
    expect((await users.authenticate(c1.token)).user).toBe("carol");
    await rejectsWith(users.login("bob", "bob-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
  });

  it("a lock revokes at once, on another service instance too, and refuses login with the officer's reason", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const b = await users.login("bob", "bob-password");
    const other = service();
    expect((await other.authenticate(b.token)).user).toBe("bob");
    await users.lockUser("admin", "bob");
    await rejectsWith(other.authenticate(b.token), Code.Unauthenticated, "session revoked");
    await rejectsWith(users.login("bob", "bob-password"), Code.PermissionDenied, "user bob is locked by a crypto officer: a crypto officer must unlock it");
    await users.unlockUser("admin", "bob");
    await rejectsWith(other.authenticate(b.token), Code.Unauthenticated, "session revoked");
  });

  it("a password reset revokes, sets mustChangePassword, and the new password works", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const b = await users.login("bob", "bob-password");
    const info = await users.resetPassword("admin", "bob", "reset-password");
    expect(info.mustChangePassword).toBe(true);
    await rejectsWith(users.authenticate(b.token), Code.Unauthenticated, "session revoked");
    await rejectsWith(users.login("bob", "bob-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
    const again = await users.login("bob", "reset-password");
    expect(again.mustChangePassword).toBe(true);
    const p = await users.authenticate(again.token);
    expect(() => requirePasswordChanged(p, "ListKeys")).toThrow(/change the one-time password first/);
    await rejectsWith(users.resetPassword("admin", "admin", "another-password"), Code.FailedPrecondition, /ChangePassword/);
    await rejectsWith(users.resetPassword("admin", "ghost", "another-password"), Code.NotFound, "user ghost not found");
  });

  it("a delete revokes and removes the sessions; a new user with the same name does not inherit them", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const b = await users.login("bob", "bob-password");
    await users.deleteUser("admin", "bob");
    expect(await record("bob")).toBeUndefined();
    expect(await store.get(SESSIONS_PREFIX + sessionIdOf(b.token))).toBeUndefined();
    await rejectsWith(users.authenticate(b.token), Code.Unauthenticated);
    await rejectsWith(users.login("bob", "bob-password"), Code.Unauthenticated, INVALID_CREDENTIALS);
    await rejectsWith(users.deleteUser("admin", "bob"), Code.NotFound, "user bob not found");

    // A session record that outlived its user (written by a login racing the delete) stays revoked.
    const b2 = await users.createUser("admin", "dave", "CU", "dave-password").then(() => users.login("dave", "dave-password"));
    const sess = (await store.get(SESSIONS_PREFIX + sessionIdOf(b2.token)))!;
    await users.deleteUser("admin", "dave");
    await store.put(sess.key, sess.value);
    await users.createUser("admin", "dave", "CU", "dave-password");
    await rejectsWith(users.authenticate(b2.token), Code.Unauthenticated, "session revoked");
  });

  it("refuses an expired token and refreshes a valid one", async () => {
    const users = await ready({ sessionTtlMs: 1000 });
    await users.createUser("admin", "bob", "CU", "bob-password");
    const b = await users.login("bob", "bob-password");
    expect(b.expiresAt).toBe(t + 1000);
    advance(999);
    expect((await users.authenticate(b.token)).expiresAt).toBe(T0 + 1000);
    const r = await users.refresh(b.token);
    expect(r.expiresAt).toBe(t + 1000);
    expect(r.token).not.toBe(b.token);
    await rejectsWith(users.authenticate(b.token), Code.Unauthenticated, "invalid session token");
    await rejectsWith(users.refresh(b.token), Code.Unauthenticated, "invalid session token");
    advance(999);
    expect((await users.authenticate(r.token)).user).toBe("bob");
    advance(1);
    await rejectsWith(users.authenticate(r.token), Code.Unauthenticated, "session expired");
    await rejectsWith(users.refresh(r.token), Code.Unauthenticated, "session expired");

    // Of two concurrent refreshes of one token, one wins.
    const c = await users.login("bob", "bob-password");
    const both = await Promise.allSettled([users.refresh(c.token), users.refresh(c.token)]);
    expect(both.filter((x) => x.status === "fulfilled")).toHaveLength(1);
  });

  it("purges expired and revoked sessions from the store", async () => {
    const users = await ready({ sessionTtlMs: 1000 });
    await users.createUser("admin", "bob", "CU", "bob-password");
    await users.createUser("admin", "carol", "CU", "carol-password");
    await users.login("bob", "bob-password");
    const live = await users.login("carol", "carol-password");
    await users.lockUser("admin", "bob");
    // ready() left admin's first session (revoked by its password change) and its fresh one.
    expect(await store.count(SESSIONS_PREFIX)).toBe(4);
    expect(await users.purgeSessions()).toBe(2); // admin's first one and bob's (locked)
    expect(await store.count(SESSIONS_PREFIX)).toBe(2);
    expect((await users.authenticate(live.token)).user).toBe("carol");
    advance(1000);
    expect(await users.purgeSessions()).toBe(2);
    expect(await store.count(SESSIONS_PREFIX)).toBe(0);
  });
});

describe("users: crypto officers protect themselves and the last of them", () => {
  it("a CO cannot delete or lock itself; the last unlocked CO cannot be deleted or locked", async () => {
    const users = await ready();
    await rejectsWith(users.deleteUser("admin", "admin"), Code.FailedPrecondition, "user admin cannot delete itself");
    await rejectsWith(users.lockUser({ user: "admin" }, "admin"), Code.FailedPrecondition, "user admin cannot lock itself");
    // "someone" stands for any other caller: the auth layer decides who may call; the invariant holds regardless.
    await rejectsWith(users.deleteUser("someone", "admin"), Code.FailedPrecondition, /last unlocked crypto officer/);
    await rejectsWith(users.lockUser("someone", "admin"), Code.FailedPrecondition, /last unlocked crypto officer/);

    await users.createUser("admin", "co2", "CO", "co2-password");
    await users.lockUser("admin", "co2");
    // co2 is locked: admin is still the last unlocked CO.
    await rejectsWith(users.deleteUser("someone", "admin"), Code.FailedPrecondition, /last unlocked crypto officer/);
    await users.unlockUser("admin", "co2");
    await users.deleteUser("co2", "admin");
    expect(await record("admin")).toBeUndefined();
    await rejectsWith(users.deleteUser("someone", "co2"), Code.FailedPrecondition, /last unlocked crypto officer/);
    expect(await record("co2")).toBeDefined();
  });

  it("two COs deleting or locking each other at once leave one CO", async () => {
    const users = await ready();
    await users.createUser("admin", "co2", "CO", "co2-password");
    const del = await Promise.allSettled([users.deleteUser("admin", "co2"), users.deleteUser("co2", "admin")]);
    expect(del.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect(del.filter((r) => r.status === "rejected" && (r.reason as { code: Code }).code === Code.FailedPrecondition)).toHaveLength(1);
    expect((await users.listUsers("x")).filter((u) => u.role === "CO")).toHaveLength(1);

    const [remaining] = (await users.listUsers("x")).filter((u) => u.role === "CO");
    await users.createUser(remaining!.name, "co3", "CO", "co3-password");
    const lock = await Promise.allSettled([users.lockUser(remaining!.name, "co3"), users.lockUser("co3", remaining!.name)]);
    expect(lock.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    expect((await users.listUsers("x")).filter((u) => u.role === "CO" && !u.locked)).toHaveLength(1);
  });
  it("recoverOfficer (hsmd officer unlock) clears a failed-login lock of the last CO, sets a one-time password and revokes its sessions", async () => {
    const users = await ready({ maxFailedLogins: 2 });
    const before = await users.login("admin", adminPw);
    for (let i = 0; i < 2; i++) await users.login("admin", "wrong-password").catch(() => undefined);
    await rejectsWith(users.login("admin", adminPw), Code.PermissionDenied, /locked after 2 failed logins/);
    const info = await users.recoverOfficer("admin", "one-time-password-1");
    expect(info).toMatchObject({ locked: false, lockReason: null, failedLogins: 0, mustChangePassword: true });
    await rejectsWith(users.authenticate(before.token), Code.Unauthenticated, "session revoked");
    await rejectsWith(users.login("admin", adminPw), Code.Unauthenticated, INVALID_CREDENTIALS);
    expect((await users.login("admin", "one-time-password-1")).mustChangePassword).toBe(true);

    await users.createUser("admin", "cu1", "CU", "cu1-password");
    await rejectsWith(users.recoverOfficer("cu1", "one-time-password-1"), Code.FailedPrecondition, /user cu1 is a CU, not a crypto officer/);
    expect((await record("cu1"))?.mustChangePassword).toBe(false);
    await rejectsWith(users.recoverOfficer("ghost", "one-time-password-1"), Code.NotFound, "user ghost not found");
    await rejectsWith(users.recoverOfficer("admin", "short"), Code.InvalidArgument, /one-time password must be 8 to 64/);
  });
});

describe("users: what the store holds", () => {
  it("records the scrypt parameters with the hash, and verifies old hashes after the default changes", async () => {
    const users = await ready();
    await users.createUser("admin", "bob", "CU", "bob-password");
    const h = (await record("bob"))!.password;
    expect(h).toMatchObject({ alg: "scrypt", N: 2 ** 10, r: 8, p: 1, keyLen: 32 });
    expect(Buffer.from(h.salt, "base64")).toHaveLength(16);
    const recomputed = scryptSync("bob-password", Buffer.from(h.salt, "base64"), h.keyLen, { N: h.N, r: h.r, p: h.p });
    expect(recomputed.toString("base64")).toBe(h.hash);

    const stronger = service({ scrypt: { N: 2 ** 11, r: 8, p: 1 } });
    expect((await stronger.login("bob", "bob-password")).role).toBe("CU");
    await stronger.createUser("admin", "carol", "CU", "carol-password");
    expect((await record("carol"))!.password.N).toBe(2 ** 11);
    expect((await record("bob"))!.password.N).toBe(2 ** 10);
  });

  it("never holds a password or a token: every entry and the log file are scanned", async () => {
    const users = service({ maxFailedLogins: 3 });
    const secrets: string[] = [];
    const init = await users.initialize();
    secrets.push(init.oneTimePassword);
    const first = await users.login("admin", init.oneTimePassword, { peer: "127.0.0.1:5000" });
    secrets.push(first.token);
    const changed = await users.changePassword(await users.authenticate(first.token), init.oneTimePassword, "Admin-Secret-42");
    secrets.push("Admin-Secret-42", changed.token);
    await users.createUser("admin", "bob", "CU", "Bob-Secret-43");
    secrets.push("Bob-Secret-43");
    const b = await users.login("bob", "Bob-Secret-43");
    const r = await users.refresh(b.token);
    secrets.push(b.token, r.token);
    await users.login("bob", "Wrong-Guess-44").catch(() => undefined);
    secrets.push("Wrong-Guess-44");
    await users.resetPassword("admin", "bob", "Reset-Secret-45");
    secrets.push("Reset-Secret-45");
    const live = await users.login("bob", "Reset-Secret-45");
    secrets.push(live.token);

    const entries = await store.list("");
    const sessionKeys = entries.filter((e) => e.key.startsWith(SESSIONS_PREFIX)).map((e) => e.key);
    // The scan looks at the right things: the live session is there, under its hash.
    expect(sessionKeys).toContain(SESSIONS_PREFIX + sessionIdOf(live.token));
    expect(entries.length).toBeGreaterThan(3);
    // The log holds every value ever written (base64 in JSON frames): decode them all for the scan.
    const rawLog = readFileSync(join(dir, LOG_FILE)).toString("utf8");
    const decoded = [...rawLog.matchAll(/"([A-Za-z0-9+/]{4,}={0,2})"/g)].map((m) => Buffer.from(m[1]!, "base64").toString("utf8"));
    const logText = rawLog + "\n" + decoded.join("\n");
    expect(logText).toContain(sessionIdOf(live.token));
    expect(logText).toContain('"failedLogins":1'); // the wrong guess's record, history included
    expect(logText).toContain('"alg":"scrypt"');
    for (const s of secrets) {
      for (const e of entries) {
        expect(e.key).not.toContain(s);
        expect(e.value.toString("utf8")).not.toContain(s);
        expect(e.value.toString("base64")).not.toContain(Buffer.from(s).toString("base64"));
      }
      expect(logText).not.toContain(s);
      expect(logText).not.toContain(Buffer.from(s).toString("base64"));
    }
  });
});
