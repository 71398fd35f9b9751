import { randomUUID } from "node:crypto";
import { existsSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import type * as grpc from "@grpc/grpc-js";
import type { Config } from "./config";
import { AccessGuard } from "./access";
import { AuditLog } from "./audit";
import { precondition } from "./errors";
import { bindGrpc, buildGrpcServer, describeTransport, grpcServerCredentials, setServing } from "./grpc";
import { buildAdminApp } from "./http";
import { KeyService } from "./keys";
import { Metrics } from "./metrics";
import { Device, mechanismName } from "./pkcs11";
import { openEmbeddedStore, type StateStore } from "./store";
import { QuorumService, USERS_INIT_KEY, UserService, generateOneTimePassword } from "./users";

/** The store key of the node's cluster identity: which domain key wraps its records. */
const DOMAIN_META = "meta/domain";
/** CKA_ID of the BYOK import key pair. */
const IMPORT_KEY_ID = "hsmd-import";
/** How often expired quorum requests are marked (and audited) and dead sessions purged. */
const SWEEP_MS = 30_000;

/** Where `hsmd init` leaves the first crypto officer's one-time password (mode 600; removed when it is changed). */
export function firstOfficerPasswordFile(dataDir: string): string {
  return join(dataDir, "first-officer-password");
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
    const metrics = new Metrics();
    const store = await openEmbeddedStore(join(config.node.dataDir, "store"));
    let device: Device | undefined;
    let audit: AuditLog | undefined;
    try {
      audit = await AuditLog.open(config.audit.file, { node: config.node.id, fsync: config.audit.fsync === "always" ? "always" : "never", warn: (m) => log(`audit: ${m}`) });
      device = await Device.open({
        module: config.device.module,
        tokenLabel: config.device.tokenLabel ?? undefined,
        slot: config.device.slot ?? undefined,
        pin: config.device.pin,
        poolSize: config.device.poolSize,
        tokenObjects: !config.device.quirks.sessionObjectsOnly,
        observer: (m, s, ok) => metrics.observeDevice(m, s, ok),
        log,
      });
      const domainKeyId = await ensureDomain(store, device, !!opts.init, config.node.id);
      const keys = new KeyService({ device, store, limits: config.limits, domainKeyId, importKeyId: IMPORT_KEY_ID, log });
      await keys.start();
      const rec = await keys.reconcile();
      log(`records checked against the token: ${keys.keyCount} keys, ${rec.materialized} materialized, ${rec.orphansRemoved} orphans removed${rec.lost.length ? `, ${rec.lost.length} LOST: ${rec.lost.join(", ")}` : ""}`);

      const users = new UserService({ store, sessionTtlMs: config.auth.sessionTtlMs, maxFailedLogins: config.auth.maxFailedLogins });
      const quorum = new QuorumService({ store, ttlMs: config.auth.quorumTtlMs, policy: { ...config.auth.quorum } });
      await ensureUsers(store, users, !!opts.init, config, log);
      const otpFile = firstOfficerPasswordFile(config.node.dataDir);

      const limits = config.limits;
      const { server, health } = buildGrpcServer({
        keys,
        users,
        quorum,
        guard: new AccessGuard(users, keys),
        audit,
        auditFile: config.audit.file,
        auditFsync: config.audit.fsync,
        onPasswordChanged: (user) => {
          if (user === config.auth.firstOfficer && existsSync(otpFile)) unlinkSync(otpFile);
        },
        maxMessageBytes: limits.maxPayloadBytes * Math.max(1, Math.min(limits.maxBatchItems, 64)) + 1024 * 1024,
        observe: (m, c, s) => metrics.observeRpc(m, c, s),
        log,
      });
      metrics.setPoolSource(() => device!.poolStats());
      metrics.setKeyCountSource(() => keys.keyCount);
      // The admin routes call back into the daemon, which needs the admin app to stop it.
      let self: Daemon | undefined;
      const admin = buildAdminApp({ metrics, readiness: () => self!.readiness(), status: () => self!.status() });
      const d = new Daemon(config, store, device, keys, metrics, domainKeyId, users, quorum, audit, server, health, admin, log);
      self = d;
      d.sweeper = setInterval(() => void d.sweep(), SWEEP_MS);
      d.sweeper.unref();
      d.grpcPort = await bindGrpc(server, `${config.listen.grpc.host}:${config.listen.grpc.port}`, credentials);
      log(`gRPC transport: ${describeTransport(config)}`);
      await admin.listen({ host: config.listen.admin.host, port: config.listen.admin.port });
      d.adminPort = (admin.server.address() as { port: number }).port;
      setServing(health, true);
      return d;
    } catch (e) {
      await device?.close();
      await audit?.close();
      await store.close();
      throw e;
    }
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

  /** /readyz checks: session usable, store writable, domain key present. */
  async readiness() {
    const [session, storeOk, domain] = await Promise.all([this.device.healthy(), this.store.healthy(), this.device.has(this.domainKeyId, "secret").catch(() => false)]);
    return [
      { name: "device_session", ok: session, detail: session ? undefined : "no usable logged-in session" },
      { name: "store_writable", ok: storeOk, detail: storeOk ? undefined : "state store is not writable" },
      { name: "domain_key", ok: domain, detail: domain ? undefined : `domain key ${this.domainKeyId} missing from the token` },
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
      store: { kind: "embedded", revision: this.store.revision() },
      domainKeyId: this.domainKeyId,
      keys: this.keys.keyCount,
      limits: this.config.limits,
      auth: { sessionTtlMs: this.config.auth.sessionTtlMs, maxFailedLogins: this.config.auth.maxFailedLogins, quorum: this.config.auth.quorum, quorumTtlMs: this.config.auth.quorumTtlMs },
      audit: { file: this.config.audit.file, entries: this.audit.lastSeq, lastHash: this.audit.lastHash },
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.sweeper);
    setServing(this.health, false);
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
    await this.admin.close();
    this.keys.stop();
    await this.audit.close();
    await this.device.close();
    await this.store.close();
    this.log("stopped");
  }
}

/**
 * The domain key: created inside the HSM by `init` (AES-256, CKA_EXTRACTABLE false), recorded by id
 * in the store. A started node whose store names a domain key the token lacks refuses to serve.
 */
async function ensureDomain(store: StateStore, device: Device, init: boolean, nodeId: string): Promise<string> {
  const e = await store.get(DOMAIN_META);
  if (e) {
    const meta = JSON.parse(e.value.toString("utf8")) as DomainMeta;
    if (!(await device.ensureDomainKey(meta.domainKeyId, false))) {
      throw precondition(`the token does not hold domain key ${meta.domainKeyId} that this node's records are wrapped under: wrong token, or the token was reinitialized`);
    }
    return meta.domainKeyId;
  }
  if (!init) throw precondition("this node is not initialized: run `hsmd init` (creates the domain key inside the HSM)");
  const meta: DomainMeta = { domainKeyId: `hsmd-domain-${randomUUID()}`, createdAt: new Date().toISOString(), initializedBy: nodeId };
  await device.ensureDomainKey(meta.domainKeyId, true);
  const res = await store.txn([{ key: DOMAIN_META, op: "absent" }], [{ type: "put", key: DOMAIN_META, value: Buffer.from(JSON.stringify(meta)) }]);
  if (!res.succeeded) {
    await device.destroy(meta.domainKeyId);
    return ensureDomain(store, device, false, nodeId);
  }
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
