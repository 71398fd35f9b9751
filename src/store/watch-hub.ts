/**
 * The watch scheduler both state stores share: subscribers by key prefix, each fed its own queue in
 * revision order on a microtask (never inside the write that produced the events), a copy of each value
 * per delivery, unsubscribe, and close. A callback that throws is reported and does not stop delivery
 * to it or to anyone else. What differs per store (where the replayed backlog comes from, which
 * revisions are too old) stays in the store; the hub only delivers.
 */
import type { WatchEvent } from "./types";

interface Subscriber {
  prefix: string;
  /** live events at or below this revision are not for this subscriber (its backlog covered them) */
  after: number;
  cb: (ev: WatchEvent) => void;
  queue: WatchEvent[];
  head: number;
  scheduled: boolean;
  active: boolean;
}

/** Subscribers of one store and the ordered, per-subscriber delivery of the events it publishes. */
export class WatchHub {
  private readonly subscribers = new Set<Subscriber>();

  /** `warn` gets the message of a callback that threw (each store words and routes it its own way). */
  constructor(private readonly warn: (message: string) => void) {}

  /**
   * Adds a subscriber to keys under `prefix`: first `backlog` (already filtered and ordered by the
   * store), then every published event with revision > `after`. Returns unsubscribe: after it, not one
   * more event reaches `cb`, not even one already queued.
   */
  subscribe(prefix: string, after: number, backlog: WatchEvent[], cb: (ev: WatchEvent) => void): () => void {
    const s: Subscriber = { prefix, after, cb, queue: backlog, head: 0, scheduled: false, active: true };
    this.subscribers.add(s);
    this.schedule(s);
    return () => {
      s.active = false;
      this.subscribers.delete(s);
    };
  }

  /** Queues events (in revision order) for every subscriber whose prefix and revision they match. */
  publish(events: WatchEvent[]): void {
    if (events.length === 0) return;
    for (const s of this.subscribers) {
      let any = false;
      for (const ev of events) {
        if (ev.revision > s.after && ev.key.startsWith(s.prefix)) {
          s.queue.push(ev);
          any = true;
        }
      }
      if (any) this.schedule(s);
    }
  }

  /** Stops every subscriber: queued events are dropped, no callback runs after this. */
  close(): void {
    for (const s of this.subscribers) s.active = false;
    this.subscribers.clear();
  }

  private schedule(s: Subscriber): void {
    if (s.scheduled || s.head >= s.queue.length) return;
    s.scheduled = true;
    queueMicrotask(() => {
      s.scheduled = false;
      while (s.active && s.head < s.queue.length) {
        const ev = s.queue[s.head++]!;
        const out: WatchEvent = ev.type === "put" ? { type: "put", key: ev.key, value: Buffer.from(ev.value!), revision: ev.revision } : { type: "delete", key: ev.key, revision: ev.revision };
        try {
          s.cb(out);
        } catch (err) {
          this.warn(`a watch callback threw: ${(err as Error)?.stack ?? String(err)}`);
        }
      }
      s.queue = s.queue.slice(s.head);
      s.head = 0;
    });
  }
}
