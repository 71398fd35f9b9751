/**
 * Users, passwords, sessions and lockout as records in the state store (transport-free; the gRPC auth
 * layer decides who may call what, this module keeps the records right). User admin lives here;
 * sessions in ./sessions.ts, the shared record steps in ./records.ts.
 */
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { getJson, type Compare, type Op } from "../store";
import { checkPasswordPolicy, checkUsername, generateOneTimePassword, isValidUsername } from "./password";
import { SESSIONS_PREFIX, USERS_INIT_KEY, USERS_PREFIX, actorName, checkRole, encode, toUserInfo, userKey, type InitializeResult } from "./records";
import { UserSessions } from "./sessions";
import { retryTxn } from "./txn";
import type { Actor, Role, SessionRecord, UserInfo, UserRecord } from "./types";

export {
  DEFAULT_MAX_FAILED_LOGINS,
  DEFAULT_SESSION_TTL_MS,
  INVALID_CREDENTIALS,
  PASSWORD_CHANGE_OPERATIONS,
  SESSIONS_PREFIX,
  USERS_INIT_KEY,
  USERS_PREFIX,
  sessionIdOf,
  toUserInfo,
  type InitializeResult,
  type UserServiceOptions,
} from "./records";
export { requirePasswordChanged } from "./sessions";

/**
 * Users (roles CO, CU, AU), their passwords (scrypt, parameters recorded with the hash), login sessions
 * (bearer tokens stored only as their sha256), lockout after consecutive failed logins, and revocation.
 * Every write is a store txn guarded by a compare on what it read, retried on conflict, so concurrent
 * writers (other requests, other nodes) never lose an update. No state is kept in memory: every node
 * sharing the store sees the same users and sessions.
 */
export class UserService extends UserSessions {
  /**
   * Creates the first crypto officer with a random one-time password (returned here only, 24
   * characters) that it must change before anything else. FAILED_PRECONDITION if any user exists or
   * the users were initialized before.
   */
  async initialize(firstCoName = "admin", oneTimePassword = generateOneTimePassword()): Promise<InitializeResult> {
    checkUsername(firstCoName);
    checkPasswordPolicy(oneTimePassword);
    const refused = () => precondition("users are already initialized: the first crypto officer exists");
    if ((await this.store.count(USERS_PREFIX)) > 0 || (await this.store.get(USERS_INIT_KEY))) throw refused();
    const rec = this.newRecord(firstCoName, "CO", await this.hash(oneTimePassword), true);
    const res = await this.store.txn(
      [
        { key: USERS_INIT_KEY, op: "absent" },
        { key: userKey(firstCoName), op: "absent" },
      ],
      [
        { type: "put", key: USERS_INIT_KEY, value: encode({ firstCo: firstCoName, at: rec.createdAt }) },
        { type: "put", key: userKey(firstCoName), value: encode(rec) },
      ],
    );
    if (!res.succeeded) throw refused();
    return { name: firstCoName, role: "CO", oneTimePassword };
  }

  /**
   * Creates a user. INVALID_ARGUMENT for a bad name, role or password (naming the rule),
   * ALREADY_EXISTS for a taken name. `mustChangePassword` (default false) makes the user change the
   * password its CO chose at its first login.
   */
  async createUser(actor: Actor, name: string, role: Role, password: string, opts: { mustChangePassword?: boolean } = {}): Promise<UserInfo> {
    void actor;
    checkUsername(name);
    checkRole(role);
    checkPasswordPolicy(password);
    const rec = this.newRecord(name, role, await this.hash(password), opts.mustChangePassword ?? false);
    const res = await this.store.txn([{ key: userKey(name), op: "absent" }], [{ type: "put", key: userKey(name), value: encode(rec) }]);
    if (!res.succeeded) throw new HsmError(Code.AlreadyExists, `user ${name} already exists`);
    return toUserInfo(rec);
  }

  /** Every user, sorted by name, without hashes. */
  async listUsers(actor: Actor): Promise<UserInfo[]> {
    void actor;
    const entries = await this.store.list(USERS_PREFIX);
    return entries.map((e) => toUserInfo(JSON.parse(e.value.toString("utf8")) as UserRecord));
  }

  /**
   * Who a name stands for now: its role and the id of this incarnation of the name (a user deleted
   * and created again gets a new id, so key ownership and shares recorded by id never pass to it).
   * Undefined when there is no such user.
   */
  async identity(name: string): Promise<{ name: string; userId: string; role: Role } | undefined> {
    if (!isValidUsername(name)) return undefined;
    const cur = await getJson<UserRecord>(this.store, userKey(name));
    return cur ? { name: cur.value.name, userId: cur.value.id, role: cur.value.role } : undefined;
  }

  /** One user without its hash; NOT_FOUND if absent. */
  async getUser(name: string): Promise<UserInfo> {
    return toUserInfo((await this.readUser(name)).value);
  }

  /**
   * DeleteUser's refusals that need no quorum, checked before one is asked for so that an approval
   * is never spent on them: FAILED_PRECONDITION when the actor deletes itself or the user still owns
   * keys, NOT_FOUND if absent. `ownedKeys` counts the keys of a user id (the key service's count,
   * passed in so that users/ does not depend on keys/).
   */
  async checkDeletable(actor: Actor, name: string, ownedKeys: (userId: string) => number): Promise<void> {
    checkUsername(name);
    if (actorName(actor) === name) throw precondition(`user ${name} cannot delete itself`);
    const who = await this.identity(name);
    if (!who) throw notFound(`user ${name} not found`);
    const owned = ownedKeys(who.userId);
    if (owned > 0) throw precondition(`user ${name} owns ${owned} key(s): it must delete them before it can be deleted`);
  }

