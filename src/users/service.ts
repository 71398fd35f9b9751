/**
 * Users, passwords, sessions and lockout as records in the state store (transport-free; the gRPC auth
 * layer decides who may call what, this module keeps the records right).
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { getJson, getJsonFresh, type Compare, type JsonEntry, type Op, type StateStore } from "../store";
import {
  DEFAULT_SCRYPT,
  checkPasswordPolicy,
  checkScryptParams,
  checkUsername,
  generateOneTimePassword,
  hashPassword,
  isValidUsername,
  verifyPassword,
  type ScryptParams,
} from "./password";
import { HashLane } from "./hash-lane";
import { retryTxn, type Attempt } from "./txn";
import {
  ROLES,
  type Actor,
  type LoginResult,
  type PasswordHash,
  type Principal,
  type Role,
  type SessionRecord,
  type UserInfo,
  type UserRecord,
} from "./types";

/** Store prefix of user records: `users/<name>`. */
export const USERS_PREFIX = "users/";
/** Store prefix of sessions: `sessions/<sha256(token) hex>`. */
export const SESSIONS_PREFIX = "sessions/";
/** Store key written once by {@link UserService.initialize}: a second initialization is refused even in a race. */
export const USERS_INIT_KEY = "users-meta/initialized";
/** Default session lifetime: one hour. */
export const DEFAULT_SESSION_TTL_MS = 3_600_000;
/** Default count of consecutive failed logins that locks a user. */
export const DEFAULT_MAX_FAILED_LOGINS = 5;
/** The one message for a wrong password and for an unknown user (no user enumeration by message). */
export const INVALID_CREDENTIALS = "invalid username or password";
/** Operations a principal that must change its one-time password may still call. */
export const PASSWORD_CHANGE_OPERATIONS: readonly string[] = ["ChangePassword", "Logout"];

const TOKEN_BYTES = 32;
const TOKEN_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const META_MAX_ENTRIES = 8;
const META_MAX_CHARS = 256;

/** Options of {@link UserService}. */
export interface UserServiceOptions {
  store: StateStore;
  /** clock in ms since the epoch (tests inject one) */
  now?: () => number;
  /** session lifetime, default {@link DEFAULT_SESSION_TTL_MS} */
  sessionTtlMs?: number;
  /** consecutive failed logins that lock a user, default {@link DEFAULT_MAX_FAILED_LOGINS} */
  maxFailedLogins?: number;
  /** scrypt cost of new hashes, default {@link DEFAULT_SCRYPT}; existing hashes keep their own */
  scrypt?: ScryptParams;
  /**
   * Where every scrypt hash and check runs: a bounded lane, so that logins never take the libuv
   * threads device calls need (default: a lane of {@link DEFAULT_HASH_LANE}'s size).
   */
  hashLane?: HashLane;
}

/** The answer of {@link UserService.initialize}: the first CO and its one-time password, shown only this once. */
export interface InitializeResult {
  name: string;
  role: "CO";
  oneTimePassword: string;
}

const userKey = (name: string) => USERS_PREFIX + name;
const sessionKey = (id: string) => SESSIONS_PREFIX + id;
const encode = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8");
const unauthenticated = (msg: string) => new HsmError(Code.Unauthenticated, msg);
const denied = (msg: string) => new HsmError(Code.PermissionDenied, msg);
const actorName = (a: Actor) => (typeof a === "string" ? a : a?.user);

