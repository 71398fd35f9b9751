import { availableParallelism } from "node:os";
import { CONNECTIONS_SCHEMA } from "./connections";
import { GRPC_SCHEMA } from "./grpc";
import { PROFILE_NAMES, type LifecycleConfig, type LimitsConfig, type ProfileName } from "./types";

/*
 * JSON Schema of the config file and of the device profiles, with each default written next to the
 * field it belongs to (fastify's habit). Every object is closed (`additionalProperties: false`) so a
 * misspelt key is an error, not a silently ignored setting. `errorMessages` is an annotation of ours
 * (keyword -> message) used by the problem formatter in place of ajv's generic wording.
 */

/** Operations that can be configured to need M-of-N crypto-officer approval. */
export const QUORUM_OPERATIONS = ["DeleteUser", "ResetPassword", "ShareKey", "DeleteKey", "ApproveJoin", "TrimKeyVersions"] as const;

/** Defaults of the `cluster` section. */
export const CLUSTER_DEFAULTS = Object.freeze({ minNodes: 1, joinTtlSeconds: 600 });

/** Defaults of the `auth` section. */
export const AUTH_DEFAULTS = Object.freeze({ sessionTtlSeconds: 3600, maxFailedLogins: 5, firstOfficer: "admin", quorumTtlSeconds: 600 });

/**
 * Defaults of `auth.loginRateLimit`: a token bucket per client address (a burst of 30 logins, then 10
 * a second), so that one peer cannot spend the node's password hashing on guesses.
 */
export const LOGIN_RATE_DEFAULTS = Object.freeze({ burst: 30, perSecond: 10, maxPeers: 10_000 });

/**
 * Defaults of `auth.hashLane`: scrypt runs on libuv's thread pool beside the device calls, so
 * at most 2 hashes run at once and 64 wait; more are refused with RESOURCE_EXHAUSTED (retry).
 */
export const HASH_LANE_DEFAULTS = Object.freeze({ concurrency: 2, maxQueue: 64 });

/** Default listen addresses: loopback only, so a fresh install is not reachable from the network. */
export const LISTEN_DEFAULTS = Object.freeze({ grpc: "127.0.0.1:7443", admin: "127.0.0.1:7480" });

/**
 * Default of `device.workers`: one session worker per core. Measured on 2 cores (docs/BENCHMARKS.md,
 * "Session workers"): with cores − 1 (one worker) a device-bound operation such as RSA-2048 ran on
 * one core only and fell to 0.63 of the raw device on the stream; with one per core it reached
 * 0.98, and every other stream row was as fast or faster (idle workers sleep; the main thread's
 * gRPC work is not starved by them).
 */
export function defaultDeviceWorkers(): number {
  return Math.max(1, availableParallelism());
}

/**
 * `device.objectBudget`: device objects hsmd keeps materialized for keys (each part counts, a key
 * pair is 2), least recently used destroyed first. Default: the profile's `quirks.maxObjects` less
 * OBJECT_RESERVE (hsmd's own objects: the domain key, the import and transport key pairs, and new
 * keys' transient objects while they are made) when the device has a limit, else `default`.
 */
export const OBJECT_BUDGET_DEFAULTS = Object.freeze({ default: 20_000, min: 16, reserve: 16 });

/** Default profile when `device.profile` is absent: the development device. */
export const DEFAULT_PROFILE: ProfileName = "softhsm2";

/**
 * Room per batch item besides its payload (key id, algorithm, IV, signature, a small AAD, framing),
 * and per message besides its items: `maxMessageBytes` defaults to what a full batch of full items needs.
 */
export const ITEM_OVERHEAD_BYTES = 1024;
export const MESSAGE_OVERHEAD_BYTES = 64 * 1024;

/**
 * The request size a batch of `items` items with a payload of `payloadBytes` each needs, with
 * {@link ITEM_OVERHEAD_BYTES} per item and {@link MESSAGE_OVERHEAD_BYTES} per message: the default of
 * `limits.maxMessageBytes`, so that the documented item and payload limits hold together.
 */
export function messageBytesFor(items: number, payloadBytes: number): number {
  return items * (payloadBytes + ITEM_OVERHEAD_BYTES) + MESSAGE_OVERHEAD_BYTES;
}

