/** The device kinds hsmd ships a profile for, one `hsm-config/<name>.json` each. */
export const PROFILE_NAMES = ["softhsm2", "yubihsm2", "luna", "generic"] as const;

/** Name of a device profile: selects `hsm-config/<name>.json` as the base of `device`. */
export type ProfileName = (typeof PROFILE_NAMES)[number];

/**
 * Where the PIN of the token's user (CKU_USER, for C_Login) is read from. Never the PIN itself: a
 * config file is not a secret store.
 */
export type PinSource = { readonly env: string } | { readonly file: string };

/** One problem found in a configuration: a JSON pointer into the (merged) document and a reason. */
export interface ConfigProblem {
  /** JSON pointer such as `/device/poolSize`; `/` for the document as a whole. */
  readonly path: string;
  /** Why the value is refused, e.g. `must be integer`. Never contains a secret. */
  readonly message: string;
}

/** A `host:port` listen address, parsed once. Port 0 asks the OS for any free port (tests). */
export interface ListenAddress {
  /** Host or IP literal without brackets (`127.0.0.1`, `::1`, `localhost`). */
  readonly host: string;
  readonly port: number;
  /** The address as given (`[::1]:7443`), ready for grpc-js `bindAsync` or `listen`. */
  readonly address: string;
}

/**
 * What a device can and cannot do, beyond its mechanism list (read from the token at start). The
 * domain layers consult these instead of testing the profile name.
 */
export interface DeviceQuirks {
  /** How many objects the token holds (a YubiHSM 2 holds 256); null = no fixed limit. Bounds device.objectBudget's default. */
  readonly maxObjects: number | null;
  /** How many sessions the module opens at once (YubiHSM 2: 16); null = no fixed limit. Bounds `poolSize`. */
  readonly maxSessions: number | null;
  /** AES key sizes (bits) the device generates for CKM_AES_KEY_GEN (SoftHSM2: 128 and 256 only here). */
  readonly aesKeyBits: readonly number[];
  /** Largest RSA modulus (bits) for CKM_RSA_PKCS_KEY_PAIR_GEN. */
  readonly maxRsaBits: number;
  /** Keys are materialized as session objects (CKA_TOKEN false) only, reloaded from the store on demand. */
  readonly sessionObjectsOnly: boolean;
  /**
   * Crypto calls on a token key use a session-object copy of it (C_CopyObject, once per key and
   * process): worth it where *Init on a token object is slow (SoftHSM2 re-reads the object's file);
   * off where session objects are scarce (a YubiHSM 2's 256 objects).
   */
  readonly sessionCopiesForCrypto: boolean;
  /** CKM_EC_EDWARDS_KEY_PAIR_GEN / CKM_EDDSA with Ed25519 is usable. */
  readonly supportsEd25519: boolean;
  /** CKM_AES_KEY_WRAP_PAD (RFC 5649) is usable: needed to hold the cluster's domain key wraps. */
  readonly supportsAesKeyWrapPad: boolean;
}

/** The resolved device section: profile, then file, then overrides; PIN read from its source. */
export interface DeviceConfig {
  readonly profile: ProfileName;
  /** Path of the PKCS#11 module (.so) passed to C_Initialize. */
  readonly module: string;
  /** CKA_LABEL of the token to use (preferred); null when a slot index selects it. */
  readonly tokenLabel: string | null;
  /** Index in the module's list of slots with a token present; null when the label selects it. */
  readonly slot: number | null;
  /** The user PIN for C_Login. Secret: redacted by `toJSON`, `describeConfig` and `util.inspect`. */
  readonly pin: string;
  /** Where the PIN came from (not secret, shown in status). */
  readonly pinSource: PinSource;
  /** Number of open sessions in the pool (one operation per session at a time). */
  readonly poolSize: number;
  /**
   * Session workers (worker_threads, one session each) that run sign, verify, encrypt, decrypt and
   * random off the event loop, in batches; 0 = on the main thread's pool through pkcs11js' async
   * forms (libuv's thread pool). @default max(1, os.availableParallelism()), within quirks.maxSessions - poolSize
   */
  readonly workers: number;
  /**
   * Device objects kept materialized for keys (each part counts: a key pair is 2); the least
   * recently used key is destroyed to make room and unwrapped again from its record when used.
   * @default quirks.maxObjects - OBJECT_BUDGET_DEFAULTS.reserve when the device has a limit, else 20,000
   */
  readonly objectBudget: number;
  readonly quirks: DeviceQuirks;
  /**
   * Mechanisms (CKM_* names) hsmd treats as absent although the token lists them: policy (a
   * mechanism an operator does not want used), or one a device lists but does wrong. A call that
   * needs one answers FAILED_PRECONDITION naming it, as for a mechanism the device lacks.
   * @default []
   */
  readonly disabledMechanisms: readonly string[];
}

