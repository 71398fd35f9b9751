/**
 * Keeps object searches (C_FindObjects*) apart from token-object creations in flight.
 *
 * SoftHSM2 2.6 (file object store) now and then fails a sound creation of a token object
 * (C_GenerateKey, C_UnwrapKey, C_DeriveKey with CKA_TOKEN=true) with CKR_GENERAL_ERROR or
 * CKR_TEMPLATE_INCONSISTENT when another session searches the token while the creation runs on
 * libuv's thread pool: the search re-indexes the token directory under the creation's feet.
 * Measured by test/integration/device-search-race.test.ts: with the gate switched off, 19 to 27 of
 * 900 creations failed once (each then passed on retry); with it, none in four runs. A standalone
 * pkcs11js loop showed the same: about 1 failure in 150 creations with a search loop beside them,
 * none without the search loop, none with the loop gated.
 *
 * Creations are many and concurrent; searches are rare (handle cache misses, has(), destroy()).
 * So a search waits until the creations in flight have settled and holds new ones back while it
 * runs; it never waits behind other searches' creations for long, because held-back creations do
 * not start until the search has run. Searches are synchronous calls on the event loop, so "while
 * it runs" is the synchronous part of one pooled call.
 */
export class FindGate {
  private inFlight = 0;
  private drained: (() => void)[] = [];
  private hold: Promise<void> | undefined;

  /** Are token-object creations running on the thread pool right now? */
  get busy(): boolean {
    return this.inFlight > 0;
  }

  /** Is a search holding new creations back? */
  get held(): boolean {
    return this.hold !== undefined;
  }

  /** Resolves once no search holds the gate (a creation calls this before it starts). */
  async open(): Promise<void> {
    while (this.hold) await this.hold;
  }

  /** A creation has been handed to the thread pool; call {@link leave} when it settles. */
  enter(): void {
    this.inFlight++;
  }

  leave(): void {
    if (this.inFlight === 0) throw new Error("FindGate.leave without enter");
    if (--this.inFlight === 0) {
      const waiting = this.drained;
      this.drained = [];
      for (const w of waiting) w();
    }
  }

  /**
   * Holds new creations back and resolves once those in flight have settled; the caller searches,
   * then calls the returned release (exactly once).
   */
  async acquire(): Promise<() => void> {
    // Checked and taken in one synchronous step: two searches never hold the gate at once.
    while (this.hold) await this.hold;
    let release!: () => void;
    this.hold = new Promise<void>((r) => (release = r));
    if (this.inFlight > 0) await new Promise<void>((r) => this.drained.push(r));
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.hold = undefined;
      release();
    };
  }
}

/** Thrown by a search that would overlap creations in flight; the pooled call waits at the gate and runs again. */
export class FindDeferred extends Error {
  constructor() {
    super("object search deferred until token-object creations settle");
  }
}
