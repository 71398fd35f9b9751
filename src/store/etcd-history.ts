/**
 * The etcd store's replay window: the events it published since open, bounded to the last `limit`
 * events (whole revisions only, so that the floor is exact). A watch from a revision inside the window
 * is replayed from here; one from below the floor is refused (StoreCompactedError).
 */
import type { WatchEvent } from "./types";

/** The last published events, for watch replay. */
export class EventHistory {
  private history: WatchEvent[] = [];
  private historyHead = 0;
  /** the oldest revision a watch can start from (events at or below it are gone) */
  floor = 0;

  constructor(private readonly historyLimit: number) {}

  /** Appends published events (in revision order) and drops the oldest revisions past the limit. */
  append(events: WatchEvent[]): void {
    for (const ev of events) this.history.push(ev);
    this.trimHistory();
  }

  /** The kept events with revision > fromRevision under prefix, in order. */
  since(fromRevision: number, prefix: string): WatchEvent[] {
    const out: WatchEvent[] = [];
    for (let i = this.historyHead; i < this.history.length; i++) {
      const ev = this.history[i]!;
      if (ev.revision > fromRevision && ev.key.startsWith(prefix)) out.push(ev);
    }
    return out;
  }

  private trimHistory(): void {
    const h = this.history;
    if (h.length - this.historyHead <= this.historyLimit) return;
    let i = h.length - this.historyLimit;
    // Drop whole revisions only, so that the floor is exact.
    while (i < h.length && h[i]!.revision === h[i - 1]!.revision) i++;
    this.floor = Math.max(this.floor, h[i - 1]!.revision);
    this.historyHead = i;
    if (this.historyHead > 1024 && this.historyHead * 2 > h.length) {
      this.history = h.slice(this.historyHead);
      this.historyHead = 0;
    }
  }
}
