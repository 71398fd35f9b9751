import type * as pk from "pkcs11js";
import { unavailable } from "../errors";
import { spawnSessionWorker } from "./worker-spawn";
import { mechanismBytes, wireMechanism } from "./worker-mechanism";
import { NOT_RUN, type FromWorker, type HotKind, type SessionWorkerData, type WireBytes, type WireError, type WireItem } from "./worker-protocol";
import { WorkerThread } from "./worker-thread";

/** Most items posted to a worker as one batch. */
export const MAX_BATCH = 64;

/** CKR values after which a worker's session must be reopened before its next batch (session lost, or an operation left active). */
const SESSION_BROKEN = new Set([0xb3, 0xb0, 0x101, 0x32, 0x30, 0xe0, 0xe1, 0x190, 0x90]);

/** One hot-path call for a worker: the mechanism, the (process-wide) object handle, the input, the output slot's size. */
export interface HotRequest {
  kind: HotKind;
  mech?: pk.Mechanism;
  key?: Buffer;
  data: Buffer;
  signature?: Buffer;
  outLen: number;
}

/** What a worker answered for one request: the output (a view of the batch's transferred buffer) or verdict, or the CKR error; `secs` is the call's time in the worker. */
export type HotOutcome = { value: Buffer | boolean; error?: undefined; secs: number } | { value?: undefined; error: WireError; secs: number };

/** A queued request with its promise. */
export interface Entry {
  req: HotRequest;
  resolve: (o: HotOutcome) => void;
  reject: (e: Error) => void;
  /** Already re-queued once after its worker died. */
  requeued: boolean;
}

/** Per-worker counters (a slot keeps its counts across replacements), for the device's stats and /metrics. */
export interface WorkerStats {
  /** Items the worker answered (errors included). */
  ops: number;
  batches: number;
  /** Times a new worker took the slot (started and its session open) after the last one died or could not reopen its session. */
  restarts: number;
  busy: boolean;
}

/** Thrown into a request when no worker can take it (none ready or busy): the caller runs it on the main thread's sessions. */
export class NoWorkerAvailable extends Error {
  constructor() {
    super("no session worker available");
  }
}

export interface WorkerPoolOptions {
  size: number;
  data: SessionWorkerData;
  /** The slot the main thread found (after a re-initialization too). */
  slot: () => Buffer;
  /** C_CloseSession on the main thread, best effort (a dead worker's session). */
  closeSession: (s: Buffer) => void;
  log?: (msg: string) => void;
}

/**
 * N session workers (session-worker.ts) and the dispatcher that feeds them: a queue, drained, never
 * waited on. Whenever a worker is idle it is posted what is queued (up to {@link MAX_BATCH} items,
 * shared out among the idle workers, the one that ran the fewest operations first) as one batch with
 * one transferred input buffer; no item is held to fill a batch. Session openings and closings, a
 * worker's start and its replacement run one at a time under one lock, which {@link hold} takes for
 * a process-wide recovery (C_Finalize is only ever called on the main thread, with every worker idle
 * and its session closed). A worker that dies is replaced; its batch's items are queued again once,
 * then fail UNAVAILABLE.
 */
export class WorkerPool {
  private readonly threads: WorkerThread[] = [];

  /** How many workers the pool runs (a lost-session retry may take one attempt per worker). */
  get size(): number {
    return this.threads.length;
  }
  private readonly stats: WorkerStats[] = [];
  private queue: Entry[] = [];
  private lock: Promise<void> = Promise.resolve();
  private paused = false;
  private closed = false;
  private scheduled = false;
  private nextId = 0;
  private settled: Array<() => void> = [];

  private constructor(private readonly o: WorkerPoolOptions) {}

