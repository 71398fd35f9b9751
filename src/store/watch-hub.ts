/**
 * The watch scheduler both state stores share: subscribers by key prefix, each fed its own queue in
 * revision order on a microtask (never inside the write that produced the events), a copy of each value
 * per delivery, unsubscribe, and close. A subscriber may start *pending* (its backlog still being read,
 * e.g. from etcd): published events wait for it in a side queue until the store says where its backlog
 * ended, so that it gets the backlog then the live events after it, without a gap or a duplicate. A callback that throws is reported and does not stop delivery
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
  /** while pending: the published events held back until the backlog is complete */
  held?: WatchEvent[];
}

/** A pending subscription: the store feeds its backlog, then lets live events through. */
export interface PendingSubscription {
  /** the subscriber is still subscribed (not stopped, hub not closed) */
  readonly active: boolean;
  /** Delivers backlog events (in revision order, already filtered by prefix). */
  feed(events: WatchEvent[]): void;
  /** The backlog is complete up to `after`: deliver the held and later events above it. */
  goLive(after: number): void;
  /** Unsubscribes. */
  stop(): void;
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

  /** A subscriber whose backlog the store has still to read: see {@link PendingSubscription}. */
  subscribePending(prefix: string, cb: (ev: WatchEvent) => void): PendingSubscription {
    const s: Subscriber = { prefix, after: Number.MAX_SAFE_INTEGER, cb, queue: [], head: 0, scheduled: false, active: true, held: [] };
    this.subscribers.add(s);
    const stop = () => {
      s.active = false;
      s.held = undefined;
      this.subscribers.delete(s);
    };
    return {
      get active() {
        return s.active;
      },
      feed: (events) => {
        if (!s.active || !s.held) return;
        for (const ev of events) s.queue.push(ev);
        this.schedule(s);
      },
      goLive: (after) => {
        if (!s.active || !s.held) return;
        for (const ev of s.held) if (ev.revision > after) s.queue.push(ev);
        s.held = undefined;
        s.after = after;
        this.schedule(s);
      },
      stop,
    };
  }

  /** Queues events (in revision order) for every subscriber whose prefix and revision they match. */
  publish(events: WatchEvent[]): void {
    if (events.length === 0) return;
    for (const s of this.subscribers) {
      if (s.held) {
        for (const ev of events) if (ev.key.startsWith(s.prefix)) s.held.push(ev);
        continue;
      }
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
