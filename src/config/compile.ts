import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { compileConnections, type RawConnections } from "./connections";
import { compileGrpc, type RawGrpc } from "./grpc";
import { isPlainObject, mergeDevice } from "./merge";
import { resolvePin } from "./pin";
import { addProblems } from "./problems";
import { ConfigError } from "./problems";
import { readProfile } from "./profiles";
import { parseListenAddress } from "./listen";
import { sealConfig } from "./redact";
import {
  AUTH_DEFAULTS,
  CLUSTER_DEFAULTS,
  DEFAULT_PROFILE,
  defaultDeviceWorkers,
  HASH_LANE_DEFAULTS,
  ITEM_OVERHEAD_BYTES,
  LIMIT_DEFAULTS,
  LIMITS,
  LISTEN_DEFAULTS,
  LOGIN_RATE_DEFAULTS,
  MESSAGE_OVERHEAD_BYTES,
  OBJECT_BUDGET_DEFAULTS,
  messageBytesFor,
  LIFECYCLE_DEFAULTS,
} from "./schema";
import { checkTransport, type RawTls } from "./tls";
import { checkSchema } from "./validator";
import { PROFILE_NAMES, type Config, type ConfigProblem, type DeviceQuirks, type LifecycleConfig, type LimitsConfig, type PinSource, type ProfileName } from "./types";

/** Options of {@link compileConfig} and {@link validateConfig}. */
export interface CompileOptions {
  /** Environment for the PIN variable and `HSMD_CONFIG_DIR`. @default process.env */
  env?: NodeJS.ProcessEnv;
  /** The config file the document came from (recorded in `sources`, and the base of relative paths). */
  file?: string;
  /** Directory relative paths (`node.dataDir`, `device.pin.file`, `tls.*`) are taken from. @default dirname(file), else the working directory */
  baseDir?: string;
}

/** The device section as the resolved-device schema guarantees it. */
interface MergedDevice {
  module: string;
  tokenLabel?: string;
  slot?: number;
  pin: PinSource;
  poolSize: number;
  workers?: number;
  objectBudget?: number;
  quirks: DeviceQuirks;
  disabledMechanisms?: string[];
}

interface RawDoc {
  node: { id?: string; dataDir: string };
  tls?: RawTls;
  devMode?: boolean;
  listen?: { grpc?: string; admin?: string };
  device?: Record<string, unknown>;
  limits?: Partial<LimitsConfig>;
  lifecycle?: Partial<Omit<LifecycleConfig, "deletionWindowDays" | "rotationPeriodDays">> & {
    deletionWindowDays?: Partial<LifecycleConfig["deletionWindowDays"]>;
    rotationPeriodDays?: Partial<LifecycleConfig["rotationPeriodDays"]>;
  };
  auth?: {
    sessionTtlSeconds?: number;
    maxFailedLogins?: number;
    firstOfficer?: string;
    quorum?: { ttlSeconds?: number; operations?: Record<string, number> };
    loginRateLimit?: { burst?: number; perSecond?: number; maxPeers?: number };
    hashLane?: { concurrency?: number; maxQueue?: number };
  };
  audit?: { file?: string; fsync?: "always" | "changes" };
  connections?: RawConnections;
  grpc?: RawGrpc;
  cluster?: { name: string; etcd: { endpoints: string[]; tls?: { ca?: string; cert?: string; key?: string } }; advertise?: string; minNodes?: number; joinTtlSeconds?: number };
}

/**
 * Checks a configuration document completely without throwing: the schema, the device profile it
 * selects, the merged device section, cross-field rules and the PIN source (which is read, never
 * shown). Returns every problem found; an empty list means {@link compileConfig} will succeed.
 */
export function validateConfig(raw: unknown, options: CompileOptions = {}): ConfigProblem[] {
  return collect(raw, options).problems;
}

/**
 * Turns a parsed config document into the fully-resolved, deeply frozen {@link Config}: defaults
 * applied, profile merged, listen addresses parsed, paths made absolute, PIN read, TLS files checked
 * (gRPC is TLS unless `devMode` on loopback). Throws
 * {@link ConfigError} listing every problem when there is any.
 */
