/**
 * Configuration of hsmd: JSON Schema and defaults side by side (`schema.ts`), device profiles from
 * `hsm-config/`, validated once with every problem reported together, compiled into a frozen,
 * fully-resolved {@link Config} whose PIN never prints.
 */
export { loadConfig } from "./load";
export { compileConfig, validateConfig } from "./compile";
export { ConfigError, formatProblems } from "./problems";
export { describeConfig, REDACTED } from "./redact";
export { parseListenAddress } from "./listen";
export { TLS_REQUIRED, describeTransport, isLoopbackHost, readTlsFiles } from "./tls";
export { findProfileDir, CONFIG_DIR_ENV } from "./profiles";
export {
  AUTH_DEFAULTS,
  CLUSTER_DEFAULTS,
  LOGIN_RATE_DEFAULTS,
  HASH_LANE_DEFAULTS,
  CONFIG_SCHEMA,
  PROFILE_SCHEMA,
  LIMIT_DEFAULTS,
  LISTEN_DEFAULTS,
  DEFAULT_PROFILE,
  QUORUM_OPERATIONS,
  defaultDeviceWorkers,
  OBJECT_BUDGET_DEFAULTS,
} from "./schema";
export { PROFILE_NAMES } from "./types";
export { ADMIN_CONNECTION_FIELDS, CONNECTION_FIELDS } from "./connections";
export { GRPC_FIELDS } from "./grpc";

export type { LoadConfigOptions } from "./load";
export type { CompileOptions } from "./compile";
export type { RedactedConfig } from "./redact";
export type { TlsMaterial } from "./tls";
export type {
  AuditConfig,
  AuthConfig,
  ClusterConfig,
  Config,
  ConnectionsConfig,
  GrpcConfig,
  ConfigProblem,
  DeviceConfig,
  DeviceQuirks,
  LimitsConfig,
  ListenAddress,
  PinSource,
  ProfileName,
  TlsConfig,
} from "./types";