  /** Starts the workers one after another (sessions open sequentially); rejects, with every worker stopped, if one cannot start. */
  static async start(o: WorkerPoolOptions): Promise<WorkerPool> {
    const pool = new WorkerPool(o);
    try {
      for (let i = 0; i < o.size; i++) {
        pool.stats.push({ ops: 0, batches: 0, restarts: 0, busy: false });
        await pool.startThread(i);
      }
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  /** Queues one request; rejects with {@link NoWorkerAvailable} when no worker can run it, UNAVAILABLE once closed. */
  submit(req: HotRequest): Promise<HotOutcome> {
    if (this.closed) return Promise.reject(unavailable("the device is closed"));
    return new Promise((resolve, reject) => {
      this.queue.push({ req, resolve, reject, requeued: false });
      this.schedule();
    });
  }

  /** Counters per worker slot. */
  workerStats(): WorkerStats[] {
    return this.stats.map((s, i) => ({ ...s, busy: this.threads[i]?.state === "busy" }));
  }

  /** Test hook: ends a worker as a crash would (worker.terminate()); it is replaced. */
  terminate(slot: number): Promise<number> {
    return this.threads[slot]!.worker.terminate();
  }

  /**
   * Pauses dispatch for a process-wide step (session recovery, module re-initialization): waits for
   * the lock and for every batch in flight (UNAVAILABLE after 10 s, as the pool's drain), has every
   * worker close its session, and resolves with the resume: workers reopen their sessions (one at a
   * time) and dispatch goes on.
   */
  async hold(): Promise<() => Promise<void>> {
    const release = await this.acquire();
    this.paused = true;
    if (!(await this.idle(10_000))) {
      this.paused = false;
      release();
      this.schedule();
      throw unavailable("device worker batches still running after 10 s");
    }
    for (const t of this.threads) {
      if (t.state !== "ready" && t.state !== "reopen") continue;
      await t.request({ t: "close" });
      if (t.exited) continue;
      t.session = undefined;
      t.state = "reopen";
    }
    return async () => {
      try {
        for (const t of this.threads) if (t.state === "reopen" && !this.closed && !(await this.open(t))) void t.worker.terminate(); // onExit replaces it
      } finally {
        this.paused = false;
        release();
        this.schedule();
      }
    };
  }

  /**
   * Refuses new requests and fails the queued ones (UNAVAILABLE), waits up to `timeoutMs` for the
   * batches in flight, then has each worker close its session and exit. False when batches were
   * still running (their workers are left to the process's exit; nothing is finalized under them).
   */
  async close(timeoutMs = 10_000): Promise<boolean> {
    this.closed = true;
    for (const e of this.queue.splice(0)) e.reject(unavailable("the device is shutting down"));
    const drained = await this.idle(timeoutMs);
    if (!drained) {
      this.o.log?.("pkcs11: session workers still running a batch after the wait; leaving them to the process exit");
      return false;
    }
    const release = await this.acquire();
    try {
      for (const t of this.threads) {
        if (t.state === "dead") continue;
        await t.request({ t: "stop" });
        t.state = "dead";
        await t.worker.terminate();
      }
    } finally {
      release();
    }
    return true;
  }

  // ---- dispatch ---------------------------------------------------------------------------------

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // A microtask, not a timer: requests made in the same turn share a batch, none waits for more.
    queueMicrotask(() => {
      this.scheduled = false;
      this.drain();
    });
  }

  private drain(): void {
    if (this.paused || this.closed) return;
    const idle = this.threads.filter((t) => t.state === "ready").sort((a, b) => this.stats[a.slot]!.ops - this.stats[b.slot]!.ops);
    for (let i = 0; i < idle.length && this.queue.length > 0; i++) {
      const share = Math.min(MAX_BATCH, Math.ceil(this.queue.length / (idle.length - i)));
      this.post(idle[i]!, this.queue.splice(0, share));
    }
    if (this.queue.length > 0 && !this.threads.some((t) => t.state === "ready" || t.state === "busy")) {
      for (const e of this.queue.splice(0)) e.reject(new NoWorkerAvailable());
    }
  }

  /** Packs the entries' inputs into one buffer, transferred (not copied) to the worker. */
  private post(t: WorkerThread, entries: Entry[]): void {
    let inSize = 0;
    let outSize = 0;
    for (const { req } of entries) {
      inSize += req.data.length + (req.signature?.length ?? 0) + (req.key?.length ?? 0) + mechanismBytes(req.mech);
      outSize += req.outLen;
    }
    const input = new ArrayBuffer(inSize);
    const inBuf = Buffer.from(input);
    let off = 0;
    const put = (b: Buffer): WireBytes => {
      const at = off;
      b.copy(inBuf, at);
      off += b.length;
      return { at, len: b.length };
    };
    const items: WireItem[] = entries.map(({ req }) => {
      const inOff = put(req.data).at;
      const sig = req.signature ? put(req.signature) : undefined;
      return {
        kind: req.kind,
        mech: req.mech && wireMechanism(req.mech, put),
        key: req.key && put(req.key),
        inOff,
        inLen: req.data.length,
        sigOff: sig?.at,
        sigLen: sig?.len,
        outLen: req.outLen,
      };
    });
    const id = this.nextId++;
    t.batch = { id, entries };
    t.state = "busy";
    t.hold();
    t.worker.postMessage({ t: "batch", id, items, input, outSize }, [input]);
  }

  private onDone(t: WorkerThread, m: Extract<FromWorker, { t: "done" }>): void {
    const b = t.batch;
    if (!b || b.id !== m.id) return;
    t.batch = undefined;
    t.letGo();
    const st = this.stats[t.slot]!;
    st.batches++;
    let reopen = false;
    let off = 0;
    const again: Entry[] = [];
    b.entries.forEach((e, i) => {
      const r = m.results[i]!;
      const at = off;
      off += e.req.outLen;
      if (r.error?.code === NOT_RUN) {
        again.push(e);
        return;
      }
      st.ops++;
      if (r.error) {
        if (r.error.code !== undefined && SESSION_BROKEN.has(r.error.code)) reopen = true;
        e.resolve({ error: r.error, secs: r.secs });
      } else e.resolve({ value: e.req.kind === "verify" ? r.len === 1 : Buffer.from(m.out, at, r.len), secs: r.secs });
    });
    this.queue.unshift(...again);
    t.state = reopen ? "reopen" : "ready";
    if (reopen) {
      void this.withLock(async () => {
        if (t.state === "reopen" && !this.closed && !(await this.open(t))) void t.worker.terminate(); // onExit replaces it
      });
    }
    this.notifySettled();
    this.schedule();
  }

  private onExit(t: WorkerThread): void {
    const was = t.state;
    t.exited = true;
    t.state = "dead";
    t.answer(undefined);
    const b = t.batch;
    t.batch = undefined;
    if (b) {
      for (const e of b.entries) {
        if (e.requeued || this.closed) e.reject(unavailable("a device worker thread stopped while running this call; retry"));
        else {
          e.requeued = true;
          this.queue.unshift(e);
        }
      }
    }
    this.notifySettled();
    if (this.closed || t.retired || this.threads[t.slot] !== t) return;
    if (was !== "starting") this.o.log?.(`pkcs11: device worker ${t.slot} stopped; starting another`);
    void this.withLock(() => this.replace(t));
    this.schedule();
  }

  // ---- worker lifecycle (under the lock) ----------------------------------------------------------

  private async startThread(slot: number): Promise<void> {
    const t = new WorkerThread(spawnSessionWorker(this.o.data), slot);
    this.threads[slot] = t;
    t.worker.on("message", (m: FromWorker) => (m.t === "done" ? this.onDone(t, m) : t.answer(m)));
    t.worker.on("error", (e) => this.o.log?.(`pkcs11: device worker ${slot} failed: ${e.message}`));
    t.worker.on("exit", () => this.onExit(t));
    const loaded = await t.request();
    if (loaded?.t !== "loaded" || loaded.error) {
      t.retired = true;
      void t.worker.terminate();
      throw unavailable(`device worker ${slot} could not load the PKCS#11 module: ${loaded && "error" in loaded ? loaded.error?.message : "it exited"}`);
    }
    if (!(await this.open(t))) {
      t.retired = true;
      void t.worker.terminate();
      throw unavailable(`device worker ${slot} could not open its session`);
    }
  }

  /** Opens (or reopens) a worker's session: true when it is ready; a worker that cannot is marked broken (its caller ends it). */
  private async open(t: WorkerThread): Promise<boolean> {
    const r = await t.request({ t: "open", slot: new Uint8Array(this.o.slot()) });
    if (r?.t === "opened" && r.session) {
      t.session = Buffer.from(r.session);
      if (t.state === "dead") return false;
      t.state = "ready";
      return true;
    }
    if (t.state !== "dead") t.state = "broken";
    this.o.log?.(`pkcs11: device worker ${t.slot} could not open a session (${r && "error" in r ? r.error?.message : "it exited"})`);
    return false;
  }

  private async replace(dead: WorkerThread): Promise<void> {
    if (this.closed) return;
    // SoftHSM2 is fragile when sessions close and open while other sessions run operations: the
    // dead worker's session is closed and its replacement's opened with the other workers idle
    // (dispatch paused; their batches in flight finish first, at most 10 s). A replacement is rare
    // (a worker that crashed or hung), so the pause costs nothing in steady state.
    this.paused = true;
    try {
      await this.idle(10_000);
      if (dead.session) this.o.closeSession(dead.session);
      dead.session = undefined;
      await this.startThread(dead.slot);
      this.stats[dead.slot]!.restarts++;
    } catch (e) {
      this.o.log?.(`pkcs11: ${(e as Error).message}; trying again in 1 s`);
      const failed = this.threads[dead.slot]!;
      setTimeout(() => void this.withLock(() => this.replace(failed)), 1_000).unref();
    } finally {
      this.paused = false;
    }
    this.schedule();
  }

  private acquire(): Promise<() => void> {
    let release!: () => void;
    const prev = this.lock;
    this.lock = new Promise<void>((r) => (release = r));
    return prev.then(() => release);
  }

  private async withLock(fn: () => Promise<void>): Promise<void> {
    const release = await this.acquire();
    try {
      await fn();
    } finally {
      release();
    }
  }

  /** Resolves true once no worker runs a batch, or false after `timeoutMs`. */
  private async idle(timeoutMs?: number): Promise<boolean> {
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    while (this.threads.some((t) => t.state === "busy")) {
      const left = deadline === undefined ? undefined : deadline - Date.now();
      if (left !== undefined && left <= 0) return false;
      await new Promise<void>((r) => {
        const timer = left === undefined ? undefined : setTimeout(r, left);
        this.settled.push(() => {
          if (timer) clearTimeout(timer);
          r();
        });
      });
    }
    return true;
  }

  private notifySettled(): void {
    for (const s of this.settled.splice(0)) s();
  }
}