export function compileConfig(raw: unknown, options: CompileOptions = {}): Config {
  const { problems, config } = collect(raw, options);
  if (problems.length || !config) throw new ConfigError(problems);
  return sealConfig(config);
}

function collect(raw: unknown, options: CompileOptions): { problems: ConfigProblem[]; config?: Config } {
  const env = options.env ?? process.env;
  const file = options.file === undefined ? null : resolve(options.file);
  const baseDir = resolve(options.baseDir ?? (file ? dirname(file) : process.cwd()));
  const problems = checkSchema("config", raw);
  if (!isPlainObject(raw)) return { problems };

  // Device: profile file, then the document's device section over it.
  const userDevice = raw.device === undefined ? {} : raw.device;
  let profileName: ProfileName | undefined = DEFAULT_PROFILE;
  if (isPlainObject(userDevice) && userDevice.profile !== undefined) {
    profileName = PROFILE_NAMES.find((n) => n === userDevice.profile); // unknown: reported by the schema
  }
  let device: Config["device"] | undefined;
  let profileFile = "";
  if (isPlainObject(userDevice) && profileName !== undefined) {
    const read = readProfile(profileName, env);
    profileFile = read.file;
    addProblems(problems, read.problems);
    if (read.profile) {
      const { description: _description, ...profileDevice } = read.profile;
      const { profile: _profile, ...overDevice } = userDevice;
      const merged = mergeDevice(profileDevice, overDevice);
      const deviceProblems = checkSchema("device", merged, "/device").map((p) =>
        p.path === "/device/module" && p.message === "is required" ? { ...p, message: `is required (the ${profileName} profile names no module)` } : p,
      );
      // A spot the document's own check already flagged is not reported twice (wording may differ).
      addProblems(
        problems,
        deviceProblems.filter((p) => !problems.some((q) => q.path === p.path)),
      );
      const ok = (path: string) => !deviceProblems.some((p) => p.path === path || p.path.startsWith(`${path}/`));
      const m = merged as unknown as MergedDevice;
      if (ok("/device/poolSize") && ok("/device/quirks/maxSessions") && m.quirks.maxSessions !== null && m.poolSize > m.quirks.maxSessions) {
        addProblems(problems, [{ path: "/device/poolSize", message: `must be <= ${m.quirks.maxSessions} (the device's quirks.maxSessions)` }]);
      }
      // Each session worker opens one session of its own beside the pool's.
      const maxSessions = m.quirks?.maxSessions;
      const sessionRoom = typeof maxSessions === "number" ? maxSessions - m.poolSize : Number.POSITIVE_INFINITY;
      if (ok("/device/workers") && ok("/device/poolSize") && ok("/device/quirks/maxSessions") && m.workers !== undefined && m.workers > sessionRoom) {
        addProblems(problems, [{ path: "/device/workers", message: `must be <= ${Math.max(0, sessionRoom)} (each worker opens a session: poolSize + workers <= the device's quirks.maxSessions)` }]);
      }
      // The key objects' budget leaves room for hsmd's own objects on a device with an object limit.
      const maxObjects = m.quirks?.maxObjects;
      const objectRoom = typeof maxObjects === "number" ? maxObjects - OBJECT_BUDGET_DEFAULTS.reserve : Number.POSITIVE_INFINITY;
      if (ok("/device/objectBudget") && ok("/device/quirks/maxObjects") && m.objectBudget !== undefined && m.objectBudget > objectRoom) {
        addProblems(problems, [
          { path: "/device/objectBudget", message: `must be <= ${objectRoom} (the device's quirks.maxObjects less ${OBJECT_BUDGET_DEFAULTS.reserve} objects hsmd keeps for its own keys)` },
        ]);
      }
      let pin: ReturnType<typeof resolvePin> | undefined;
      if (ok("/device/pin")) {
        pin = resolvePin(m.pin, env, baseDir);
        if ("problem" in pin) addProblems(problems, [pin.problem]);
      }
      if (deviceProblems.length === 0 && pin && "pin" in pin) {
        device = {
          profile: profileName,
          module: m.module,
          tokenLabel: m.tokenLabel ?? null,
          slot: m.tokenLabel === undefined ? (m.slot ?? null) : null,
          pin: pin.pin,
          pinSource: pin.source,
          poolSize: m.poolSize,
          workers: m.workers ?? Math.max(0, Math.min(defaultDeviceWorkers(), sessionRoom)),
          objectBudget: m.objectBudget ?? (Number.isFinite(objectRoom) ? Math.max(OBJECT_BUDGET_DEFAULTS.min, objectRoom) : OBJECT_BUDGET_DEFAULTS.default),
          quirks: { ...m.quirks, aesKeyBits: [...m.quirks.aesKeyBits].sort((a, b) => a - b) },
          disabledMechanisms: [...(m.disabledMechanisms ?? [])],
        };
      }
    }
  }

  // Listen: two distinct endpoints (port 0 is always distinct: the OS picks).
  const listenRaw = isPlainObject(raw.listen) ? raw.listen : {};
  const grpc = parseListenAddress(typeof listenRaw.grpc === "string" ? listenRaw.grpc : LISTEN_DEFAULTS.grpc);
  const admin = parseListenAddress(typeof listenRaw.admin === "string" ? listenRaw.admin : LISTEN_DEFAULTS.admin);
  if (grpc && admin && grpc.port !== 0 && grpc.port === admin.port && grpc.host === admin.host) {
    addProblems(problems, [{ path: "/listen/admin", message: "must differ from /listen/grpc" }]);
  }

  // Transport: TLS, or plaintext in dev mode on loopback only. TLS files are read and checked here.
  const schemaFlagged = (path: string) => problems.some((p) => p.path === path || p.path.startsWith(`${path}/`));
  let tls: Config["tls"] | undefined;
  if (!schemaFlagged("/devMode")) {
    const transport = checkTransport({
      tls: isPlainObject(raw.tls) ? (raw.tls as unknown as RawTls) : undefined,
      tlsSchemaOk: !schemaFlagged("/tls"),
      devMode: raw.devMode === true,
      listen: { grpc, admin },
      baseDir,
    });
    addProblems(problems, transport.problems);
    tls = transport.tls;
  }

  // Cluster: etcd TLS files are read here, so a bad path stops the start with the others.
  let clusterTls: { ca?: Buffer; cert?: Buffer; key?: Buffer } | null = null;
  const rawCluster = isPlainObject(raw.cluster) ? (raw.cluster as unknown as NonNullable<RawDoc["cluster"]>) : undefined;
  if (rawCluster && !schemaFlagged("/cluster")) {
    const t = rawCluster.etcd.tls;
    if (t) {
      clusterTls = {};
      for (const f of ["ca", "cert", "key"] as const) {
        const path = t[f];
        if (path === undefined) continue;
        try {
          clusterTls[f] = readFileSync(resolve(baseDir, path));
        } catch (e) {
          addProblems(problems, [{ path: `/cluster/etcd/tls/${f}`, message: `cannot read ${resolve(baseDir, path)}: ${(e as NodeJS.ErrnoException).code ?? "error"}` }]);
        }
      }
      if ((t.cert === undefined) !== (t.key === undefined)) addProblems(problems, [{ path: "/cluster/etcd/tls", message: "must have both 'cert' and 'key', or neither" }]);
    }
  }

  const limits = schemaFlagged("/limits") ? undefined : resolveLimits(isPlainObject(raw.limits) ? (raw.limits as Partial<LimitsConfig>) : {}, problems);

  if (problems.length || !device || !grpc || !admin || tls === undefined || !limits) return { problems };
  const doc = raw as unknown as RawDoc;
  const dataDir = resolve(baseDir, doc.node.dataDir);
  const auth = doc.auth ?? {};
  const config: Config = {
    node: { id: doc.node.id ?? hostname(), dataDir },
    listen: { grpc, admin },
    tls,
    devMode: doc.devMode ?? false,
    device,
    limits,
    auth: {
      sessionTtlMs: (auth.sessionTtlSeconds ?? AUTH_DEFAULTS.sessionTtlSeconds) * 1000,
      maxFailedLogins: auth.maxFailedLogins ?? AUTH_DEFAULTS.maxFailedLogins,
      firstOfficer: auth.firstOfficer ?? AUTH_DEFAULTS.firstOfficer,
      quorumTtlMs: (auth.quorum?.ttlSeconds ?? AUTH_DEFAULTS.quorumTtlSeconds) * 1000,
      quorum: { ...(auth.quorum?.operations ?? {}) },
      loginRateLimit: { ...LOGIN_RATE_DEFAULTS, ...auth.loginRateLimit },
      hashLane: { ...HASH_LANE_DEFAULTS, ...auth.hashLane },
    },
    cluster: rawCluster
      ? {
          name: rawCluster.name,
          endpoints: rawCluster.etcd.endpoints.map((e) => `${clusterTls ? "https" : "http"}://${e}`),
          tls: clusterTls,
          advertise: rawCluster.advertise ?? grpc.address,
          minNodes: rawCluster.minNodes ?? CLUSTER_DEFAULTS.minNodes,
          joinTtlMs: (rawCluster.joinTtlSeconds ?? CLUSTER_DEFAULTS.joinTtlSeconds) * 1000,
        }
      : null,
    connections: compileConnections(doc.connections),
    grpc: compileGrpc(doc.grpc),
    lifecycle: compileLifecycle(doc.lifecycle, problems),
    audit: { file: doc.audit?.file ? resolve(baseDir, doc.audit.file) : join(dataDir, "audit", "audit.log"), fsync: doc.audit?.fsync ?? "changes" },
    sources: { file, profile: profileFile },
  };
  return { problems, config };
}