/** Default and upper bound of each limit (all are positive integers). */
export const LIMITS: { readonly [K in keyof LimitsConfig]: { readonly default: number; readonly max: number } } = Object.freeze({
  maxPayloadBytes: { default: 65536, max: 16 * 1024 * 1024 },
  maxBatchItems: { default: 256, max: 10000 },
  maxLabelLength: { default: 128, max: 1024 },
  maxRandomBytes: { default: 4096, max: 1024 * 1024 },
  maxPageSize: { default: 1000, max: 10000 },
  maxRequestIdLength: { default: 128, max: 1024 },
  maxOaepLabelBytes: { default: 256, max: 65536 },
  // The default follows from the others: see messageBytesFor.
  maxMessageBytes: { default: messageBytesFor(256, 65536), max: 256 * 1024 * 1024 },
});

/** Defaults of `lifecycle` (KMS's bounds: deletion windows 7 to 30 days, rotation periods 90 to 2560). */
export const LIFECYCLE_DEFAULTS: LifecycleConfig = Object.freeze({
  dayMs: 86_400_000,
  checkIntervalMs: 60_000,
  deletionWindowDays: Object.freeze({ min: 7, max: 30 }),
  rotationPeriodDays: Object.freeze({ min: 90, max: 2560 }),
});

/** A {min, max} range of days, 1 to 3650. */
function dayRange(def: { min: number; max: number }) {
  return {
    type: "object",
    additionalProperties: false,
    properties: { min: { type: "integer", minimum: 1, maximum: 3650, default: def.min }, max: { type: "integer", minimum: 1, maximum: 3650, default: def.max } },
  };
}

/** Default limits, as a `LimitsConfig`. */
export const LIMIT_DEFAULTS: LimitsConfig = Object.freeze(Object.fromEntries(Object.entries(LIMITS).map(([k, v]) => [k, v.default])) as unknown as LimitsConfig);

const hostPort = (def: string) => ({
  type: "string",
  format: "host-port",
  default: def,
  errorMessages: { format: "must be host:port with a port in 0..65535 (0 = any free port)" },
});

const pinSchema = {
  type: "object",
  additionalProperties: false,
  properties: {
    env: {
      type: "string",
      pattern: "^[A-Za-z_][A-Za-z0-9_]*$",
      errorMessages: { pattern: "must be an environment variable name (the PIN itself never goes in a config file)" },
    },
    file: { type: "string", minLength: 1 },
  },
  minProperties: 1,
  maxProperties: 1,
  errorMessages: {
    type: 'must be an object { "env": NAME } or { "file": PATH } (the PIN itself never goes in a config file)',
    minProperties: "must have property 'env' or 'file'",
    maxProperties: "must have only one of 'env' or 'file'",
  },
};

const quirkProperties = {
  maxObjects: { type: ["integer", "null"], minimum: 1 },
  maxSessions: { type: ["integer", "null"], minimum: 1 },
  aesKeyBits: {
    type: "array",
    minItems: 1,
    uniqueItems: true,
    items: { type: "integer", enum: [128, 192, 256], errorMessages: { enum: "must be one of 128, 192, 256" } },
  },
  maxRsaBits: { type: "integer", minimum: 1024, maximum: 16384 },
  sessionObjectsOnly: { type: "boolean" },
  sessionCopiesForCrypto: { type: "boolean" },
  supportsEd25519: { type: "boolean" },
  supportsAesKeyWrapPad: { type: "boolean" },
};

/** Fields a profile and the config's `device` section share; the config's values win. */
const deviceProperties = {
  module: { type: "string", minLength: 1 },
  tokenLabel: { type: "string", minLength: 1, maxLength: 32 },
  slot: { type: "integer", minimum: 0 },
  pin: pinSchema,
  poolSize: { type: "integer", minimum: 1, maximum: 256 },
  workers: { type: "integer", minimum: 0, maximum: 64 },
  objectBudget: { type: "integer", minimum: 16, maximum: 100_000_000 },
  quirks: { type: "object", additionalProperties: false, properties: quirkProperties },
  disabledMechanisms: {
    type: "array",
    uniqueItems: true,
    items: { type: "string", pattern: "^CKM_[A-Z0-9_]+$", errorMessages: { pattern: "must be a PKCS#11 mechanism name such as CKM_AES_CMAC" } },
  },
};

const onlyOneTokenSelector = {
  not: { required: ["tokenLabel", "slot"] },
  errorMessages: { not: "must have only one of 'tokenLabel' or 'slot'" },
};

