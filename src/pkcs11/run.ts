import type * as pk from "pkcs11js";
import { Code, HsmError, unavailable } from "../errors";
import { CKR, ckrOf, isHandleStale, isSessionLost, mapDeviceError } from "./ckr";
import { mechanismName } from "./constants";
import { FaultWatch, MIN_FREE_FDS_FOR_REINIT } from "./fault-watch";
import { FindDeferred, FindGate } from "./find-gate";
import { findHandles, HandleCache } from "./handles";
import { Pkcs11Module } from "./module";
import { OaepSupport } from "./oaep-support";
import type { SessionPool } from "./pool";
import type { DeviceOptions, Part } from "./types";
import type { WorkerPool } from "./worker-pool";

/**
 * The core every concept module of the device takes: the module and its sessions, the handle
 * cache, and the run pipeline every device call goes through: one operation per pooled session,
 * pkcs11js' async forms (libuv's thread pool) so the event loop never waits on the device, session
 * replacement, recovery of lost sessions or a lost token (re-opening and logging in again), the
 * essential-object check behind the {@link FaultWatch}, and every error mapped to an HsmError.
 */
export class DeviceCore {
  readonly mod: Pkcs11Module;
  /** The loaded module (the same object for the process's life). */
  readonly p11: pk.PKCS11;
  readonly pool: SessionPool;
  readonly cache = new HandleCache();
  /** What CKM_RSA_PKCS_OAEP does on this device (probed at open). */
  readonly oaep = new OaepSupport();
  /** Searches wait for token-object creations in flight (see FindGate). */
  readonly findGate = new FindGate();
  /** True while a pooled call's synchronous part runs: where a search may be deferred. */
  syncPhase = false;
  /** Objects that must be in the token while the node runs (the domain key), by id. */
  readonly essential = new Map<string, Part>();
  /** Tells a device fault (token view lost, e.g. after EMFILE) from a missing key, and heals it. */
  readonly faults: FaultWatch;
  /** BYOK imports run one at a time (see importWrapped). */
  importQueue: Promise<void> = Promise.resolve();
  /** The session workers the hot path runs on (DeviceOptions.workers ≥ 1), set once they started. */
  workers: WorkerPool | undefined;
  private generation = 0;
  private recovering: Promise<void> | undefined;
  private closed = false;

  constructor(readonly opts: DeviceOptions) {
    this.mod = new Pkcs11Module(opts);
    this.p11 = this.mod.p11;
    this.pool = this.mod.pool;
    this.faults = new FaultWatch({ essentialPresent: () => this.essentialPresent(), reinitialize: () => this.reinitialize(), freeFds: opts.freeFds, log: opts.log });
  }