/** Every limit enforced at the edge (DESIGN principle 7): requests beyond them get RESOURCE_EXHAUSTED or INVALID_ARGUMENT. */
export interface LimitsConfig {
  /** Largest data/plaintext/ciphertext payload of one call, in bytes. */
  readonly maxPayloadBytes: number;
  /** Largest number of items in one batch call. */
  readonly maxBatchItems: number;
  /** Longest key/user label, in characters. */
  readonly maxLabelLength: number;
  /** Most bytes one GenerateRandom call returns (C_GenerateRandom). */
  readonly maxRandomBytes: number;
  /** Largest page a List call returns. */
  readonly maxPageSize: number;
  /** Longest client request id (idempotency key), in characters. */
  readonly maxRequestIdLength: number;
  /**
   * Longest RSA-OAEP label (CK_RSA_PKCS_OAEP_PARAMS pSourceData) of Encrypt, Decrypt, WrapKey and
   * UnwrapKey, in bytes. The label is hashed, never stored, so a small bound costs callers nothing.
   */
  readonly maxOaepLabelBytes: number;
  /**
   * Largest request message, in bytes, checked on the wire before it is decoded (RESOURCE_EXHAUSTED
   * naming it). @default maxBatchItems × (maxPayloadBytes + 1024) + 65536: a full batch of full items fits
   */
  readonly maxMessageBytes: number;
}

/**
 * gRPC TLS: absolute paths of PEM files (resolved against the config file's directory), checked at
 * compile time (readable, PEM, parseable, key matching the certificate) and read again by the daemon
 * when it binds. The key's contents are never held in the Config, logged or put in an error.
 */
export interface TlsConfig {
  /** The server certificate chain (PEM): the leaf first, then any intermediates. */
  readonly cert: string;
  /** The private key of `cert` (PEM, unencrypted; protect it with file permissions). */
  readonly key: string;
  /** CA certificate(s) (PEM) that client certificates must chain to; null when none is configured. */
  readonly ca: string | null;
  /** Mutual TLS: refuse clients without a certificate signed by `ca`. */
  readonly requireClientCert: boolean;
}

/**
 * The daemon's configuration, fully resolved: every default applied, the device profile merged, the
 * PIN read. Deeply frozen; `JSON.stringify` shows the PIN as `"[redacted]"`.
 */
/** Users, sessions, lockout and quorum (the `auth` section, resolved). */
export interface AuthConfig {
  /** session token lifetime. @default 3_600_000 (1 hour) */
  readonly sessionTtlMs: number;
  /** consecutive failed logins that lock a user. @default 5 */
  readonly maxFailedLogins: number;
  /** the crypto officer `hsmd init` creates. @default "admin" */
  readonly firstOfficer: string;
  /** time to gather approvals, then to run the approved operation. @default 600_000 (10 minutes) */
  readonly quorumTtlMs: number;
  /** operation -> M approvals; absent means no quorum. @default {} */
  readonly quorum: Readonly<Record<string, number>>;
  /** Login rate per client address (token bucket). @default { burst: 30, perSecond: 10, maxPeers: 10000 } */
  readonly loginRateLimit: { readonly burst: number; readonly perSecond: number; readonly maxPeers: number };
  /** The lane every scrypt hash runs in. @default { concurrency: 2, maxQueue: 64 } */
  readonly hashLane: { readonly concurrency: number; readonly maxQueue: number };
}

/** The audit log (the `audit` section, resolved). */
export interface AuditConfig {
  /** absolute path. @default `<dataDir>/audit/audit.log` */
  readonly file: string;
  /** `always`: fdatasync every entry; `changes`: only key and user changes (before the RPC answers). @default "changes" */
  readonly fsync: "always" | "changes";
}

/**
 * Bounds on connections (the `connections` section, resolved): what peers can make the daemon hold
 * before and besides their calls. Enforced by the gRPC listener and the admin server.
 */
