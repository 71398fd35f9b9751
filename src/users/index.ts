/**
 * Users, roles, passwords, sessions, lockout and M-of-N quorum as records in the state store. Transport
 * free: the gRPC auth layer authenticates each call with {@link UserService.authenticate}, checks the
 * role, calls {@link requirePasswordChanged}, and routes quorum operations through {@link QuorumService}.
 */
export {
  DEFAULT_MAX_FAILED_LOGINS,
  DEFAULT_SESSION_TTL_MS,
  INVALID_CREDENTIALS,
  PASSWORD_CHANGE_OPERATIONS,
  SESSIONS_PREFIX,
  USERS_INIT_KEY,
  USERS_PREFIX,
  UserService,
  requirePasswordChanged,
  sessionIdOf,
  toUserInfo,
  type InitializeResult,
  type UserServiceOptions,
} from "./service";
export {
  DEFAULT_QUORUM_TTL_MS,
  QUORUM_PREFIX,
  QuorumService,
  type QuorumApproval,
  type QuorumRequest,
  type QuorumServiceOptions,
  type QuorumStatus,
} from "./quorum";
export {
  DEFAULT_SCRYPT,
  PASSWORD_MAX_LENGTH,
  PASSWORD_MIN_LENGTH,
  USERNAME_MAX_LENGTH,
  USERNAME_PATTERN,
  checkPasswordPolicy,
  checkUsername,
  generateOneTimePassword,
  hashPassword,
  isValidUsername,
  verifyPassword,
  type ScryptParams,
} from "./password";
export { QuorumPendingError, passQuorum } from "./quorum-gate";
export { DEFAULT_HASH_LANE, HASH_LANE_FULL, HashLane, type HashLaneOptions, type HashLaneStats } from "./hash-lane";
export { ROLES, type Actor, type LockReason, type LoginResult, type PasswordHash, type Principal, type Role, type SessionRecord, type UserInfo, type UserRecord } from "./types";
