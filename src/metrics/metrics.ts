/** The daemon's Prometheus metrics (RPCs, device operations, pool, keys, cluster, logins, workers) in a registry of their own. */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { registerEventLoopUtilization } from "./event-loop";
import { registerKeyObjects, type KeyObjectsSnapshot } from "./key-objects";

/** What the session pool reports at scrape time; the same shape as the device layer's pool stats. */
export interface PoolSnapshot {
  /** Sessions the pool holds open. */
  size: number;
  /** Sessions running an operation right now. */
  busy: number;
  /** Callers queued for a free session. */
  waiting: number;
}

export interface MetricsOptions {
  /**
   * Whether to register prom-client's process and Node.js metrics (`hsmd_process_*`, `hsmd_nodejs_*`).
   * Tests that build many instances may turn them off.
   * @default true
   */
  defaultMetrics?: boolean;
}

/**
 * Latency buckets in seconds, from 50µs (a cached in-process operation) to 5s (a slow RSA key
 * generation on a network HSM). Roughly 1-2.5-5 per decade.
 */
export const LATENCY_BUCKETS: readonly number[] = Object.freeze([0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]);

/**
 * The daemon's Prometheus metrics, in a registry of their own (never prom-client's global one, so
 * that several daemons or tests in one process never collide). The observe methods are cheap enough for
 * every RPC and every device call; pool and key-count gauges are read from their sources only when
 * scraped.
 */
export class Metrics {
  /** The registry every hsmd series lives in; other layers may register their own metrics here. */
  readonly registry: Registry;

  private readonly rpcTotal: Counter<"method" | "code">;
  private readonly rpcDuration: Histogram<"method">;
  private readonly deviceDuration: Histogram<"mechanism">;
  private readonly deviceTotal: Counter<"mechanism" | "result">;
  private poolSource: (() => PoolSnapshot) | undefined;
  private keyCountSource: (() => number) | undefined;

