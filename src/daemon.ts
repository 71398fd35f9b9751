import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import type * as grpc from "@grpc/grpc-js";
import type { Config } from "./config";
import { AccessGuard, PeerRateLimiter } from "./access";
import { AuditLog, type AuditThrottle } from "./audit";
import { Code, HsmError, precondition } from "./errors";
import { buildGrpcServer, connectionBudget, describeTransport, freeFds, grpcServerCredentials, listenGrpc, setServing, type GrpcListener } from "./grpc";
import { buildAdminApp } from "./http";
import { KeyService } from "./keys";
import { Metrics } from "./metrics";
import { Device, mechanismName } from "./pkcs11";
import { DirLock, openEmbeddedStore, openEtcdStore, type StateStore } from "./store";
import { Applier, Coverage, Membership, TRANSPORT_KEY_ID, reconcile, type JoinRecord } from "./cluster";
import { checkListenAddresses, listenError } from "./listen-check";
import { HashLane, QuorumService, USERS_INIT_KEY, UserService, generateOneTimePassword } from "./users";

/** The store key of the node's cluster identity: which domain key wraps its records. */
const DOMAIN_META = "meta/domain";
/** How often expired quorum requests are marked (and audited) and dead sessions purged. */
const SWEEP_MS = 30_000;
/** How often a cluster member reports its applied revision and health to the store. */
const REPORT_MS = 2_000;

/** Where `hsmd init` leaves the first crypto officer's one-time password (mode 600; removed when it is changed). */
export function firstOfficerPasswordFile(dataDir: string): string {
  return join(dataDir, "first-officer-password");
}

/**
 * Where `hsmd officer unlock NAME` leaves the officer's new one-time password (mode 600; removed
 * when the officer changes it on this node).
 */
export function officerPasswordFile(dataDir: string, name: string): string {
  return join(dataDir, `officer-${name}-password`);
}

interface DomainMeta {
  domainKeyId: string;
  createdAt: string;
  initializedBy: string;
}

export interface DaemonOptions {
  config: Config;
  /** Create the domain key and the node's metadata when the store has none (`hsmd init`). */
  init?: boolean;
  /**
   * Join an existing cluster when this node's HSM lacks the cluster's domain key (`hsmd join`):
   * records a join request and waits for a crypto officer to approve it.
   */
  join?: boolean;
  /** Called with the join request once recorded (the operator shows its fingerprint to the approving officer). */
  onJoinRequest?: (r: JoinRecord) => void;
  /**
   * Destroy the device objects no record explains (and those already in quarantine) instead of
   * quarantining them (`--purge-orphans`): only when the store is known to be complete.
   */
  purgeOrphans?: boolean;
  log?: (msg: string) => void;
}

/** Redacted, human-facing log line writer (stderr). */
export function stderrLog(msg: string): void {
  process.stderr.write(`${new Date().toISOString()} hsmd: ${msg}\n`);
}

/**
 * Wires the parts and starts them in dependency order: store → device → domain key → key service
 * (load records, reconcile with the device) → gRPC (TLS, or plaintext in dev mode on loopback) →
 * admin HTTP (plain: health, metrics, status carry no secrets). `stop()` undoes it in reverse.
 */
