/** Device operations the applier and reconcile run at once (the device's session pool bounds the rest). */
export const APPLY_CONCURRENCY = 8;

/** A counting semaphore: bounds the applier's concurrent device work. */
export class Slots {
  private waiting: Array<() => void> = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const w = this.waiting.shift();
    if (w) w();
    else this.free++;
  }
}
