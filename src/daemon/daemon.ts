import { existsSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import type { Config } from "../config";
import { AccessGuard, PeerRateLimiter } from "../access";
import { AuditLog, UseTally, type AuditThrottle } from "../audit";
import { Code, HsmError } from "../errors";
import { buildGrpcServer, connectionBudget, describeTransport, grpcServerCredentials, listenGrpc, setServing, type CryptoStreams, type GrpcListener } from "../grpc";
import { buildAdminApp } from "../http";
import { type DueTimer, type KeyPlacement, KeyService, SINGLE_NODE } from "../keys";
import { Metrics } from "../metrics";
import type { Device } from "../pkcs11";
import type { DirLock, StateStore } from "../store";
import { Applier, Membership, TRANSPORT_KEY_ID, Watermarks, reconcile } from "../cluster";
import { checkListenAddresses, listenError } from "../listen-check";
import { HashLane, QuorumService, UserService } from "../users";
import { startReplication } from "./catch-up";
import { ensureDomain } from "./domain";
import { ensureUsers } from "./first-officer";
import { openDevice, openStore } from "./open";
import { type DaemonOptions, stderrLog } from "./options";
import { firstOfficerPasswordFile, officerPasswordFile } from "./paths";
import { clusterStatus, readiness, status } from "./status";
import { rotationTimer } from "./timers";

/** How often expired quorum requests are marked (and audited) and dead sessions purged. */
const SWEEP_MS = 30_000;
/** How often a cluster member reports its applied revision and health to the store. */
const REPORT_MS = 2_000;

/**
 * Wires the parts and starts them in dependency order: store → device → domain key → key service
 * (load records, reconcile with the device) → gRPC (TLS, or plaintext in dev mode on loopback) →
 * admin HTTP (plain: health, metrics, status carry no secrets). `stop()` undoes it in reverse.
 */
export class Daemon {
  grpcPort = 0;
  adminPort = 0;
  /** When this process started serving (ISO 8601), reported by /v1/status. */
  readonly startedAt = new Date().toISOString();
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;
  private reporter: NodeJS.Timeout | undefined;
  private unwatchRemoval: (() => void) | undefined;
  /** Audits requests refused before decoding; flushed before the audit log closes. */
  private refusals: AuditThrottle | undefined;
  private streams: CryptoStreams | undefined;
  /** Counts crypto streams' successful operations into audit entries per stream, key and second; flushed before the audit log closes. */
  private tally: UseTally | undefined;
  /** Set when this node was removed from its cluster: it then serves nothing. */
  removed = false;
  /** The last report's view of the state store (a cluster member serves crypto without it, refuses writes). */
  storeReachable = true;
  /** The node data directory's lock (cluster mode; the embedded store holds its own). */
  private nodeLock: DirLock | undefined;
  /** The applier: follows the store into this node's HSM (src/cluster/applier.ts). */
  applier!: Applier;
  /** In a cluster: the nodes' applied-revision watermarks (src/cluster/watermark.ts). */
  watermarks: Watermarks | undefined;
  private grpcListener: GrpcListener | undefined;
  /** Periodic lifecycle passes (scheduled rotation, …: ./timers.ts), started last, stopped first. */
  private readonly timers: DueTimer[] = [];

  private constructor(
    readonly config: Config,
    readonly store: StateStore,
    readonly device: Device,
    readonly keys: KeyService,
    readonly metrics: Metrics,
    readonly domainKeyId: string,
    readonly users: UserService,
    readonly quorum: QuorumService,
    readonly audit: AuditLog,
    readonly membership: Membership | undefined,
    private readonly grpcServer: grpc.Server,
    private readonly health: ReturnType<typeof buildGrpcServer>["health"],
    private readonly admin: ReturnType<typeof buildAdminApp>,
    private readonly log: (msg: string) => void,
  ) {}

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const { config } = opts;
    const log = opts.log ?? stderrLog;
    // TLS files are read before anything is opened: a bad file stops the start with a ConfigError.
    const credentials = grpcServerCredentials(config);
    // A busy port is answered now, in one line, not after the store, the device and the reconcile.
    await checkListenAddresses(config);
    const metrics = new Metrics();
    const cluster = config.cluster;
    const { store, nodeLock } = await openStore(config, log);
    let device: Device | undefined;
    let audit: AuditLog | undefined;
    let grpcBound: { server: grpc.Server; listener: GrpcListener } | undefined;
    try {
      audit = await AuditLog.open(config.audit.file, { node: config.node.id, fsync: config.audit.fsync === "always" ? "always" : "never", warn: (m) => log(`audit: ${m}`) });
      device = await openDevice(config, metrics, log);
      const membership = cluster
        ? new Membership({
            store,
            device,
            nodeId: config.node.id,
            advertise: cluster.advertise,
            joinTtlMs: cluster.joinTtlMs,
            token: { module: config.device.module, tokenLabel: config.device.tokenLabel ?? undefined, slot: config.device.slot ?? undefined },
          })
        : undefined;
      const domainKeyId = await ensureDomain(store, device, opts, config, membership, log);
      // From here on the domain key not being found is a device fault (UNAVAILABLE, the module re-initialized), never a missing key.
      device.markEssential(domainKeyId, "secret");
      const nodeId = cluster ? config.node.id : undefined;
      const watermarks = nodeId ? new Watermarks({ store, nodeId, minNodes: cluster?.minNodes, log }) : undefined;
      const placement: KeyPlacement = watermarks ?? SINGLE_NODE;
      const keys = new KeyService({ device, store, limits: config.limits, domainKeyId, log, nodeId, placement, objectBudget: config.device.objectBudget, lifecycle: config.lifecycle });
      const applier = new Applier({ store, device, records: keys.records, watermarks, nodeId, log });
      await startReplication({ store, keys, applier, watermarks, dataDir: config.node.dataDir, fullCheck: opts.fullCheck, log });
      const t0 = Date.now();
      const rec = await reconcile({ device, store, records: keys.records, domainKeyId, nodeId, log }, { purgeOrphans: opts.purgeOrphans });
      log(
        `records checked against the token in ${Date.now() - t0} ms: ${keys.keyCount} keys, ${rec.materialized} materialized, ${rec.upgraded} made unextractable, ` +
          `${rec.restored} restored from quarantine, ${rec.quarantined} quarantined, ${rec.purged} purged${rec.lost.length ? `, ${rec.lost.length} LOST: ${rec.lost.join(", ")}` : ""}`,
      );
      if (rec.inQuarantine > 0) {
        log(
          `quarantine: the token holds objects of ${rec.inQuarantine} key(s) that no record explains (CKA_LABEL hsmd-quarantine:<key id>; nothing was destroyed). ` +
            "If the store log was restored from an older copy, or lost before `hsmd init`, put back the log that has their records and start again: they are restored. " +
            "If they are leftovers you do not need (a create or delete a crash interrupted), start once with --purge-orphans to destroy them.",
        );
      }
      log(
        "domain key: no CKA_UNWRAP_TEMPLATE (pkcs11js cannot pass nested attribute templates), so the device does not force keys unwrapped under it to be sensitive and unextractable: " +
          "whoever holds the token PIN and a record's wrapped blob from the store can unwrap that key in the clear. Keep the store as secret as the PIN (docs/SECURITY.md).",
      );

      const hashLane = new HashLane(config.auth.hashLane);
      const loginLimiter = new PeerRateLimiter(config.auth.loginRateLimit);
      const users = new UserService({ store, sessionTtlMs: config.auth.sessionTtlMs, maxFailedLogins: config.auth.maxFailedLogins, hashLane });
      const quorum = new QuorumService({ store, ttlMs: config.auth.quorumTtlMs, policy: { ...config.auth.quorum } });
      await ensureUsers(store, users, !!opts.init, config, log);
      const otpFile = firstOfficerPasswordFile(config.node.dataDir);

      const limits = config.limits;
      const tally = new UseTally(audit, { onError: (e) => log(`audit: stream counts could not be written: ${e instanceof Error ? e.message : String(e)}`) });
      const built = buildGrpcServer({
        keys,
        users,
        quorum,
        guard: new AccessGuard(users, keys),
        audit,
        auditFile: config.audit.file,
        auditFsync: config.audit.fsync,
        membership,
        applier,
        watermarks,
        domainKeyId,
        clusterName: cluster?.name,
        storeRevision: () => store.revision(),
        gate: () => (self?.removed ? new HsmError(Code.Unavailable, `node ${config.node.id} was removed from cluster ${cluster?.name ?? ""}: it serves nothing`) : undefined),
        loginLimiter,
        onPasswordChanged: (user) => {
          if (user === config.auth.firstOfficer && existsSync(otpFile)) unlinkSync(otpFile);
          const recovered = officerPasswordFile(config.node.dataDir, user);
          if (existsSync(recovered)) unlinkSync(recovered);
        },
        maxMessageBytes: limits.maxMessageBytes,
        maxBatchItems: limits.maxBatchItems,
        connections: config.connections,
        tally,
        streams: { maxInFlight: config.grpc.streamMaxInFlight, maxInFlightTotal: config.grpc.streamMaxInFlightTotal, authRecheckMs: config.grpc.streamAuthRecheckMs },
        observe: (m, c, s) => metrics.observeRpc(m, c, s),
        log,
      });
      const { server, health, refusals } = built;
      metrics.setPoolSource(() => device!.poolStats());
      metrics.setWorkerSource(() => device!.workerStats());
      metrics.setKeyCountSource(() => keys.keyCount);
      metrics.setKeyObjectsSource(() => keys.records.stats());
      metrics.setLoginSource(() => ({ ...hashLane.stats(), rateLimited: loginLimiter.refused }));
      // The admin routes call back into the daemon, which needs the admin app to stop it.
      let self: Daemon | undefined;
      const admin = buildAdminApp({ metrics, readiness: () => self!.readiness(), status: () => self!.status(), bounds: config.connections.admin, log });
      const d = new Daemon(config, store, device, keys, metrics, domainKeyId, users, quorum, audit, membership, server, health, admin, log);
      d.nodeLock = nodeLock;
      d.applier = applier;
      d.watermarks = watermarks;
      self = d;
      d.refusals = refusals;
      d.streams = built.streams;
      d.tally = tally;
      if (membership) {
        let members = 1;
        metrics.setClusterSource(() => ({ storeRevision: store.revision(), appliedRevision: applier.appliedRevision, nodes: members, storeReachable: d.storeReachable }));
        d.unwatchRemoval = membership.watchRemoval(() => void d.onRemoved());
        d.reporter = setInterval(() => {
          void d.report().then((n) => (members = n ?? members));
        }, REPORT_MS);
        d.reporter.unref();
        void d.report();
      }
      d.sweeper = setInterval(() => void d.sweep(), SWEEP_MS);
      d.sweeper.unref();
      const budget = connectionBudget({ configured: config.connections.maxConnections, fdReserve: config.connections.fdReserve, adminConnections: config.connections.admin.maxConnections });
      log(budget.message);
      try {
        d.grpcListener = await listenGrpc(built, config.listen.grpc, credentials, { maxConnections: budget.maxConnections, handshakeTimeoutMs: config.connections.handshakeTimeoutMs, log });
      } catch (e) {
        throw listenError("grpc", config.listen.grpc, e);
      }
      d.grpcPort = d.grpcListener.port;
      grpcBound = { server, listener: d.grpcListener };
      log(`gRPC transport: ${describeTransport(config)}`);
      await admin.listen({ host: config.listen.admin.host, port: config.listen.admin.port }).catch((e: unknown) => {
        throw listenError("admin", config.listen.admin, e);
      });
      d.adminPort = (admin.server.address() as { port: number }).port;
      setServing(health, true);
      // Lifecycle passes, one line each (every node runs them; updateRecord's compare-and-put makes each change once).
      d.timers.push(rotationTimer(d, log));
      for (const t of d.timers) t.start();
      return d;
    } catch (e) {
      if (grpcBound) {
        const closed = grpcBound.listener.stopAccepting();
        grpcBound.server.forceShutdown();
        grpcBound.listener.destroyAll();
        await closed.catch(() => undefined);
      }
      await device?.close();
      await audit?.close();
      await store.close();
      nodeLock?.release();
      throw e;
    }
  }

  /**
   * Writes this node's report (applied revision, HSM and store health) to the store, where the
   * cluster status reads it; answers the member count, or undefined when the store is unreachable.
   */
  async report(): Promise<number | undefined> {
    if (!this.membership || this.removed || this.stopped) return undefined;
    const [hsmHealthy, storeReachable] = await Promise.all([this.device.healthy(), this.store.healthy()]);
    if (storeReachable !== this.storeReachable) this.log(storeReachable ? "state store reachable again" : "state store unreachable: serving crypto with the keys this node holds, refusing writes");
    this.storeReachable = storeReachable;
    if (!storeReachable) return undefined;
    // Kept locally too: after a restart the node says how far behind it starts.
    writeFileSync(join(this.config.node.dataDir, "applied-revision"), `${this.applier.appliedRevision}\n`);
    // Idle, the applier publishes nothing (only key events do): the tick keeps the status' lag current.
    this.watermarks?.publish(this.applier.appliedRevision);
    try {
      await this.membership.report({ appliedRevision: this.applier.appliedRevision, storeRevision: this.store.revision(), hsmHealthy, storeReachable, keys: this.keys.keyCount });
      return (await this.membership.nodes()).length;
    } catch {
      return undefined;
    }
  }

  /** This node was removed from its cluster: stop serving, and drop the domain and transport keys from its HSM. */
  private async onRemoved(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    setServing(this.health, false);
    this.log(`node ${this.config.node.id} was removed from cluster ${this.config.cluster?.name}: serving nothing; destroying its copy of the domain key`);
    await this.audit.append({ operation: "NodeRemoved", target: this.config.node.id, status: "OK" }, { sync: true }).catch(() => undefined);
    await this.device.destroy(this.domainKeyId).catch(() => undefined);
    await this.device.destroy(TRANSPORT_KEY_ID).catch(() => undefined);
    await this.applier.destroyAll();
  }

  /**
   * Marks quorum requests past their deadline expired (each one audited, so expiry shows in the log
   * as approvals and rejections do) and deletes sessions that can no longer authenticate.
   */
  async sweep(): Promise<void> {
    try {
      for (const q of await this.quorum.expireStale()) {
        await this.audit.append({ operation: "QuorumExpired", target: q.id, status: "OK", detail: `${q.operation}: ${q.approvals.length} of ${q.required} approvals` }, { sync: true });
      }
      await this.users.purgeSessions();
    } catch (e) {
      this.log(`sweep failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** /readyz checks (see readiness in ./status). */
  async readiness() {
    return readiness(this);
  }

  /** /v1/status: node, token, mechanisms, key count (see ./status). Never a PIN or key material. */
  async status() {
    return status(this);
  }

  /** Every member with its last report (see ./status). */
  async clusterStatus() {
    return clusterStatus(this);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all(this.timers.map((t) => t.stop()));
    clearInterval(this.sweeper);
    clearInterval(this.reporter);
    this.unwatchRemoval?.();
    setServing(this.health, false);
    const listenerClosed = this.grpcListener?.stopAccepting();
    // Open crypto streams would hold tryShutdown for its whole grace: end them first, transient, so
    // that clients carry on at another endpoint.
    await this.streams?.close(new HsmError(Code.Unavailable, `node ${this.config.node.id} is stopping: reconnect (another endpoint)`, { transient: true }));
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.grpcServer.forceShutdown();
        resolve();
      }, 5000);
      this.grpcServer.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
    this.grpcListener?.destroyAll();
    await listenerClosed;
    await this.admin.close();
    this.applier.stop();
    await this.watermarks?.flushed();
    this.watermarks?.stop();
    await this.refusals?.flush();
    await this.tally?.close();
    await this.audit.close();
    await this.device.close();
    await this.store.close();
    this.nodeLock?.release();
    this.log("stopped");
  }
}
