/**
 * The etcd store's watches whose backlog is not in its own event log: from 0 on a prefix that takes in
 * unmirrored keys (the current state, read from etcd at one revision), and from a revision older than
 * the log (what changed since then, replayed from etcd's own history by a watch stream of its own,
 * which stops at the event of the revision where the store's live events start: it watches every key,
 * since every etcd revision is some write, and keeps those under the prefix). Both go through a pending subscription of the watch hub: live events wait until
 * the backlog is complete, so the subscriber gets no gap and no duplicate. etcd having compacted past
 * the revision meanwhile (the store did not know it when watch() was called) is logged, and the
 * subscriber gets the current state instead: its puts converge, a deletion in the lost history is not
 * told (a subscriber that must know runs its full check: see StateStore.hasHistorySince).
 */
import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { IWatchRequest, IWatchResponse } from "etcd3";
import type { EtcdClient } from "./etcd-client";
import { MAX_BACKOFF_MS, MIN_BACKOFF_MS, SUSPECT_MS } from "./etcd-options";
import type { EtcdReads } from "./etcd-reads";
import type { WatchEvent } from "./types";
import type { PendingSubscription } from "./watch-hub";

/** What the replays need from the store. */
export interface ReplayHost {
  client: EtcdClient;
  reads: EtcdReads;
  log(msg: string): void;
  requestTimeoutMs: number;
}

/** how often a replay checks that its subscriber is still there */
const CHECK_EVERY_MS = 500;
/** key and range_end of a watch of every key */
const ALL = Buffer.from([0]);

/**
 * Feeds `sub` the current state under `prefix` read from etcd (one put per key, modRevision order),
 * then lets it go live. The state is held whole while it is sorted: a subscriber of a large prefix
 * pages it with list() and watches from the revision it read at instead.
 */
export async function replayState(host: ReplayHost, prefix: string, sub: PendingSubscription): Promise<void> {
  let backoff = MIN_BACKOFF_MS;
  let failures = 0;
  while (sub.active && !host.client.closed) {
    try {
      const { revision, entries } = await host.reads.state(prefix, Date.now() + host.requestTimeoutMs);
      entries.sort((a, b) => a.modRevision - b.modRevision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      sub.feed(entries.map((e) => ({ type: "put", key: e.key, value: e.value, revision: e.modRevision })));
      sub.goLive(revision);
      return;
    } catch (err) {
      if (failures++ % 20 === 0) host.log(`watch of ${JSON.stringify(prefix)} from 0: reading the current state failed (${(err as Error).message}); retrying`);
      await host.client.sleep(backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }
}

/**
 * Feeds `sub` the events under `prefix` with revision in (from, upTo] from etcd's history, then lets
 * it go live above `upTo` (the store's revision when it subscribed: its live events start above it).
 */
export async function replayHistory(host: ReplayHost, prefix: string, from: number, upTo: number, sub: PendingSubscription): Promise<void> {
  let next = from + 1;
  let backoff = MIN_BACKOFF_MS;
  while (sub.active && !host.client.closed) {
    const out = await replayOnce(host, prefix, next, upTo, sub);
    if (out.done) {
      sub.goLive(upTo);
      return;
    }
    if (out.compactRevision !== undefined) {
      host.reads.knownCompactRevision = Math.max(host.reads.knownCompactRevision, out.compactRevision);
      host.log(
        `watch of ${JSON.stringify(prefix)} from revision ${from}: etcd compacted its history up to revision ${out.compactRevision}; ` +
          "sending the current state instead (deletions since then are not told)",
      );
      return replayState(host, prefix, sub);
    }
    next = Math.max(next, out.last + 1);
    host.log(`watch of ${JSON.stringify(prefix)} from revision ${from}: replay stream failed (${out.error}); resuming from revision ${next}`);
    await host.client.sleep(backoff);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
}

type Outcome = { done: true } | { done: false; last: number; compactRevision?: number; error?: string };

/** One replay stream from `start`: done when etcd has sent every event up to `upTo`. */
function replayOnce(host: ReplayHost, prefix: string, start: number, upTo: number, sub: PendingSubscription): Promise<Outcome> {
  const client = host.client;
  const member = client.order()[0]!;
  return new Promise<Outcome>((resolve) => {
    let stream: ClientDuplexStream<IWatchRequest, IWatchResponse> | undefined;
    let last = start - 1;
    let settled = false;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      if (!o.done && o.compactRevision === undefined) member.suspectUntil = Date.now() + SUSPECT_MS;
      try {
        stream?.cancel();
      } catch {
        // already gone
      }
      resolve(o);
    };
    const watchdog = setInterval(() => {
      if (!sub.active || client.closed) finish({ done: false, last, error: "stopped" });
    }, CHECK_EVERY_MS);
    const done = (o: Outcome) => {
      clearInterval(watchdog);
      finish(o);
    };
    member.watchStream().then(
      (s) => {
        stream = s;
        if (settled) return void s.cancel();
        s.on("data", (res: IWatchResponse) => {
          if (settled) return;
          if (res.canceled) {
            const compactRevision = Number(res.compact_revision ?? 0);
            return done(compactRevision > 0 ? { done: false, last, compactRevision } : { done: false, last, error: res.cancel_reason || "etcd canceled the watch" });
          }
          const batch: WatchEvent[] = [];
          let past = false;
          for (const ev of res.events ?? []) {
            const revision = Number(ev.kv.mod_revision);
            if (revision > upTo) {
              past = true;
              break;
            }
            last = revision;
            const k = client.keyOf(ev.kv.key);
            if (k === undefined || !k.startsWith(prefix)) continue;
            batch.push(String(ev.type).toUpperCase() === "DELETE" ? { type: "delete", key: k, revision } : { type: "put", key: k, value: Buffer.from(ev.kv.value ?? Buffer.alloc(0)), revision });
          }
          if (batch.length > 0) sub.feed(batch);
          if (past || last >= upTo) done({ done: true });
        });
        s.on("error", (err: Error) => done({ done: false, last, error: err.message }));
        s.on("end", () => done({ done: false, last, error: "the replay stream ended" }));
        // The whole keyspace, filtered here: every etcd revision is some write, so the event at `upTo`
        // arrives and says the replay is complete (etcd 3.4 answers a progress request at once, synced or
        // not, so it cannot tell that).
        s.write({ create_request: { key: ALL, range_end: ALL, start_revision: start, progress_notify: false, prev_kv: false } });
      },
      (err: unknown) => done({ done: false, last, error: (err as Error)?.message ?? String(err) }),
    );
  });
}