/** sha256 of a token, hex: the session's store key and its id in audit entries. */
export function sessionIdOf(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** The public view of a user record (no hash, id or token generation). */
export function toUserInfo(u: UserRecord): UserInfo {
  return {
    name: u.name,
    role: u.role,
    mustChangePassword: u.mustChangePassword,
    locked: u.locked,
    lockReason: u.lockReason,
    failedLogins: u.failedLogins,
    createdAt: u.createdAt,
    updatedAt: u.updatedAt,
  };
}

function checkRole(role: unknown): asserts role is Role {
  if (!ROLES.includes(role as Role)) throw invalid(`role must be one of ${ROLES.join(", ")}, got ${JSON.stringify(role)}`);
}

function lockedError(u: UserRecord): HsmError {
  return denied(
    u.lockReason === "officer"
      ? `user ${u.name} is locked by a crypto officer: a crypto officer must unlock it`
      : `user ${u.name} is locked after ${u.failedLogins} failed logins: a crypto officer must unlock it`,
  );
}

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

/**
 * Users (roles CO, CU, AU), their passwords (scrypt, parameters recorded with the hash), login sessions
 * (bearer tokens stored only as their sha256), lockout after consecutive failed logins, and revocation.
 * Every write is a store txn guarded by a compare on what it read, retried on conflict, so concurrent
 * writers (other requests, other nodes) never lose an update. No state is kept in memory: every node
 * sharing the store sees the same users and sessions.
 */
export class UserService {
  private readonly store: StateStore;
  private readonly now: () => number;
  private readonly sessionTtlMs: number;
  private readonly maxFailedLogins: number;
  private readonly scrypt: ScryptParams;
  private dummyHash: PasswordHash | undefined;
  /** The bounded lane every scrypt call of this service runs in. */
  readonly hashLane: HashLane;

  constructor(opts: UserServiceOptions) {
    this.store = opts.store;
    this.now = opts.now ?? Date.now;
    this.sessionTtlMs = opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS;
    this.maxFailedLogins = opts.maxFailedLogins ?? DEFAULT_MAX_FAILED_LOGINS;
    this.scrypt = { ...(opts.scrypt ?? DEFAULT_SCRYPT) };
    this.hashLane = opts.hashLane ?? new HashLane();
    if (!Number.isSafeInteger(this.sessionTtlMs) || this.sessionTtlMs <= 0) {
      throw invalid(`sessionTtlMs must be a positive integer, got ${String(opts.sessionTtlMs)}`);
    }
    if (!Number.isSafeInteger(this.maxFailedLogins) || this.maxFailedLogins < 1) {
      throw invalid(`maxFailedLogins must be a positive integer, got ${String(opts.maxFailedLogins)}`);
    }
    checkScryptParams(this.scrypt);
  }

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
  async createUser(
    actor: Actor,
    name: string,
    role: Role,
    password: string,
    opts: { mustChangePassword?: boolean } = {},
  ): Promise<UserInfo> {
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
    return this.update(name, `unlock user ${name}`, (u) =>
      !u.locked && u.failedLogins === 0 ? undefined : { ...u, locked: false, lockReason: null, failedLogins: 0 },
    );
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

  // ---- internals -------------------------------------------------------------------------------

  private newRecord(name: string, role: Role, password: PasswordHash, mustChangePassword: boolean): UserRecord {
    const now = this.now();
    return {
      id: randomUUID(),
      name,
      role,
      password,
      mustChangePassword,
      locked: false,
      lockReason: null,
      failedLogins: 0,
      tokenGeneration: 0,
      createdAt: now,
      updatedAt: now,
    };
  }

  private newSession(u: UserRecord, now: number, meta?: Record<string, string>): { token: string; id: string; session: SessionRecord } {
    const token = randomBytes(TOKEN_BYTES).toString("base64url");
    const session: SessionRecord = {
      user: u.name,
      userId: u.id,
      expiresAt: now + this.sessionTtlMs,
      generation: u.tokenGeneration,
      createdAt: now,
      ...(meta ? { meta } : {}),
    };
    return { token, id: sessionIdOf(token), session };
  }

  private async readUser(name: string): Promise<JsonEntry<UserRecord>> {
    checkUsername(name);
    const cur = await getJson<UserRecord>(this.store, userKey(name));
    if (!cur) throw notFound(`user ${name} not found`);
    return cur;
  }

  private async readSession(token: string): Promise<{ session: JsonEntry<SessionRecord>; id: string }> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) throw unauthenticated("invalid session token");
    const id = sessionIdOf(token);
    // A session another node created a moment ago may not be in this node's copy yet.
    const session = await getJsonFresh<SessionRecord>(this.store, sessionKey(id));
    if (!session) throw unauthenticated("invalid session token");
    return { session, id };
  }

  /** Read-modify-write of one user record; `change` returns undefined for "nothing to do". */
  private update(name: string, what: string, change: (u: UserRecord) => UserRecord | undefined): Promise<UserInfo> {
    return retryTxn(this.store, what, async () => {
      const cur = await this.readUser(name);
      const next = change(cur.value);
      if (!next) return { result: toUserInfo(cur.value) };
      const rec = { ...next, updatedAt: this.now() };
      return {
        compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }],
        ops: [{ type: "put", key: cur.key, value: encode(rec) }],
        result: toUserInfo(rec),
      };
    });
  }

  /**
   * Refuses (FAILED_PRECONDITION) when no other unlocked CO would remain after deleting or locking
   * `name`; otherwise answers compares on every CO record read, so that two concurrent calls cannot
   * each remove a different one of the last two COs.
   */
  private async lastCoGuard(name: string, verb: "deleted" | "locked"): Promise<Compare[]> {
    const compares: Compare[] = [];
    let others = 0;
    for (const e of await this.store.list(USERS_PREFIX)) {
      const u = JSON.parse(e.value.toString("utf8")) as UserRecord;
      if (u.role !== "CO" || u.name === name) continue;
      compares.push({ key: e.key, op: "modRevision", equals: e.modRevision });
      if (!u.locked) others++;
    }
    if (others === 0) {
      throw precondition(`user ${name} is the last unlocked crypto officer and cannot be ${verb}: create or unlock another CO first`);
    }
    return compares;
  }

  /** Counts one failed login on the record (locking at the limit) and answers `err`, or the lock error if this failure locked. */
  private failedLogin(cur: JsonEntry<UserRecord>, err: HsmError): Attempt<HsmError> {
    const u = cur.value;
    const failedLogins = u.failedLogins + 1;
    const lock = failedLogins >= this.maxFailedLogins;
    const next: UserRecord = lock
      ? { ...u, failedLogins, locked: true, lockReason: "failedLogins", tokenGeneration: u.tokenGeneration + 1, updatedAt: this.now() }
      : { ...u, failedLogins, updatedAt: this.now() };
    return {
      compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }],
      ops: [{ type: "put", key: cur.key, value: encode(next) }],
      result: lock ? lockedError(next) : err,
    };
  }

  /** Verifies once per distinct stored hash across the retries of one call. */
  private async verifyCached(cache: Map<string, boolean>, password: string, hash: PasswordHash): Promise<boolean> {
    const k = `${hash.salt}:${hash.hash}`;
    let ok = cache.get(k);
    if (ok === undefined) {
      ok = await this.verify(password, hash);
      cache.set(k, ok);
    }
    return ok;
  }

  /** scrypt of a new password, in the lane (RESOURCE_EXHAUSTED when it is full). */
  private hash(password: string): Promise<PasswordHash> {
    return this.hashLane.run(() => hashPassword(password, this.scrypt));
  }

  /** scrypt check of a password, in the lane (RESOURCE_EXHAUSTED when it is full). */
  private verify(password: string, stored: PasswordHash): Promise<boolean> {
    return this.hashLane.run(() => verifyPassword(password, stored));
  }

  /**
   * The same scrypt work as a real check, for unknown users (no user enumeration by timing): a check
   * against a hash of this service's cost whose salt and value are random, so it never matches and
   * needs no hashing of its own to make.
   */
  private async dummyVerify(password: string): Promise<void> {
    this.dummyHash ??= { alg: "scrypt", ...this.scrypt, salt: randomBytes(16).toString("base64"), hash: randomBytes(32).toString("base64"), keyLen: 32 };
    await this.verify(password, this.dummyHash);
  }
}
