/**
 * Tamper-evident audit log: an append-only file of hash-chained JSON lines ({@link AuditLog}),
 * its verification ({@link verifyAuditLog}), filtered reading ({@link queryAuditLog}) and the
 * `audit verify` command ({@link runAuditVerify}). Transport-free: the gRPC layer appends one
 * {@link AuditEntry} per RPC, and per crypto stream one per key and window of successes
 * ({@link UseTally}).
 */
export {
  AUDIT_FIELDS,
  GENESIS_HASH,
  GRPC_STATUS_NAMES,
  MAX_DETAIL_LENGTH,
  canonicalize,
  hashEntry,
  type AuditEntry,
  type AuditRecord,
  type StoredAuditEntry,
} from "./entry";
export { AuditLog, type AppendOptions, type AuditLogOptions } from "./log";
export { AuditThrottle, peerHost, type AuditThrottleOptions } from "./throttle";
export { TALLY_OPERATION, UseTally, type TallyUse, type UseTallyOptions } from "./tally";
export { parseTallyDetail, type TallyDetail } from "./tally-detail";
export {
  verifyAuditLog,
  type AuditProblem,
  type AuditProblemKind,
  type AuditVerifyOptions,
  type AuditVerifyResult,
} from "./verify";
export { DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, checkQueryArgs, queryAuditLog, type AuditPage, type AuditQuery } from "./query";
export { AUDIT_VERIFY_USAGE, runAuditVerify, type TextSink } from "./cli";
