/**
 * Sessions: login (lockout after consecutive failures), authentication of a token, logout, refresh,
 * purging dead sessions, and a user changing its own password.
 */
import { HsmError, invalid, precondition } from "../errors";
import { getJson, getJsonFresh, type Op } from "../store";
import { checkPasswordPolicy, isValidUsername } from "./password";
import {
  INVALID_CREDENTIALS,
  META_MAX_CHARS,
  META_MAX_ENTRIES,
  PASSWORD_CHANGE_OPERATIONS,
  SESSIONS_PREFIX,
  USERS_PREFIX,
  UserRecords,
  actorName,
  denied,
  encode,
  lockedError,
  sessionIdOf,
  sessionKey,
  unauthenticated,
  userKey,
} from "./records";
import { retryTxn } from "./txn";
import type { Actor, LoginResult, Principal, SessionRecord, UserRecord } from "./types";

function checkMeta(meta: Record<string, string> | undefined): Record<string, string> | undefined {
  if (meta === undefined) return undefined;
  if (typeof meta !== "object" || meta === null) throw invalid("login metadata must be an object of strings");
  const entries = Object.entries(meta);
  if (entries.length > META_MAX_ENTRIES) throw invalid(`login metadata has more than ${META_MAX_ENTRIES} entries`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (typeof v !== "string" || k.length > 64 || v.length > META_MAX_CHARS) {
      throw invalid(`login metadata ${k} must be a string of at most ${META_MAX_CHARS} characters`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * Throws FAILED_PRECONDITION "change the one-time password first (ChangePassword)" when the principal
 * must change its password and `operation` is anything but ChangePassword or Logout. `operation` is the
 * RPC method name, bare (`ChangePassword`) or as a gRPC path (`/hsmd.v1.Users/ChangePassword`).
 */
export function requirePasswordChanged(principal: Pick<Principal, "mustChangePassword">, operation: string): void {
  if (!principal.mustChangePassword) return;
  const method = operation.slice(operation.lastIndexOf("/") + 1);
  if (PASSWORD_CHANGE_OPERATIONS.includes(method)) return;
  throw precondition("change the one-time password first (ChangePassword)");
}

/** Sessions of the users in the store (see {@link UserService}). */
export abstract class UserSessions extends UserRecords {
  /**
   * A user changes its own password: checks the current one (a wrong one counts as a failed login and
   * answers PERMISSION_DENIED), applies the policy, clears mustChangePassword, revokes every session of
   * the user (the caller's too) and answers a fresh session so that the caller can carry on.
   */
  async changePassword(principal: Actor, oldPassword: string, newPassword: string): Promise<LoginResult> {
    const name = actorName(principal);
    if (!isValidUsername(name)) throw unauthenticated("session revoked");
    if (typeof oldPassword !== "string") throw invalid("current password must be a string");
    checkPasswordPolicy(newPassword, "new password");
    if (oldPassword.normalize("NFC") === newPassword.normalize("NFC")) {
      throw invalid("the new password must differ from the current one");
    }
    const password = await this.hash(newPassword);
    const verified = new Map<string, boolean>();
    const out = await retryTxn<LoginResult | HsmError>(this.store, `change password of ${name}`, async () => {
      const cur = await getJson<UserRecord>(this.store, userKey(name));
      if (!cur) return { result: unauthenticated("session revoked") };
      const u = cur.value;
      const ok = await this.verifyCached(verified, oldPassword, u.password);
      if (u.locked) return { result: lockedError(u) };
      if (!ok) return this.failedLogin(cur, denied("the current password is incorrect"));
      const now = this.now();
      const next: UserRecord = {
        ...u,
        password,
        mustChangePassword: false,
        failedLogins: 0,
        tokenGeneration: u.tokenGeneration + 1,
        updatedAt: now,
      };
      const { token, session, id } = this.newSession(next, now);
      return {
        compares: [
          { key: cur.key, op: "modRevision", equals: cur.modRevision },
          { key: sessionKey(id), op: "absent" },
        ],
        ops: [
          { type: "put", key: cur.key, value: encode(next) },
          { type: "put", key: sessionKey(id), value: encode(session) },
        ],
        result: { token, expiresAt: session.expiresAt, mustChangePassword: false, role: u.role },
      };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /**
   * Exchanges a username and password for a session token. A wrong password and an unknown user both
   * answer UNAUTHENTICATED {@link INVALID_CREDENTIALS} after the same scrypt work. Each failure is
   * counted in the user's record; the failure that reaches `maxFailedLogins` locks the user and
   * revokes its sessions, and from it on (the correct password included) the answer is
   * PERMISSION_DENIED "user X is locked after N failed logins: a crypto officer must unlock it".
   * `meta` (client address and the like) is kept with the session for audit.
   */
  async login(name: string, password: string, meta?: Record<string, string>): Promise<LoginResult> {
    const m = checkMeta(meta);
    if (!isValidUsername(name) || typeof password !== "string") {
      await this.dummyVerify(typeof password === "string" ? password : "");
      throw unauthenticated(INVALID_CREDENTIALS);
    }
    const verified = new Map<string, boolean>();
    const out = await retryTxn<LoginResult | HsmError>(this.store, `login ${name}`, async () => {
      // A user created on another node a moment ago may not be in this node's copy yet.
      const cur = await getJsonFresh<UserRecord>(this.store, userKey(name));
      if (!cur) {
        await this.dummyVerify(password);
        return { result: unauthenticated(INVALID_CREDENTIALS) };
      }
      const u = cur.value;
      const ok = await this.verifyCached(verified, password, u.password);
      if (u.locked) return { result: lockedError(u) };
      if (!ok) return this.failedLogin(cur, unauthenticated(INVALID_CREDENTIALS));
      const now = this.now();
      const { token, session, id } = this.newSession(u, now, m);
      const ops: Op[] = [{ type: "put", key: sessionKey(id), value: encode(session) }];
      if (u.failedLogins !== 0) ops.push({ type: "put", key: cur.key, value: encode({ ...u, failedLogins: 0, updatedAt: now }) });
      return {
        // The compare on the user makes sure a lock, reset or password change that raced this login
        // is seen: the login is then decided again on the new record.
        compares: [
          { key: cur.key, op: "modRevision", equals: cur.modRevision },
          { key: sessionKey(id), op: "absent" },
        ],
        ops,
        result: { token, expiresAt: session.expiresAt, mustChangePassword: u.mustChangePassword, role: u.role },
      };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /**
   * The principal a token stands for, or UNAUTHENTICATED: "invalid session token" (malformed, unknown
   * or logged out), "session expired", or "session revoked" (the user was deleted, locked, or its
   * password changed or reset since the login). Reads the store on every call: a revocation committed
   * by any node is seen at once.
   */
  async authenticate(token: string): Promise<Principal> {
    const { session, id } = await this.readSession(token);
    const s = session.value;
    if (this.now() >= s.expiresAt) throw unauthenticated("session expired");
    const user = await getJson<UserRecord>(this.store, userKey(s.user));
    const u = user?.value;
    if (!u || u.id !== s.userId || u.tokenGeneration !== s.generation || u.locked) {
      throw unauthenticated("session revoked");
    }
    return { user: u.name, userId: u.id, role: u.role, sessionId: id, mustChangePassword: u.mustChangePassword, expiresAt: s.expiresAt };
  }

  /** Ends a session (deletes it from the store). UNAUTHENTICATED "invalid session token" if there is none. */
  async logout(token: string): Promise<void> {
    const { session } = await this.readSession(token);
    await this.store.txn([{ key: session.key, op: "present" }], [{ type: "delete", key: session.key }]);
  }

  /**
   * Exchanges a valid token for a new one with a fresh expiry and deletes the old one (the SDK's token
   * refresh). Fails like {@link authenticate}; of two concurrent refreshes of one token only one wins.
   */
  async refresh(token: string): Promise<LoginResult> {
    await this.authenticate(token);
    const id = sessionIdOf(token);
    const out = await retryTxn<LoginResult | HsmError>(this.store, "refresh session", async () => {
      const sess = await getJson<SessionRecord>(this.store, sessionKey(id));
      if (!sess) return { result: unauthenticated("invalid session token") };
      const cur = await getJson<UserRecord>(this.store, userKey(sess.value.user));
      const u = cur?.value;
      if (!cur || !u || u.id !== sess.value.userId || u.tokenGeneration !== sess.value.generation || u.locked) {
        return { result: unauthenticated("session revoked") };
      }
      const now = this.now();
      if (now >= sess.value.expiresAt) return { result: unauthenticated("session expired") };
      const next = this.newSession(u, now, sess.value.meta);
      return {
        compares: [
          { key: sess.key, op: "modRevision", equals: sess.modRevision },
          { key: cur.key, op: "modRevision", equals: cur.modRevision },
          { key: sessionKey(next.id), op: "absent" },
        ],
        ops: [
          { type: "delete", key: sess.key },
          { type: "put", key: sessionKey(next.id), value: encode(next.session) },
        ],
        result: { token: next.token, expiresAt: next.session.expiresAt, mustChangePassword: u.mustChangePassword, role: u.role },
      };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /**
   * Deletes sessions that can no longer authenticate (expired, or revoked by a lock, password change,
   * reset or delete). Sessions are refused without this; it only keeps the store small. Returns the
   * number deleted.
   */
  async purgeSessions(): Promise<number> {
    const now = this.now();
    const users = new Map<string, UserRecord>();
    for (const e of await this.store.list(USERS_PREFIX)) {
      const u = JSON.parse(e.value.toString("utf8")) as UserRecord;
      users.set(u.name, u);
    }
    const dead: Op[] = [];
    for (const e of await this.store.list(SESSIONS_PREFIX)) {
      const s = JSON.parse(e.value.toString("utf8")) as SessionRecord;
      const u = users.get(s.user);
      if (now >= s.expiresAt || !u || u.id !== s.userId || u.tokenGeneration !== s.generation) {
        dead.push({ type: "delete", key: e.key });
      }
    }
    for (let i = 0; i < dead.length; i += 256) await this.store.txn([], dead.slice(i, i + 256));
    return dead.length;
  }
}