  constructor(options: MetricsOptions = {}) {
    const registry = new Registry();
    this.registry = registry;
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: "hsmd_" });

    this.rpcTotal = new Counter({
      name: "hsmd_grpc_requests_total",
      help: "gRPC requests handled, by full method name and gRPC status code name.",
      labelNames: ["method", "code"] as const,
      registers: [registry],
    });
    this.rpcDuration = new Histogram({
      name: "hsmd_grpc_request_duration_seconds",
      help: "Time from receiving a gRPC request to sending its response, by method.",
      labelNames: ["method"] as const,
      buckets: [...LATENCY_BUCKETS],
      registers: [registry],
    });
    this.deviceDuration = new Histogram({
      name: "hsmd_device_operation_duration_seconds",
      help: "Duration of PKCS#11 operations on the device, by mechanism (CKM_* name).",
      labelNames: ["mechanism"] as const,
      buckets: [...LATENCY_BUCKETS],
      registers: [registry],
    });
    this.deviceTotal = new Counter({
      name: "hsmd_device_operations_total",
      help: "PKCS#11 operations on the device, by mechanism and result (ok or error).",
      labelNames: ["mechanism", "result"] as const,
      registers: [registry],
    });

    // Gauges read their source at scrape time: nothing to keep in step on the hot path. Until a source
    // is set, the labelled pool series are absent and the unlabelled ones read 0 (prom-client's default);
    // a source that throws keeps the previous scrape's values rather than reporting a false 0.
    const metrics = this;
    new Gauge({
      name: "hsmd_pool_sessions",
      help: "PKCS#11 sessions in the pool, by state (busy running an operation, idle).",
      labelNames: ["state"] as const,
      registers: [registry],
      collect() {
        const s = metrics.readPool();
        if (!s) return;
        this.set({ state: "busy" }, s.busy);
        this.set({ state: "idle" }, Math.max(0, s.size - s.busy));
      },
    });
    new Gauge({
      name: "hsmd_pool_waiting",
      help: "Callers waiting for a free PKCS#11 session.",
      registers: [registry],
      collect() {
        const s = metrics.readPool();
        if (!s) return;
        this.set(s.waiting);
      },
    });
    new Gauge({
      name: "hsmd_keys",
      help: "Keys this node knows of in the state store.",
      registers: [registry],
      collect() {
        const n = metrics.readKeyCount();
        if (n === undefined) return;
        this.set(n);
      },
    });
    registerEventLoopUtilization(registry);
  }

  /**
   * Cluster gauges, read once per scrape from `fn`: `hsmd_store_revision` (newest store revision
   * this node knows), `hsmd_applied_revision` (what its applier materialized), `hsmd_apply_lag`
   * (their difference), `hsmd_cluster_nodes` (members) and `hsmd_store_reachable` (1/0).
   */
  setClusterSource(fn: () => { storeRevision: number; appliedRevision: number; nodes: number; storeReachable: boolean }): void {
    const g = (name: string, help: string, pick: (v: ReturnType<typeof fn>) => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(pick(fn()));
        },
      });
    g("hsmd_store_revision", "Newest state store revision this node knows of.", (v) => v.storeRevision);
    g("hsmd_applied_revision", "State store revision this node's applier has materialized into its HSM.", (v) => v.appliedRevision);
    g("hsmd_apply_lag", "Store revisions this node's HSM is behind the store.", (v) => Math.max(0, v.storeRevision - v.appliedRevision));
    g("hsmd_cluster_nodes", "Members of the cluster.", (v) => v.nodes);
    g("hsmd_store_reachable", "1 when the cluster store (etcd) answered the last check.", (v) => (v.storeReachable ? 1 : 0));
  }

  /**
   * Login gauges, read once per scrape from `fn`: the password-hashing lane (`hsmd_password_hashes`
   * by state running/queued, `hsmd_password_hashes_peak_running`, `hsmd_password_hashes_completed`,
   * `hsmd_password_hashes_refused`: refused because the lane was full) and
   * `hsmd_logins_rate_limited` (logins refused by the per-address rate limit).
   */
  setLoginSource(fn: () => { inFlight: number; queued: number; peakInFlight: number; completed: number; refused: number; rateLimited: number }): void {
    const registers = [this.registry];
    new Gauge({
      name: "hsmd_password_hashes",
      help: "Password hashes (scrypt) in the hashing lane, by state (running, queued).",
      labelNames: ["state"] as const,
      registers,
      collect() {
        const v = fn();
        this.set({ state: "running" }, v.inFlight);
        this.set({ state: "queued" }, v.queued);
      },
    });
    const g = (name: string, help: string, pick: (v: ReturnType<typeof fn>) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(pick(fn()));
        },
      });
    g("hsmd_password_hashes_peak_running", "Most password hashes that ran at once since start (bounded by auth.hashLane.concurrency).", (v) => v.peakInFlight);
    g("hsmd_password_hashes_completed", "Password hashes run since start.", (v) => v.completed);
    g("hsmd_password_hashes_refused", "Password hashes refused since start because the hashing lane was full.", (v) => v.refused);
    g("hsmd_logins_rate_limited", "Logins refused since start by the per-address rate limit (auth.loginRateLimit).", (v) => v.rateLimited);
  }

  /**
   * Session-worker gauges, read once per scrape from `fn` (one entry per worker slot; none with
   * device.workers 0): `hsmd_device_worker_ops` and `hsmd_device_worker_batches` (run since start),
   * `hsmd_device_worker_restarts` (replacements after a worker died) and `hsmd_device_worker_busy` (1/0).
   */
  setWorkerSource(fn: () => Array<{ ops: number; batches: number; restarts: number; busy: boolean }>): void {
    const g = (name: string, help: string, pick: (w: ReturnType<typeof fn>[number]) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["worker"] as const,
        registers: [this.registry],
        collect() {
          fn().forEach((w, i) => this.set({ worker: String(i) }, pick(w)));
        },
      });
    g("hsmd_device_worker_ops", "Hot-path device operations (sign, verify, encrypt, decrypt, random) a session worker ran since start.", (w) => w.ops);
    g("hsmd_device_worker_batches", "Batches a session worker ran since start (operations / batches = the mean batch).", (w) => w.batches);
    g("hsmd_device_worker_restarts", "Times a session worker was replaced after it stopped.", (w) => w.restarts);
    g("hsmd_device_worker_busy", "1 while a session worker runs a batch.", (w) => (w.busy ? 1 : 0));
  }

  /** Records one finished RPC: `method` is the full gRPC method path, `code` the status name (e.g. "OK"). */
  observeRpc(method: string, code: string, seconds: number): void {
    this.rpcTotal.inc({ method, code });
    this.rpcDuration.observe({ method }, seconds);
  }

  /** Records one device operation: `mechanism` is the CKM_* name (or the operation's name when none). */
  observeDevice(mechanism: string, seconds: number, ok: boolean): void {
    this.deviceDuration.observe({ mechanism }, seconds);
    this.deviceTotal.inc({ mechanism, result: ok ? "ok" : "error" });
  }

  /** Where `hsmd_pool_sessions` and `hsmd_pool_waiting` come from; called once per scrape. */
  setPoolSource(fn: () => PoolSnapshot): void {
    this.poolSource = fn;
  }

  /** Where `hsmd_keys` comes from; called once per scrape. */
  setKeyCountSource(fn: () => number): void {
    this.keyCountSource = fn;
  }

  /**
   * Key materialization series (see key-objects.ts), read once per scrape from `fn`
   * (the daemon passes `() => keys.records.stats()`). Call once.
   */
  setKeyObjectsSource(fn: () => KeyObjectsSnapshot): void {
    registerKeyObjects(this.registry, fn);
  }

  /** The Prometheus text exposition of every series, with the content type to serve it under. */
  async render(): Promise<{ contentType: string; body: string }> {
    const body = await this.registry.metrics();
    return { contentType: this.registry.contentType, body };
  }

  /** A source that throws (device closing, say) must not fail the whole scrape: its gauges keep their last values. */
  private readPool(): PoolSnapshot | undefined {
    try {
      return this.poolSource?.();
    } catch {
      return undefined;
    }
  }

  private readKeyCount(): number | undefined {
    try {
      return this.keyCountSource?.();
    } catch {
      return undefined;
    }
  }
}