  /**
   * Runs `fn` on a pooled session. Session loss triggers one recovery and one retry; a stale object
   * handle clears the cache and retries once. Every error leaves as an HsmError.
   *
   * `createsTokenObject` marks a call whose async part creates a token object: it waits while a
   * search holds the FindGate and counts as in flight until it settles. A search in the synchronous
   * part of any call (a handle cache miss, has(), destroy()) that would overlap such creations is
   * deferred: the call releases its session, waits at the gate, and runs again holding it.
   */
  async run<T>(op: string, mech: number | undefined, fn: (s: Buffer) => Promise<T> | T, retry = true, createsTokenObject = false, gateHeld?: () => void): Promise<T> {
    if (this.recovering) await this.recovering.catch(() => undefined);
    const gen = this.generation;
    if (createsTokenObject && !gateHeld) await this.findGate.open();
    let session = await this.pool.acquire();
    if (createsTokenObject && !gateHeld && this.findGate.held) {
      // A search took the gate while this call waited for a session.
      this.pool.release(session);
      return this.run(op, mech, fn, retry, createsTokenObject);
    }
    const t0 = process.hrtime.bigint();
    let ok = false;
    let released = false;
    let entered = false;
    try {
      let pending: Promise<T> | T;
      this.syncPhase = true;
      try {
        pending = fn(session);
      } finally {
        this.syncPhase = false;
        gateHeld?.();
      }
      if (createsTokenObject) {
        this.findGate.enter();
        entered = true;
      }
      const r = await pending;
      ok = true;
      return r;
    } catch (e) {
      if (e instanceof FindDeferred) {
        // (An async fn rejects rather than throws: nothing of it started, but it was counted.)
        if (entered) this.findGate.leave();
        entered = false;
        this.pool.release(session);
        released = true;
        const release = await this.findGate.acquire();
        try {
          return await this.run(op, mech, fn, retry, createsTokenObject, release);
        } finally {
          release();
        }
      }
      const ckr = ckrOf(e);
      if (retry && !this.closed && gen === this.generation && ckr === CKR.OPERATION_ACTIVE) {
        // An earlier failure left an operation open on this session (SoftHSM2 2.6 does that after
        // some errors, where PKCS#11 says the operation ends): swap in a fresh session and retry.
        session = this.mod.replaceSession(session);
        this.pool.release(session);
        released = true;
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      if (retry && !this.closed && isSessionLost(ckr)) {
        this.pool.release(session, gen !== this.generation);
        released = true;
        await this.recover(gen);
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      if (retry && isHandleStale(ckr)) {
        this.cache.clear();
        this.pool.release(session, gen !== this.generation);
        released = true;
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      throw mapDeviceError(e, op);
    } finally {
      if (entered) this.findGate.leave();
      if (!released) this.pool.release(session, gen !== this.generation);
      if (mech !== undefined && this.opts.observer) {
        this.opts.observer(mechanismName(mech), Number(process.hrtime.bigint() - t0) / 1e9, ok);
      }
    }
  }

  /** {@link run} for a call that creates an object, a token object when `token` is set. */
  runCreating<T>(op: string, mech: number, token: boolean, fn: (s: Buffer) => Promise<T> | T): Promise<T> {
    return this.run(op, mech, fn, true, token);
  }

  /**
   * CKR_GENERAL_ERROR on every attempt of a step whose inputs are the device's or hsmd's own is a
   * device fault: UNAVAILABLE (transient), and the device is checked. Anything else is returned as is.
   */
  asDeviceFault(e: unknown, what: string): unknown {
    if (!(e instanceof HsmError) || ckrOf(e.cause) !== CKR.GENERAL_ERROR) return e;
    this.faults.suspect(`the device failed ${what} with CKR_GENERAL_ERROR 3 times`);
    return new HsmError(Code.Unavailable, `the device failed ${what} (CKR_GENERAL_ERROR, 3 attempts): the node is checking the device; retry`, { cause: e.cause, transient: true });
  }

  /**
   * Declares an object that must exist while the node runs (the domain key): not finding it is then
   * a device fault (UNAVAILABLE, the module re-initialized), never a missing key.
   */
  markEssential(id: string, part: Part): void {
    this.essential.set(id, part);
  }

  /** Every essential object found by an uncached search (C_FindObjects). */
  private async essentialPresent(): Promise<boolean> {
    for (const [id, part] of this.essential) {
      const found = await this.run("C_FindObjects", undefined, (s) => findHandles(this, s, id, part).length > 0);
      if (!found) return false;
    }
    return true;
  }

  /**
   * Finalizes and initializes the module again, then reopens the sessions and logs in: the only way
   * to make SoftHSM2 read a token it marked invalid. New calls wait; calls running on the thread pool
   * are waited for first (finalizing under them crashes the process).
   */
  private reinitialize(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.recovering) return this.recovering;
    this.recovering = (async () => {
      if (!(await this.pool.drained(10_000))) throw unavailable("device calls still running after 10 s");
      // Process-wide: every worker idle with its session closed before C_Finalize (main thread only).
      const resume = await this.workers?.hold();
      try {
        this.mod.closeAllSessions();
        this.mod.finalize();
        this.generation++;
        this.cache.clear();
        this.mod.initialize();
        this.mod.openSessions();
      } finally {
        await resume?.();
      }
    })().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /**
   * Reopens every session and logs in again; if the token itself went away, finalizes and
   * re-initializes the module. Concurrent callers share one recovery.
   */
  private recover(seenGeneration: number): Promise<void> {
    if (seenGeneration !== this.generation) return Promise.resolve();
    if (this.recovering) return this.recovering;
    this.recovering = (async () => {
      this.opts.log?.("pkcs11: device session lost; reopening sessions and logging in again");
      // C_CloseAllSessions closes the workers' sessions too: they finish their batches and close first.
      const resume = await this.workers?.hold();
      try {
        await this.reopenAll();
      } finally {
        await resume?.();
      }
    })().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /** recover()'s attempts: reopen the sessions, from the second attempt on after finalizing and initializing again. */
  private async reopenAll(): Promise<void> {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 6; attempt++) {
      this.mod.closeAllSessions();
      if (attempt > 0) {
        // Finalizing without the descriptors C_Initialize needs would leave the module finalized.
        const free = this.opts.freeFds?.();
        if (free !== undefined && free < MIN_FREE_FDS_FOR_REINIT) {
          lastErr = new Error(`the process has only ${free} free file descriptors`);
          break;
        }
      }
      try {
        if (attempt > 0) {
          this.mod.finalize();
          this.mod.initialize();
        }
        this.mod.openSessions();
        this.cache.clear();
        this.generation++;
        this.opts.log?.(`pkcs11: recovered after ${attempt + 1} attempt(s)`);
        return;
      } catch (e) {
        lastErr = e;
        await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
      }
    }
    this.generation++;
    throw unavailable(`the device did not come back: ${(lastErr as Error)?.message ?? lastErr}`, lastErr);
  }

  /** Health probe for /readyz: a session answers C_GetSessionInfo and is logged in. */
  async healthy(): Promise<boolean> {
    try {
      return await this.run("C_GetSessionInfo", undefined, (s) => {
        const info = this.p11.C_GetSessionInfo(s);
        // CKS_RW_USER_FUNCTIONS = 3
        if (info.state !== 3) throw Object.assign(new Error("CKR_USER_NOT_LOGGED_IN"), { code: CKR.USER_NOT_LOGGED_IN });
        return true;
      });
    } catch {
      return false;
    }
  }

  /**
   * Refuses new calls, waits (up to 10 s) for the calls still running on the thread pool to settle,
   * then closes every session and finalizes the module. Closing sessions or finalizing under a
   * running C_*Async call crashes the process (a daemon stopped while its applier unwrapped keys
   * died with SIGSEGV); if calls are still running after the wait, the module is left as it is for
   * the process's exit to end.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pool.close("the device is shutting down");
    // The workers drain and close their sessions first; C_Finalize stays on this thread, last.
    const workersDone = (await this.workers?.close()) ?? true;
    if (!(await this.pool.drained(10_000)) || !workersDone) {
      this.opts.log?.(`pkcs11: ${this.pool.stats().busy} device call(s) still running after 10 s; leaving the sessions open for the process exit`);
      return;
    }
    this.mod.closeAllSessions();
    this.mod.finalize();
  }
}

/**
 * SoftHSM2 2.6 now and then fails a sound call with CKR_GENERAL_ERROR (or, for a creation,
 * CKR_TEMPLATE_INCONSISTENT) under concurrent load. For token-object creations the FindGate removes
 * the cause hsmd itself makes (searches beside creations); what is left (another process searching
 * the same token) is retried, after `cleanup` (destroying whatever the failed attempt left under the
 * key's id) and a short pause. A bad blob fails every time, so the answer is unchanged; only its
 * cost grows. Each retry is logged.
 */
export async function retrySpurious<T>(fn: () => Promise<T>, o: { what: string; attempts: number; cleanup?: () => Promise<void>; log?: (msg: string) => void }): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
      if (attempt >= o.attempts || (ckr !== CKR.GENERAL_ERROR && ckr !== 0xd1) /* CKR_TEMPLATE_INCONSISTENT */) throw e;
      o.log?.(`pkcs11: ${o.what} failed with ${ckr === CKR.GENERAL_ERROR ? "CKR_GENERAL_ERROR" : "CKR_TEMPLATE_INCONSISTENT"}; trying again (attempt ${attempt + 1} of ${o.attempts})`);
      // Whatever the failed attempt left under this id goes first, so the retry makes exactly one.
      await o.cleanup?.();
      await new Promise((r) => setTimeout(r, 5 * 4 ** (attempt - 1) + Math.random() * 5));
    }
  }
}
