/**
 * Least time between two re-initializations of the module: a device that keeps failing (the process
 * still out of file descriptors) is tried again at this pace, not in a loop.
 */
export const REINIT_MIN_INTERVAL_MS = 1_000;

/**
 * Free file descriptors below which the module is not re-initialized: C_Initialize would fail for
 * want of them and leave the module finalized, so every call would wait on session recovery.
 */
export const MIN_FREE_FDS_FOR_REINIT = 32;

/** What a {@link FaultWatch} drives: an uncached look for the objects that must exist, and a module re-initialization. */
export interface FaultWatchOps {
  /** File descriptors this process can still open (soft limit minus open), when known. */
  freeFds?: () => number | undefined;
  /** True when every essential object is found in the token (C_FindObjects, no handle cache). */
  essentialPresent(): Promise<boolean>;
  /** C_Finalize, C_Initialize, sessions, login, caches cleared. */
  reinitialize(): Promise<void>;
  log?: (msg: string) => void;
}

/**
 * Tells a device fault from a missing key. SoftHSM2 marks its whole token invalid when it fails to
 * read the token's directory or object files (EMFILE when the process is out of file descriptors) and
 * stays so until the module is re-initialized: every search then finds nothing and every creation
 * fails with CKR_GENERAL_ERROR, long after the descriptors came back. A key the node knows exists
 * (the domain key) not being found, or a creation failing again and again, is such a fault: the
 * watch is told ({@link suspect}), and it checks and re-initializes the module in the background,
 * once at a time and at most every {@link REINIT_MIN_INTERVAL_MS}, until the objects are seen again.
 * Meanwhile callers answer UNAVAILABLE (retry), never NOT_FOUND.
 */
export class FaultWatch {
  private suspected = false;
  private running: Promise<boolean> | undefined;
  private last = 0;
  private waitingForFds = false;

  constructor(private readonly ops: FaultWatchOps) {}

  /** A fault is suspected (not awaited: the caller may hold a session the re-initialization waits for). */
  suspect(reason: string): void {
    if (!this.suspected) this.ops.log?.(`pkcs11: device fault suspected (${reason}); checking the token and re-initializing the module if needed`);
    this.suspected = true;
    void this.check();
  }

  /** Is a fault suspected and not yet cleared? */
  get faulty(): boolean {
    return this.suspected;
  }

  /**
   * Checks now (or joins the check running): true when the essential objects are found, after a
   * re-initialization when the first look missed them. Clears the suspicion on success.
   */
  check(): Promise<boolean> {
    if (this.running) return this.running;
    this.running = this.run().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async run(): Promise<boolean> {
    try {
      if (await this.ops.essentialPresent()) {
        if (this.suspected) this.ops.log?.("pkcs11: the token's objects are visible again");
        this.suspected = false;
        return true;
      }
    } catch {
      /* a failed look is a fault too */
    }
    const free = this.ops.freeFds?.();
    if (free !== undefined && free < MIN_FREE_FDS_FOR_REINIT) {
      if (!this.waitingForFds) this.ops.log?.(`pkcs11: the process has ${free} free file descriptors: the module is re-initialized once more are free`);
      this.waitingForFds = true;
      this.suspected = true;
      return false;
    }
    this.waitingForFds = false;
    const wait = this.last + REINIT_MIN_INTERVAL_MS - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    this.last = Date.now();
    try {
      await this.ops.reinitialize();
      const ok = await this.ops.essentialPresent();
      this.ops.log?.(ok ? "pkcs11: module re-initialized; the token's objects are visible again" : "pkcs11: module re-initialized, and the domain key is still not found");
      this.suspected = !ok;
      return ok;
    } catch (e) {
      this.suspected = true;
      this.ops.log?.(`pkcs11: re-initializing the module failed (${e instanceof Error ? e.message : String(e)}); trying again later`);
      return false;
    }
  }
}
