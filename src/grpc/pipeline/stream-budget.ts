/**
 * The operations all crypto streams of a daemon have in flight together (`grpc.streamMaxInFlightTotal`).
 * Each stream bounds its own (`grpc.streamMaxInFlight`), but a peer can open many streams (up to
 * `connections.maxConcurrentStreams` per connection, on many connections): this shared count makes
 * every stream stop reading while the daemon as a whole holds its limit, so the memory held for
 * stream operations stays bounded however many streams there are. Counting costs an addition per
 * operation; streams waiting for room are resumed when the count falls below the limit.
 */
export class StreamBudget {
  private used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly max: number) {}

  /** Operations in flight on all streams. */
  get inFlight(): number {
    return this.used;
  }

  /** Counts one operation in; answers whether the budget is now full (the stream should pause). */
  take(): boolean {
    return ++this.used >= this.max;
  }

  /** Whether the budget is full. */
  get full(): boolean {
    return this.used >= this.max;
  }

  /** Counts `n` operations out and wakes the streams waiting for room. */
  release(n: number): void {
    this.used -= n;
    if (this.waiting.size === 0 || this.used >= this.max) return;
    const wake = [...this.waiting];
    this.waiting.clear();
    for (const w of wake) w();
  }

  /** `resume` is called once when there is room again (a paused stream re-checks its own limit then). */
  wait(resume: () => void): void {
    this.waiting.add(resume);
  }

  /** Forgets a stream that ended while it waited. */
  cancel(resume: () => void): void {
    this.waiting.delete(resume);
  }
}
