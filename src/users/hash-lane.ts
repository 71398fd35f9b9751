/**
 * The password-hashing lane: scrypt runs on libuv's thread pool, the same threads pkcs11js' async
 * calls run on, so a flood of logins (each one ~32 MiB and tens of milliseconds of scrypt) would
 * otherwise take every thread and make a good client's Sign wait behind it. The lane lets at most
 * `concurrency` hashes run at once and queues at most `maxQueue` more; past that a call is refused
 * with RESOURCE_EXHAUSTED at once (no work, no memory), and the client retries.
 */
import { Code, HsmError } from "../errors";

/** Sizes of a {@link HashLane} (from `auth.hashLane`). */
export interface HashLaneOptions {
  /** hashes running at once (each holds one libuv thread). */
  concurrency: number;
  /** hashes waiting for a turn; one more is refused with RESOURCE_EXHAUSTED. */
  maxQueue: number;
}

/** Default lane: 2 hashes at once, 64 waiting. */
export const DEFAULT_HASH_LANE: Readonly<HashLaneOptions> = Object.freeze({ concurrency: 2, maxQueue: 64 });

/** What the lane reports (for /metrics and tests). */
export interface HashLaneStats {
  /** hashes running now */
  inFlight: number;
  /** hashes waiting now */
  queued: number;
  /** the most hashes that ever ran at once (never above `concurrency`) */
  peakInFlight: number;
  /** hashes run since start */
  completed: number;
  /** calls refused because the queue was full */
  refused: number;
}

/** The message of a refusal: a person (or a client's backoff) knows to try again shortly. */
export const HASH_LANE_FULL = "too many logins and password changes are in progress on this node: retry in a moment";

/** A concurrency-limited FIFO with a bounded queue, for scrypt (see the module comment). */
export class HashLane {
  private readonly waiting: Array<() => void> = [];
  private running = 0;
  private peak = 0;
  private done = 0;
  private refusals = 0;

  constructor(private readonly opts: HashLaneOptions = DEFAULT_HASH_LANE) {
    if (!Number.isSafeInteger(opts.concurrency) || opts.concurrency < 1) throw new RangeError(`concurrency must be a positive integer, got ${String(opts.concurrency)}`);
    if (!Number.isSafeInteger(opts.maxQueue) || opts.maxQueue < 0) throw new RangeError(`maxQueue must be a non-negative integer, got ${String(opts.maxQueue)}`);
  }

  /**
   * Runs `fn` when a slot is free (in arrival order). Throws RESOURCE_EXHAUSTED {@link HASH_LANE_FULL}
   * without calling `fn` when `concurrency` calls run and `maxQueue` wait already.
   */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running >= this.opts.concurrency) {
      if (this.waiting.length >= this.opts.maxQueue) {
        this.refusals++;
        throw new HsmError(Code.ResourceExhausted, HASH_LANE_FULL, { transient: true });
      }
      // The slot is handed over by the finishing call (running stays counted), so none is lost or doubled.
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    this.peak = Math.max(this.peak, this.running);
    try {
      return await fn();
    } finally {
      this.done++;
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  stats(): HashLaneStats {
    return { inFlight: this.running, queued: this.waiting.length, peakInFlight: this.peak, completed: this.done, refused: this.refusals };
  }
}
