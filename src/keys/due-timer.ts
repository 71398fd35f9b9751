/**
 * A periodic pass over work that falls due (scheduled rotations, deletions, expiries: issue 13),
 * with an injectable clock so unit tests run it on a fake one. Exactly-once across a cluster is not
 * this timer's job: every node runs it, and each due change is a compare-and-put on the record
 * (record-update.ts), so when nodes race only one write lands and the others see it done.
 */

/** What a {@link DueTimer} runs and how often. */
export interface DueTimerOptions {
  /** What it is for, in log lines ("rotation", "deletion"). */
  name: string;
  /** Milliseconds between passes. */
  intervalMs: number;
  /** One pass at `now` (ms since the epoch); its errors are logged, and the next pass runs anyway. */
  tick: (now: number) => Promise<void>;
  /** The clock (default Date.now). */
  now?: () => number;
  log?: (msg: string) => void;
}

/** Runs `tick` every `intervalMs`, never two at once; `runOnce` runs a pass now (tests, and at start). */
export class DueTimer {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(private readonly opts: DueTimerOptions) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.runOnce(), this.opts.intervalMs);
    this.timer.unref();
  }

  /** Runs one pass (or joins the one running); resolves when it is done. */
  runOnce(now = (this.opts.now ?? Date.now)()): Promise<void> {
    if (!this.running) {
      this.running = this.opts
        .tick(now)
        .catch((e) => this.opts.log?.(`${this.opts.name}: a pass failed (${(e as Error).message}); the next one retries`))
        .finally(() => {
          this.running = undefined;
        });
    }
    return this.running;
  }

  /** Stops the timer and waits for a pass in flight. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
