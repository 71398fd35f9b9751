/**
 * The replay window both stores keep for watch(prefix, fromRevision): the events they published, in
 * revision order. The etcd store bounds it to the last `limit` events since open (whole revisions
 * only, so that the floor is exact); the embedded store keeps everything since its last compaction
 * (no limit) and starts a new one when it compacts. A watch from below the floor is refused
 * (StoreCompactedError).
 */
import type { WatchEvent } from "./types";

/** The last published events, for watch replay. */
export class EventHistory {
  private history: WatchEvent[] = [];
  private historyHead = 0;
  /** the oldest revision a watch can start from (events at or below it are gone) */
  floor = 0;

  /** `historyLimit`: how many events to keep at most (Infinity: all) */
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