export class Daemon {
  grpcPort = 0;
  adminPort = 0;
  private readonly startedAt = new Date().toISOString();
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;
  private reporter: NodeJS.Timeout | undefined;
  private unwatchRemoval: (() => void) | undefined;
  /** Audits requests refused before decoding; flushed before the audit log closes. */
  private refusals: AuditThrottle | undefined;
  /** Set when this node was removed from its cluster: it then serves nothing. */
  removed = false;
  private storeReachable = true;
  /** The node data directory's lock (cluster mode; the embedded store holds its own). */
  private nodeLock: DirLock | undefined;
  /** The applier: follows the store into this node's HSM (src/cluster/applier.ts). */
  private applier!: Applier;
  private grpcListener: GrpcListener | undefined;

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
    private readonly admin: FastifyInstance,
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
    mkdirSync(config.node.dataDir, { recursive: true, mode: 0o700 });
    // One process per node data directory (its audit log has one writer): the embedded store locks its
    // own directory; on etcd the data directory is locked (offline commands such as `hsmd officer
    // unlock` take the same lock).
    const nodeLock = cluster ? DirLock.acquire(config.node.dataDir, "node data directory") : undefined;
    const tStore = Date.now();
    let store: StateStore;
    try {
      store = cluster
        ? await openEtcdStore({ endpoints: [...cluster.endpoints], prefix: `hsmd/${cluster.name}/`, tls: cluster.tls ?? undefined, log })
        : await openEmbeddedStore(join(config.node.dataDir, "store"));
    } catch (e) {
      nodeLock?.release();
      throw e;
    }
    log(`state store (${cluster ? "etcd" : "embedded"}) open at revision ${store.revision()} in ${Date.now() - tStore} ms`);
    let device: Device | undefined;
    let audit: AuditLog | undefined;
    let grpcBound: { server: grpc.Server; listener: GrpcListener } | undefined;
    try {
      audit = await AuditLog.open(config.audit.file, { node: config.node.id, fsync: config.audit.fsync === "always" ? "always" : "never", warn: (m) => log(`audit: ${m}`) });
      device = await Device.open({
        module: config.device.module,
        tokenLabel: config.device.tokenLabel ?? undefined,
        slot: config.device.slot ?? undefined,
        pin: config.device.pin,
        poolSize: config.device.poolSize,
        disabledMechanisms: config.device.disabledMechanisms,
        // In a cluster, keys live in their records (wrapped) and every node materializes them: as
        // session objects, which SoftHSM2 creates ~50x faster than token objects (each of those is a
        // file it rescans); a restart materializes them again from the records.
        tokenObjects: !config.device.quirks.sessionObjectsOnly && !config.cluster,
        sessionCopies: config.device.quirks.sessionCopiesForCrypto,
        observer: (m, s, ok) => metrics.observeDevice(m, s, ok),
        log,
        freeFds,
      });
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
      const coverage = new Coverage({ store, nodeId, minNodes: cluster?.minNodes, log });
      const keys = new KeyService({ device, store, limits: config.limits, domainKeyId, log, nodeId, placement: coverage });
      const applier = new Applier({ store, device, records: keys.records, coverage, nodeId, log });
      applier.start(await keys.start());
      if (cluster) {
        const last = Number.parseInt(readFileSync(join(config.node.dataDir, "applied-revision"), { encoding: "utf8", flag: "a+" }) || "0", 10) || 0;
        log(`applier: last applied revision ${last}, store at ${store.revision()}: ${Math.max(0, store.revision() - last)} revisions to catch up`);
      }
      const t0 = Date.now();
      const rec = await reconcile({ device, store, records: keys.records, coverage, domainKeyId, nodeId, log }, { purgeOrphans: opts.purgeOrphans });
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
        coverage,
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
        observe: (m, c, s) => metrics.observeRpc(m, c, s),
        log,
      });
      const { server, health, refusals } = built;
      metrics.setPoolSource(() => device!.poolStats());
      metrics.setKeyCountSource(() => keys.keyCount);
      metrics.setLoginSource(() => ({ ...hashLane.stats(), rateLimited: loginLimiter.refused }));
      // The admin routes call back into the daemon, which needs the admin app to stop it.
      let self: Daemon | undefined;
      const admin = buildAdminApp({ metrics, readiness: () => self!.readiness(), status: () => self!.status(), bounds: config.connections.admin, log });
      const d = new Daemon(config, store, device, keys, metrics, domainKeyId, users, quorum, audit, membership, server, health, admin, log);
      d.nodeLock = nodeLock;
      d.applier = applier;
      self = d;
      d.refusals = refusals;
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

  /**
   * /readyz checks: session usable, store writable, domain key present. While a device fault is
   * suspected (see FaultWatch) the domain key check looks at the token itself and re-initializes the
   * module when it is not seen, so a node that recovered reports ready again without a restart.
   */
  async readiness() {
    const domainCheck = async (): Promise<boolean> => {
      if (this.device.faults.faulty) return this.device.faults.check();
      return this.device.has(this.domainKeyId, "secret");
    };
    const [session, storeOk, domain] = await Promise.all([this.device.healthy(), this.store.healthy(), domainCheck().catch(() => false)]);
    const fault = this.device.faults.faulty;
    return [
      { name: "device_session", ok: session, detail: session ? undefined : "no usable logged-in session" },
      { name: "store_writable", ok: storeOk, detail: storeOk ? undefined : "state store is not writable" },
      {
        name: "domain_key",
        ok: domain,
        detail: domain ? undefined : fault ? `the device cannot find domain key ${this.domainKeyId}: a device fault, re-initializing the module (see the log)` : `domain key ${this.domainKeyId} missing from the token`,
      },
    ];
  }

  /** /v1/status: node, token, mechanisms, key count. Never a PIN or key material. */
  async status() {
    return {
      node: { id: this.config.node.id, startedAt: this.startedAt, grpcPort: this.grpcPort, adminPort: this.adminPort, pid: process.pid },
      transport: { grpc: describeTransport(this.config), admin: "plain HTTP (health, metrics, status: no secrets)" },
      token: { ...this.device.token, profile: this.config.device.profile, module: this.config.device.module },
      mechanisms: this.device.mechanisms().map(mechanismName),
      pool: this.device.poolStats(),
      store: { kind: this.config.cluster ? "etcd" : "embedded", revision: this.store.revision(), appliedRevision: this.applier.appliedRevision, reachable: this.storeReachable },
      cluster: this.membership ? await this.clusterStatus() : null,
      domainKeyId: this.domainKeyId,
      keys: this.keys.keyCount,
      limits: this.config.limits,
      auth: {
        sessionTtlMs: this.config.auth.sessionTtlMs,
        maxFailedLogins: this.config.auth.maxFailedLogins,
        quorum: this.config.auth.quorum,
        quorumTtlMs: this.config.auth.quorumTtlMs,
        loginRateLimit: this.config.auth.loginRateLimit,
        hashLane: this.config.auth.hashLane,
      },
      audit: { file: this.config.audit.file, entries: this.audit.lastSeq, lastHash: this.audit.lastHash },
    };
  }

  /** Every member with its last report: applied revision, lag behind this node's view, HSM health, last contact. */
  async clusterStatus() {
    const members = await this.membership!.members(this.store.revision());
    return {
      name: this.config.cluster!.name,
      self: this.config.node.id,
      removed: this.removed,
      applyFailures: this.applier.applyFailures.size,
      nodes: members.map((n) => ({
        ...n,
        joinedAt: new Date(n.joinedAt).toISOString(),
        lag: n.lag ?? null,
        lastContact: n.lastContact === undefined ? null : new Date(n.lastContact).toISOString(),
      })),
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.sweeper);
    clearInterval(this.reporter);
    this.unwatchRemoval?.();
    setServing(this.health, false);
    const listenerClosed = this.grpcListener?.stopAccepting();
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
    await this.refusals?.flush();
    await this.audit.close();
    await this.device.close();
    await this.store.close();
    this.nodeLock?.release();
    this.log("stopped");
  }
}

