/**
 * Authorization: the table of who may call each RPC ({@link RULES}) and the guard that applies it
 * (sessions, roles, key ownership and shares). Every RPC passes through it.
 */
export { AccessGuard } from "./guard";
export { keyAccess, type KeyAccess } from "./key-access";
export { RULES, ROLE_NAMES, reEncryptKeys, type KeyNeed, type KeyRef, type Rule } from "./policy";
export { DEFAULT_LOGIN_RATE, PeerRateLimiter, peerAddress, type RateDecision, type RateLimitOptions } from "./rate-limit";
