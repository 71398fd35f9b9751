/** Records and views of the users module: what is stored under `users/`, `sessions/` and what callers see. */

/** The three roles of CloudHSM's model (DESIGN.md, roles table): crypto officer, crypto user, appliance user. */
export type Role = "CO" | "CU" | "AU";

/** Every role, in the order they are documented. */
export const ROLES: readonly Role[] = ["CO", "CU", "AU"];

/**
 * A memory-hard password hash with the parameters it was made with, so that a later change of the
 * default cost never invalidates stored passwords.
 */
export interface PasswordHash {
  alg: "scrypt";
  /** scrypt cost (a power of two) */
  N: number;
  /** scrypt block size */
  r: number;
  /** scrypt parallelisation */
  p: number;
  /** random salt, base64 */
  salt: string;
  /** derived key, base64 */
  hash: string;
  /** derived key length in bytes */
  keyLen: number;
}

/** Why a user is locked: too many failed logins in a row, or a crypto officer's LockUser. */
export type LockReason = "failedLogins" | "officer";

/** The stored user record, JSON under `users/<name>`. Never leaves the users module as is (it holds the hash). */
export interface UserRecord {
  /** random id of this incarnation of the name: a user deleted and created again does not inherit old sessions */
  id: string;
  name: string;
  role: Role;
  password: PasswordHash;
  /** set by initialization and by a password reset; cleared by the user's own ChangePassword */
  mustChangePassword: boolean;
  locked: boolean;
  /** set while locked */
  lockReason: LockReason | null;
  /** consecutive failed logins (reset by a successful login and by unlock) */
  failedLogins: number;
  /** bumped by password change, reset, lock and lockout: sessions of an older generation are revoked */
  tokenGeneration: number;
  /** ms since the epoch */
  createdAt: number;
  /** ms since the epoch */
  updatedAt: number;
}

/** What listUsers/getUser show: the record without its hash, id or token generation. */
export interface UserInfo {
  name: string;
  role: Role;
  mustChangePassword: boolean;
  locked: boolean;
  lockReason: LockReason | null;
  failedLogins: number;
  createdAt: number;
  updatedAt: number;
}

/** The stored session, JSON under `sessions/<sha256(token) hex>`. The token itself is never stored. */
export interface SessionRecord {
  user: string;
  /** {@link UserRecord.id} of the user at login */
  userId: string;
  /** ms since the epoch */
  expiresAt: number;
  /** {@link UserRecord.tokenGeneration} at login */
  generation: number;
  /** ms since the epoch */
  createdAt: number;
  /** optional client facts given at login (client address, user agent): audit material, never secrets */
  meta?: Record<string, string>;
}

/** An authenticated caller, as {@link UserService.authenticate} returns it. */
export interface Principal {
  user: string;
  /** {@link UserRecord.id}: the incarnation of the name; key ownership and shares are bound to it */
  userId: string;
  role: Role;
  /** sha256 of the token, hex: names the session in audit entries without being usable as a token */
  sessionId: string;
  mustChangePassword: boolean;
  /** ms since the epoch */
  expiresAt: number;
}

/** The answer to a login (and to refresh and changePassword, which hand out a fresh session). */
export interface LoginResult {
  /** 32 random bytes, base64url: the bearer token; shown once, stored only as its sha256 */
  token: string;
  /** ms since the epoch */
  expiresAt: number;
  mustChangePassword: boolean;
  role: Role;
}

/** Who performs a user-management call: a {@link Principal} or just the user name. */
export type Actor = string | { user: string };