  /**
   * Deletes a user and its sessions. FAILED_PRECONDITION when the actor deletes itself or the target
   * is the last unlocked crypto officer; NOT_FOUND if absent.
   */
  async deleteUser(actor: Actor, name: string): Promise<void> {
    checkUsername(name);
    if (actorName(actor) === name) throw precondition(`user ${name} cannot delete itself`);
    await retryTxn(this.store, `delete user ${name}`, async () => {
      const cur = await this.readUser(name);
      const compares: Compare[] = [{ key: cur.key, op: "modRevision", equals: cur.modRevision }];
      if (cur.value.role === "CO") compares.push(...(await this.lastCoGuard(name, "deleted")));
      const ops: Op[] = [{ type: "delete", key: cur.key }];
      for (const s of await this.store.list(SESSIONS_PREFIX)) {
        const rec = JSON.parse(s.value.toString("utf8")) as SessionRecord;
        if (rec.user === name) ops.push({ type: "delete", key: s.key });
      }
      return { compares, ops, result: undefined };
    });
  }

  /**
   * Locks a user and revokes its sessions. FAILED_PRECONDITION when the actor locks itself or the
   * target is the last unlocked crypto officer. Locking a locked user changes nothing.
   */
  async lockUser(actor: Actor, name: string): Promise<UserInfo> {
    checkUsername(name);
    if (actorName(actor) === name) throw precondition(`user ${name} cannot lock itself`);
    return retryTxn(this.store, `lock user ${name}`, async () => {
      const cur = await this.readUser(name);
      const u = cur.value;
      if (u.locked) return { result: toUserInfo(u) };
      const compares: Compare[] = [{ key: cur.key, op: "modRevision", equals: cur.modRevision }];
      if (u.role === "CO") compares.push(...(await this.lastCoGuard(name, "locked")));
      const next: UserRecord = {
        ...u,
        locked: true,
        lockReason: "officer",
        tokenGeneration: u.tokenGeneration + 1,
        updatedAt: this.now(),
      };
      return { compares, ops: [{ type: "put", key: cur.key, value: encode(next) }], result: toUserInfo(next) };
    });
  }

  /** Unlocks a user and resets its failed-login count. */
  async unlockUser(actor: Actor, name: string): Promise<UserInfo> {
    void actor;
    checkUsername(name);
    return this.update(name, `unlock user ${name}`, (u) => (!u.locked && u.failedLogins === 0 ? undefined : { ...u, locked: false, lockReason: null, failedLogins: 0 }));
  }

  /**
   * Offline recovery of a crypto officer (`hsmd officer unlock`, run on a node's host by an operator
   * who proved the token's SO PIN): clears the lockout and the failed-login count, replaces the
   * password with `oneTimePassword` (which must be changed before anything else) and revokes the
   * officer's sessions. The way back when failed logins locked the last officer, whom no other
   * officer can unlock. NOT_FOUND for an unknown user; FAILED_PRECONDITION for a user that is not a
   * crypto officer (officers unlock those with UnlockUser).
   */
  async recoverOfficer(name: string, oneTimePassword: string): Promise<UserInfo> {
    checkUsername(name);
    checkPasswordPolicy(oneTimePassword, "one-time password");
    const notOfficer = (u: UserRecord) =>
      precondition(`user ${name} is a ${u.role}, not a crypto officer: officer unlock recovers crypto officers only (a crypto officer unlocks other users with UnlockUser)`);
    const first = await this.readUser(name);
    if (first.value.role !== "CO") throw notOfficer(first.value);
    const password = await this.hash(oneTimePassword);
    return this.update(name, `recover officer ${name}`, (u) => {
      if (u.role !== "CO") throw notOfficer(u);
      return { ...u, locked: false, lockReason: null, failedLogins: 0, password, mustChangePassword: true, tokenGeneration: u.tokenGeneration + 1 };
    });
  }

  /**
   * ResetPassword's refusals that need no quorum, checked before one is asked for: NOT_FOUND for an
   * unknown user, FAILED_PRECONDITION for the actor's own password (ChangePassword does that),
   * INVALID_ARGUMENT for a new password outside the policy.
   */
  async checkResettable(actor: Actor, name: string, newPassword: string): Promise<void> {
    await this.getUser(name);
    if (actorName(actor) === name) throw precondition("use ChangePassword to change your own password");
    checkPasswordPolicy(newPassword, "new password");
  }

  /**
   * Sets another user's password (policy applies), makes it change that password at its next login
   * and revokes its sessions. A user changes its own password with {@link changePassword} instead
   * (FAILED_PRECONDITION). Does not unlock.
   */
  async resetPassword(actor: Actor, name: string, newPassword: string): Promise<UserInfo> {
    checkUsername(name);
    checkPasswordPolicy(newPassword, "new password");
    if (actorName(actor) === name) throw precondition(`use ChangePassword to change your own password`);
    const password = await this.hash(newPassword);
    return this.update(name, `reset password of ${name}`, (u) => ({
      ...u,
      password,
      mustChangePassword: true,
      tokenGeneration: u.tokenGeneration + 1,
    }));
  }

  /**
   * A user a key can be shared with: it exists and is a crypto user (keys are shared with crypto
   * users only). INVALID_ARGUMENT without a name, NOT_FOUND, FAILED_PRECONDITION for another role.
   */
  async shareTarget(name: string): Promise<{ user: string; userId: string }> {
    if (!name) throw invalid("username is required");
    const who = await this.identity(name);
    if (!who) throw notFound(`user ${name} not found`);
    if (who.role !== "CU") throw precondition(`user ${name} is not a crypto user: keys are shared with crypto users only`);
    return { user: who.name, userId: who.userId };
  }
}