/**
 * The limits with their defaults, `maxMessageBytes` derived from the batch and payload limits unless
 * given, so that a batch of `maxBatchItems` items of `maxPayloadBytes` each always fits in one
 * message. A derived size over the largest message hsmd accepts, or a given one too small for a
 * single call of the largest payload, is a problem.
 */
function resolveLimits(given: Partial<LimitsConfig>, problems: ConfigProblem[]): LimitsConfig | undefined {
  const set = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as Partial<LimitsConfig>;
  const merged = { ...LIMIT_DEFAULTS, ...set };
  const needed = messageBytesFor(merged.maxBatchItems, merged.maxPayloadBytes);
  const max = LIMITS.maxMessageBytes.max;
  if (set.maxMessageBytes === undefined) {
    if (needed > max) {
      addProblems(problems, [
        {
          path: "/limits",
          message: `maxBatchItems × (maxPayloadBytes + ${ITEM_OVERHEAD_BYTES}) + ${MESSAGE_OVERHEAD_BYTES} = ${needed} bytes is over ${max}, the largest message hsmd accepts: lower maxBatchItems or maxPayloadBytes, or set maxMessageBytes (a batch then carries at most that many bytes in all)`,
        },
      ]);
      return undefined;
    }
    return { ...merged, maxMessageBytes: needed };
  }
  const single = messageBytesFor(1, merged.maxPayloadBytes);
  if (set.maxMessageBytes < single) {
    addProblems(problems, [{ path: "/limits/maxMessageBytes", message: `must be >= ${single} (one call with a payload of maxPayloadBytes, ${merged.maxPayloadBytes}, and its overhead)` }]);
    return undefined;
  }
  return merged;
}

/** `lifecycle` with its defaults; a range whose min is above its max is a problem. */
function compileLifecycle(raw: RawDoc["lifecycle"], problems: ConfigProblem[]): LifecycleConfig {
  const d = LIFECYCLE_DEFAULTS;
  const range = (name: "deletionWindowDays" | "rotationPeriodDays") => {
    const r = { min: raw?.[name]?.min ?? d[name].min, max: raw?.[name]?.max ?? d[name].max };
    if (r.min > r.max) addProblems(problems, [{ path: `/lifecycle/${name}`, message: `min (${r.min}) must not be above max (${r.max})` }]);
    return r;
  };
  return { dayMs: raw?.dayMs ?? d.dayMs, checkIntervalMs: raw?.checkIntervalMs ?? d.checkIntervalMs, deletionWindowDays: range("deletionWindowDays"), rotationPeriodDays: range("rotationPeriodDays") };
}