/**
 * The domain key: created inside the HSM by `init` (AES-256, sensitive, extractable only under a
 * key the token's SO marked trusted), recorded by id in the store. A started node whose store names
 * a domain key the token lacks refuses to serve; in a cluster, `join` asks for it instead (see
 * Membership), and a node that is not a member refuses to serve.
 */
async function ensureDomain(store: StateStore, device: Device, opts: DaemonOptions, config: Config, membership: Membership | undefined, log: (msg: string) => void): Promise<string> {
  const e = await store.get(DOMAIN_META);
  const cluster = config.cluster;
  if (e) {
    const meta = JSON.parse(e.value.toString("utf8")) as DomainMeta;
    if (!(await device.ensureDomainKey(meta.domainKeyId, false))) {
      if (!membership) throw precondition(`the token does not hold domain key ${meta.domainKeyId} that this node's records are wrapped under: wrong token, or the token was reinitialized`);
      if (!opts.join) throw precondition(`this node's HSM does not hold the domain key of cluster ${cluster!.name}: run \`hsmd join\` and have a crypto officer approve it`);
      const req = await membership.requestJoin();
      log(`join request recorded for node ${config.node.id}: transport key sha256 ${req.fingerprint}; waiting for a crypto officer to approve it (ApproveJoin) until ${new Date(req.expiresAt).toISOString()}`);
      opts.onJoinRequest?.(req);
      await membership.awaitJoin();
      log(`joined cluster ${cluster!.name}: domain key ${meta.domainKeyId} unwrapped into this HSM`);
      return meta.domainKeyId;
    }
    if (membership && !(await membership.isMember())) {
      if (!opts.join) throw precondition(`node ${config.node.id} is not a member of cluster ${cluster!.name} (removed?): run \`hsmd join\` to ask again`);
      // A removed node asking again: its old copy of the domain key is not proof of anything.
      await device.destroy(meta.domainKeyId);
      return ensureDomain(store, device, opts, config, membership, log);
    }
    return meta.domainKeyId;
  }
  if (opts.join) throw precondition(`cluster ${cluster?.name ?? ""} has not been initialized: run \`hsmd init\` on its first node`);
  if (!opts.init) throw precondition("this node is not initialized: run `hsmd init` (creates the domain key inside the HSM)");
  const meta: DomainMeta = { domainKeyId: `hsmd-domain-${randomUUID()}`, createdAt: new Date().toISOString(), initializedBy: config.node.id };
  await device.ensureDomainKey(meta.domainKeyId, true);
  const res = await store.txn([{ key: DOMAIN_META, op: "absent" }], [{ type: "put", key: DOMAIN_META, value: Buffer.from(JSON.stringify(meta)) }]);
  if (!res.succeeded) {
    await device.destroy(meta.domainKeyId);
    return ensureDomain(store, device, { ...opts, init: false }, config, membership, log);
  }
  await membership?.register();
  return meta.domainKeyId;
}

/**
 * The users: `init` creates the first crypto officer (`auth.firstOfficer`) with a one-time password
 * that it must change before anything else. The password goes to a file only the daemon's user can
 * read (never to a log); the file is removed when the officer changes it.
 */
async function ensureUsers(store: StateStore, users: UserService, init: boolean, config: Config, log: (msg: string) => void): Promise<void> {
  if (await store.get(USERS_INIT_KEY)) return;
  if (!init) throw precondition("this node has no users: run `hsmd init` (creates the first crypto officer)");
  const file = firstOfficerPasswordFile(config.node.dataDir);
  // The file is on disk before the officer exists: a crash in between never leaves an officer nobody can log in as.
  const otp = generateOneTimePassword();
  writeFileSync(file, `${otp}\n`, { mode: 0o600, flush: true });
  const first = await users.initialize(config.auth.firstOfficer, otp);
  log(`first crypto officer "${first.name}" created; its one-time password is in ${file} (mode 600): log in and change it (ChangePassword) before anything else`);
}