export interface ConnectionsConfig {
  /** gRPC connections open at once (net.Server maxConnections), before the start-time clamp to the fd limit. @default 1000 */
  readonly maxConnections: number;
  /** file descriptors kept for the HSM, the store, the audit log and the process. @default 128 */
  readonly fdReserve: number;
  /** grpc.max_connection_idle_ms. @default 300_000 */
  readonly idleTimeoutMs: number;
  /** a connection that has not started a call by then (TLS handshake, HTTP/2 preface) is closed. @default 10_000 */
  readonly handshakeTimeoutMs: number;
  /** grpc.keepalive_time_ms. @default 60_000 */
  readonly keepaliveMs: number;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (grpc.max_concurrent_streams). @default 32 */
  readonly maxConcurrentStreams: number;
  /** grpc-node.max_session_memory (nghttp2's per-session memory, MiB). @default 16 */
  readonly maxSessionMemoryMiB: number;
  /** unread response bytes per connection before its calls answer RESOURCE_EXHAUSTED. @default 8 MiB */
  readonly maxQueuedResponseBytes: number;
  /** The admin (fastify) server's own bounds. */
  readonly admin: {
    /** @default 64 */
    readonly maxConnections: number;
    /** fastify connectionTimeout. @default 10_000 */
    readonly connectionTimeoutMs: number;
    /** fastify keepAliveTimeout. @default 5_000 */
    readonly keepAliveTimeoutMs: number;
    /** fastify requestTimeout. @default 10_000 */
    readonly requestTimeoutMs: number;
  };
}

/** How the gRPC server serves its streams (the `grpc` section, resolved). */
export interface GrpcConfig {
  /** operations one crypto stream may have in flight before the daemon stops reading it. @default 256 */
  readonly streamMaxInFlight: number;
  /** operations all crypto streams together may have in flight. @default 4096 */
  readonly streamMaxInFlightTotal: number;
  /** how often an open stream's session is authenticated again, in ms. @default 250 */
  readonly streamAuthRecheckMs: number;
}

/** Membership of a cluster (the `cluster` section, resolved); null on a single node. */
export interface ClusterConfig {
  /** the cluster's name; its records live under `hsmd/<name>/` in etcd */
  readonly name: string;
  /** etcd client endpoints, `http(s)://host:port` */
  readonly endpoints: readonly string[];
  /** PEM contents for TLS to etcd (read at start); null: plaintext */
  readonly tls: { readonly ca?: Buffer; readonly cert?: Buffer; readonly key?: Buffer } | null;
  /** the gRPC address other members and clients reach this node at. @default listen.grpc */
  readonly advertise: string;
  /** a new key may be used once this many nodes hold it. @default 1 (once committed) */
  readonly minNodes: number;
  /** time a join request waits for approval. @default 600_000 */
  readonly joinTtlMs: number;
}

/**
 * Key lifecycle timing (issue 13): rotation periods, deletion windows and the passes that apply
 * them. Periods and windows are counted in days of `dayMs` (one real day; tests shorten it).
 */
export interface LifecycleConfig {
  /** Length of one "day" of rotation periods and deletion windows, in ms. @default 86400000 */
  readonly dayMs: number;
  /** How often each node looks for due rotations, deletions and expiries, in ms. @default 60000 */
  readonly checkIntervalMs: number;
  /** ScheduleKeyDeletion's window bounds, in days. @default { min: 7, max: 30 } (as KMS) */
  readonly deletionWindowDays: { readonly min: number; readonly max: number };
  /** Automatic rotation period bounds, in days. @default { min: 90, max: 2560 } (as KMS) */
  readonly rotationPeriodDays: { readonly min: number; readonly max: number };
}

export interface Config {
  readonly node: {
    /** This node's id in the cluster (default: the host name). */
    readonly id: string;
    /** Absolute directory holding the embedded store and node state. */
    readonly dataDir: string;
  };
  readonly listen: {
    /** gRPC API endpoint. */
    readonly grpc: ListenAddress;
    /** HTTP admin endpoint (/healthz, /readyz, /metrics, /v1/status). */
    readonly admin: ListenAddress;
  };
  /** gRPC over TLS; null only in dev mode (plaintext on loopback). */
  readonly tls: TlsConfig | null;
  /** Plaintext gRPC allowed when `tls` is absent, on loopback listen addresses only. */
  readonly devMode: boolean;
  readonly device: DeviceConfig;
  readonly limits: LimitsConfig;
  readonly auth: AuthConfig;
  readonly audit: AuditConfig;
  readonly connections: ConnectionsConfig;
  readonly grpc: GrpcConfig;
  readonly cluster: ClusterConfig | null;
  readonly lifecycle: LifecycleConfig;
  /** Where the configuration came from, for status and error reports. */
  readonly sources: {
    /** Absolute path of the config file, or null when built from overrides alone. */
    readonly file: string | null;
    /** Absolute path of the device profile file that was merged. */
    readonly profile: string;
  };
}
