/**
 * The user and session records in the state store, and what every user operation shares: the
 * options, store keys, hashing in the lane, read-modify-write with a compare, lockout counting.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { getJson, getJsonFresh, type Compare, type JsonEntry, type StateStore } from "../store";
import { DEFAULT_SCRYPT, checkScryptParams, checkUsername, hashPassword, verifyPassword, type ScryptParams } from "./password";
import { HashLane } from "./hash-lane";
import type { Attempt } from "./txn";
import { retryTxn } from "./txn";
import { ROLES, type Actor, type PasswordHash, type Role, type SessionRecord, type UserInfo, type UserRecord } from "./types";

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

/** Random bytes of a session token. */
export const TOKEN_BYTES = 32;
/** A session token as issued (base64url of {@link TOKEN_BYTES}). */
export const TOKEN_PATTERN = /^[A-Za-z0-9_-]{43}$/;
/** Most entries of a login's metadata. */
export const META_MAX_ENTRIES = 8;
/** Longest value of a login's metadata. */
export const META_MAX_CHARS = 256;

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

/** Helpers shared by the users/ files. */
export const userKey = (name: string) => USERS_PREFIX + name;
/** @internal shared by the users/ files. */
export const sessionKey = (id: string) => SESSIONS_PREFIX + id;
/** @internal shared by the users/ files. */
export const encode = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8");
/** @internal shared by the users/ files. */
export const unauthenticated = (msg: string) => new HsmError(Code.Unauthenticated, msg);
/** @internal shared by the users/ files. */
export const denied = (msg: string) => new HsmError(Code.PermissionDenied, msg);
/** @internal shared by the users/ files. */
export const actorName = (a: Actor) => (typeof a === "string" ? a : a?.user);

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

/** INVALID_ARGUMENT unless `role` is one of {@link ROLES}. */
export function checkRole(role: unknown): asserts role is Role {
  if (!ROLES.includes(role as Role)) throw invalid(`role must be one of ${ROLES.join(", ")}, got ${JSON.stringify(role)}`);
}

/** PERMISSION_DENIED naming why the user is locked and who can unlock it. */
export function lockedError(u: UserRecord): HsmError {
  return denied(
    u.lockReason === "officer"
      ? `user ${u.name} is locked by a crypto officer: a crypto officer must unlock it`
      : `user ${u.name} is locked after ${u.failedLogins} failed logins: a crypto officer must unlock it`,
  );
}

/**
 * The state every user operation shares (the store, the clock, the limits, the hash lane) and the
 * record-level steps they are built from. {@link UserService} is this plus sessions and user admin.
 */
export abstract class UserRecords {
  protected readonly store: StateStore;
  protected readonly now: () => number;
  protected readonly sessionTtlMs: number;
  protected readonly maxFailedLogins: number;
  protected readonly scrypt: ScryptParams;
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

  // ---- internals -------------------------------------------------------------------------------

  protected newRecord(name: string, role: Role, password: PasswordHash, mustChangePassword: boolean): UserRecord {
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

  protected newSession(u: UserRecord, now: number, meta?: Record<string, string>): { token: string; id: string; session: SessionRecord } {
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

  protected async readUser(name: string): Promise<JsonEntry<UserRecord>> {
    checkUsername(name);
    const cur = await getJson<UserRecord>(this.store, userKey(name));
    if (!cur) throw notFound(`user ${name} not found`);
    return cur;
  }

  protected async readSession(token: string): Promise<{ session: JsonEntry<SessionRecord>; id: string }> {
    if (typeof token !== "string" || !TOKEN_PATTERN.test(token)) throw unauthenticated("invalid session token");
    const id = sessionIdOf(token);
    // A session another node created a moment ago may not be in this node's copy yet.
    const session = await getJsonFresh<SessionRecord>(this.store, sessionKey(id));
    if (!session) throw unauthenticated("invalid session token");
    return { session, id };
  }

  /** Read-modify-write of one user record; `change` returns undefined for "nothing to do". */
  protected update(name: string, what: string, change: (u: UserRecord) => UserRecord | undefined): Promise<UserInfo> {
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
  protected async lastCoGuard(name: string, verb: "deleted" | "locked"): Promise<Compare[]> {
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
  protected failedLogin(cur: JsonEntry<UserRecord>, err: HsmError): Attempt<HsmError> {
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
  protected async verifyCached(cache: Map<string, boolean>, password: string, hash: PasswordHash): Promise<boolean> {
    const k = `${hash.salt}:${hash.hash}`;
    let ok = cache.get(k);
    if (ok === undefined) {
      ok = await this.verify(password, hash);
      cache.set(k, ok);
    }
    return ok;
  }

  /** scrypt of a new password, in the lane (RESOURCE_EXHAUSTED when it is full). */
  protected hash(password: string): Promise<PasswordHash> {
    return this.hashLane.run(() => hashPassword(password, this.scrypt));
  }

  /** scrypt check of a password, in the lane (RESOURCE_EXHAUSTED when it is full). */
  protected verify(password: string, stored: PasswordHash): Promise<boolean> {
    return this.hashLane.run(() => verifyPassword(password, stored));
  }

  /**
   * The same scrypt work as a real check, for unknown users (no user enumeration by timing): a check
   * against a hash of this service's cost whose salt and value are random, so it never matches and
   * needs no hashing of its own to make.
   */
  protected async dummyVerify(password: string): Promise<void> {
    this.dummyHash ??= { alg: "scrypt", ...this.scrypt, salt: randomBytes(16).toString("base64"), hash: randomBytes(32).toString("base64"), keyLen: 32 };
    await this.verify(password, this.dummyHash);
  }
}
