import type { Config } from "../config";
import type { KeyService } from "../keys";
import type { AuditLog } from "../audit";
import type { Applier, Membership, Watermarks } from "../cluster";
import { describeTransport } from "../grpc";
import { type Device, mechanismName } from "../pkcs11";
import type { StateStore } from "../store";

/** What the admin routes read of a running daemon: the parts and its live state, nothing it could change. */
export interface DaemonView {
  readonly config: Config;
  readonly store: StateStore;
  readonly device: Device;
  readonly keys: KeyService;
  readonly applier: Applier;
  readonly watermarks: Watermarks | undefined;
  readonly domainKeyId: string;
  readonly audit: AuditLog;
  readonly membership: Membership | undefined;
  readonly startedAt: string;
  readonly grpcPort: number;
  readonly adminPort: number;
  readonly removed: boolean;
  readonly storeReachable: boolean;
}

/**
 * /readyz checks: session usable, store writable, domain key present. While a device fault is
 * suspected (see FaultWatch) the domain key check looks at the token itself and re-initializes the
 * module when it is not seen, so a node that recovered reports ready again without a restart.
 */
export async function readiness(d: DaemonView) {
  const domainCheck = async (): Promise<boolean> => {
    if (d.device.faults.faulty) return d.device.faults.check();
    return d.device.has(d.domainKeyId, "secret");
  };
  const [session, storeOk, domain] = await Promise.all([d.device.healthy(), d.store.healthy(), domainCheck().catch(() => false)]);
  const fault = d.device.faults.faulty;
  return [
    { name: "device_session", ok: session, detail: session ? undefined : "no usable logged-in session" },
    { name: "store_writable", ok: storeOk, detail: storeOk ? undefined : "state store is not writable" },
    {
      name: "domain_key",
      ok: domain,
      detail: domain
        ? undefined
        : fault
          ? `the device cannot find domain key ${d.domainKeyId}: a device fault, re-initializing the module (see the log)`
          : `domain key ${d.domainKeyId} missing from the token`,
    },
  ];
}

/** /v1/status: node, token, mechanisms, key count and materialization counters. Never a PIN or key material. */
export async function status(d: DaemonView) {
  return {
    node: { id: d.config.node.id, startedAt: d.startedAt, grpcPort: d.grpcPort, adminPort: d.adminPort, pid: process.pid },
    transport: { grpc: describeTransport(d.config), admin: "plain HTTP (health, metrics, status: no secrets)" },
    token: { ...d.device.token, profile: d.config.device.profile, module: d.config.device.module },
    mechanisms: d.device.mechanisms().map(mechanismName),
    pool: d.device.poolStats(),
    store: { kind: d.config.cluster ? "etcd" : "embedded", revision: d.store.revision(), appliedRevision: d.applier.appliedRevision, reachable: d.storeReachable },
    cluster: d.membership ? await clusterStatus(d) : null,
    domainKeyId: d.domainKeyId,
    keys: d.keys.keyCount,
    /** Keys materialized in the device: budget, resident objects, hits, misses, evictions, apply-time proofs. */
    keyObjects: d.keys.records.stats(),
    limits: d.config.limits,
    auth: {
      sessionTtlMs: d.config.auth.sessionTtlMs,
      maxFailedLogins: d.config.auth.maxFailedLogins,
      quorum: d.config.auth.quorum,
      quorumTtlMs: d.config.auth.quorumTtlMs,
      loginRateLimit: d.config.auth.loginRateLimit,
      hashLane: d.config.auth.hashLane,
    },
    audit: { file: d.config.audit.file, entries: d.audit.lastSeq, lastHash: d.audit.lastHash },
  };
}

/** Every member with its last report: applied revision (its watermark), lag behind this node's view (store revision − watermark), HSM health, last contact. */
export async function clusterStatus(d: DaemonView) {
  const members = await d.membership!.members(d.store.revision(), d.watermarks?.all());
  return {
    name: d.config.cluster!.name,
    self: d.config.node.id,
    removed: d.removed,
    applyFailures: d.applier.applyFailures.size,
    nodes: members.map((n) => ({
      ...n,
      joinedAt: new Date(n.joinedAt).toISOString(),
      lag: n.lag ?? null,
      lastContact: n.lastContact === undefined ? null : new Date(n.lastContact).toISOString(),
    })),
  };
}