/** Schema of the config file (and of the file merged with overrides). */
export const CONFIG_SCHEMA = {
  $id: "https://hsmd.local/schemas/config.json",
  type: "object",
  additionalProperties: false,
  required: ["node"],
  properties: {
    node: {
      type: "object",
      additionalProperties: false,
      required: ["dataDir"],
      properties: {
        id: { type: "string", minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$", description: "default: host name" },
        dataDir: { type: "string", minLength: 1 },
      },
    },
    listen: {
      type: "object",
      additionalProperties: false,
      properties: { grpc: hostPort(LISTEN_DEFAULTS.grpc), admin: hostPort(LISTEN_DEFAULTS.admin) },
    },
    tls: {
      type: "object",
      additionalProperties: false,
      required: ["cert", "key"],
      properties: {
        cert: { type: "string", minLength: 1, description: "PEM server certificate chain (path)" },
        key: { type: "string", minLength: 1, description: "PEM private key of cert (path)" },
        ca: { type: "string", minLength: 1, description: "PEM CA certificate(s) client certificates must chain to (path)" },
        requireClientCert: { type: "boolean", default: false, description: "mutual TLS; needs ca" },
      },
    },
    devMode: {
      type: "boolean",
      default: false,
      description: "allow plaintext gRPC without tls, on loopback listen addresses only",
    },
    device: {
      type: "object",
      additionalProperties: false,
      properties: {
        profile: { type: "string", enum: [...PROFILE_NAMES], default: DEFAULT_PROFILE },
        ...deviceProperties,
      },
      ...onlyOneTokenSelector,
    },
    auth: {
      type: "object",
      additionalProperties: false,
      properties: {
        sessionTtlSeconds: { type: "integer", minimum: 1, maximum: 604800, default: AUTH_DEFAULTS.sessionTtlSeconds, description: "session token lifetime" },
        maxFailedLogins: { type: "integer", minimum: 1, maximum: 100, default: AUTH_DEFAULTS.maxFailedLogins, description: "consecutive failed logins that lock a user" },
        firstOfficer: {
          type: "string",
          minLength: 1,
          maxLength: 32,
          pattern: "^[a-z0-9][a-z0-9._-]*$",
          errorMessages: { pattern: "must be a username: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit" },
          default: AUTH_DEFAULTS.firstOfficer,
          description: "name of the crypto officer `hsmd init` creates",
        },
        loginRateLimit: {
          type: "object",
          additionalProperties: false,
          description: "logins per client address: a token bucket; over it Login answers RESOURCE_EXHAUSTED saying when to retry",
          properties: {
            burst: { type: "integer", minimum: 1, maximum: 100000, default: LOGIN_RATE_DEFAULTS.burst, description: "logins a client address may make at once" },
            perSecond: { type: "number", exclusiveMinimum: 0, maximum: 100000, default: LOGIN_RATE_DEFAULTS.perSecond, description: "logins a client address regains per second" },
            maxPeers: { type: "integer", minimum: 1, maximum: 10000000, default: LOGIN_RATE_DEFAULTS.maxPeers, description: "client addresses tracked at once (least recently seen forgotten first)" },
          },
        },
        hashLane: {
          type: "object",
          additionalProperties: false,
          description: "the lane scrypt runs in (beside the device calls on libuv's thread pool)",
          properties: {
            concurrency: { type: "integer", minimum: 1, maximum: 64, default: HASH_LANE_DEFAULTS.concurrency, description: "password hashes running at once" },
            maxQueue: { type: "integer", minimum: 0, maximum: 100000, default: HASH_LANE_DEFAULTS.maxQueue, description: "password hashes waiting; beyond it RESOURCE_EXHAUSTED (retry)" },
          },
        },
        quorum: {
          type: "object",
          additionalProperties: false,
          properties: {
            ttlSeconds: { type: "integer", minimum: 1, maximum: 604800, default: AUTH_DEFAULTS.quorumTtlSeconds, description: "time to gather approvals, then to run the approved operation" },
            operations: {
              type: "object",
              additionalProperties: false,
              properties: Object.fromEntries(QUORUM_OPERATIONS.map((op) => [op, { type: "integer", minimum: 1, maximum: 32 }])),
              errorMessages: { additionalProperties: `only these operations can require a quorum: ${QUORUM_OPERATIONS.join(", ")}` },
              description: "operation -> M crypto officers that must approve it (1: no quorum)",
            },
          },
        },
      },
    },
    cluster: {
      type: "object",
      additionalProperties: false,
      required: ["name", "etcd"],
      description: "run as a member of a cluster whose state lives in etcd; absent: single node on the embedded store",
      properties: {
        name: { type: "string", minLength: 1, maxLength: 64, pattern: "^[A-Za-z0-9][A-Za-z0-9._-]*$", description: "the cluster's name: its keys live under hsmd/<name>/ in etcd" },
        etcd: {
          type: "object",
          additionalProperties: false,
          required: ["endpoints"],
          properties: {
            endpoints: { type: "array", minItems: 1, maxItems: 16, items: { type: "string", format: "host-port", errorMessages: { format: "must be host:port" } } },
            tls: {
              type: "object",
              additionalProperties: false,
              properties: {
                ca: { type: "string", minLength: 1, description: "PEM CA certificate(s) of the etcd servers (path)" },
                cert: { type: "string", minLength: 1, description: "PEM client certificate (path)" },
                key: { type: "string", minLength: 1, description: "PEM private key of cert (path)" },
              },
            },
          },
        },
        advertise: { type: "string", format: "host-port", description: "the gRPC address other members and clients reach this node at; default: listen.grpc" },
        minNodes: { type: "integer", minimum: 1, maximum: 64, default: CLUSTER_DEFAULTS.minNodes, description: "a new key may be used once this many nodes hold it (1: once committed)" },
        joinTtlSeconds: { type: "integer", minimum: 10, maximum: 86400, default: CLUSTER_DEFAULTS.joinTtlSeconds, description: "time a join request waits for approval" },
      },
    },
    audit: {
      type: "object",
      additionalProperties: false,
      properties: {
        file: { type: "string", minLength: 1, description: "audit log path; default <dataDir>/audit/audit.log" },
        fsync: { type: "string", enum: ["always", "changes"], default: "changes", description: "fdatasync every entry, or only those of key and user changes (before the RPC answers)" },
      },
    },
    connections: CONNECTIONS_SCHEMA,
    grpc: GRPC_SCHEMA,
    lifecycle: {
      type: "object",
      additionalProperties: false,
      properties: {
        dayMs: {
          type: "integer",
          minimum: 1,
          maximum: 86400000,
          default: LIFECYCLE_DEFAULTS.dayMs,
          description: "length of a day of rotation periods and deletion windows (ms); shorter only for tests",
        },
        checkIntervalMs: {
          type: "integer",
          minimum: 10,
          maximum: 86400000,
          default: LIFECYCLE_DEFAULTS.checkIntervalMs,
          description: "how often each node applies due rotations, deletions and expiries (ms)",
        },
        deletionWindowDays: dayRange(LIFECYCLE_DEFAULTS.deletionWindowDays),
        rotationPeriodDays: dayRange(LIFECYCLE_DEFAULTS.rotationPeriodDays),
      },
    },
    limits: {
      type: "object",
      additionalProperties: false,
      properties: Object.fromEntries(Object.entries(LIMITS).map(([k, v]) => [k, { type: "integer", minimum: 1, maximum: v.max, default: v.default }])),
    },
  },
} as const;

/** Schema of a profile file `hsm-config/<name>.json`: device defaults, every quirk stated. */
export const PROFILE_SCHEMA = {
  $id: "https://hsmd.local/schemas/profile.json",
  type: "object",
  additionalProperties: false,
  required: ["pin", "poolSize", "quirks"],
  properties: {
    description: { type: "string" },
    ...deviceProperties,
    quirks: { ...deviceProperties.quirks, required: Object.keys(quirkProperties) },
  },
  ...onlyOneTokenSelector,
} as const;

/** Schema of the device section once profile and config are merged: everything the adapter needs. */
export const RESOLVED_DEVICE_SCHEMA = {
  $id: "https://hsmd.local/schemas/resolved-device.json",
  type: "object",
  additionalProperties: false,
  required: ["module", "pin", "poolSize", "quirks"],
  properties: {
    ...deviceProperties,
    quirks: { ...deviceProperties.quirks, required: Object.keys(quirkProperties) },
  },
  anyOf: [{ required: ["tokenLabel"] }, { required: ["slot"] }],
  errorMessages: {
    anyOf: "must have property 'tokenLabel' or 'slot'",
    "required/pin": "must have property 'env' or 'file'",
  },
} as const;
