/**
 * How the etcd store follows its prefix: one watch stream from the mirror's revision + 1 to a member
 * (the preferred one first), reconnected with backoff when it fails (preferring another member), so
 * that etcd replays exactly the missed events; when etcd answers that this revision was compacted,
 * a full re-read of the prefix that the store turns into the differences. Each stream has a
 * generation: callbacks of an abandoned stream are ignored.
 */
import type { ClientDuplexStream } from "@grpc/grpc-js";
import type { IWatchRequest, IWatchResponse } from "etcd3";
import type { EtcdClient, Snapshot } from "./etcd-client";
import { asFailure, type Member } from "./etcd-member";
import { MAX_BACKOFF_MS, MIN_BACKOFF_MS, SUSPECT_MS } from "./etcd-options";

/** What the follower needs from the store it feeds. */
export interface WatchFollowerHost {
  client: EtcdClient;
  /** the mirror's revision: the stream resumes after it */
  applied(): number;
  /** a batch of watch events, in order */
  onEvents(events: IWatchResponse["events"]): void;
  /** a full read after the watch's revision was compacted */
  onSnapshot(snap: Snapshot): void;
  /** etcd said it compacted its history up to this revision */
  onCompacted(revision: number): void;
  log(msg: string): void;
  dialTimeoutMs: number;
  requestTimeoutMs: number;
}

/** The watch stream of one etcd store, and its reconnects and resyncs. */
export class WatchFollower {
  /** bumped whenever the current watch stream is abandoned; callbacks of older streams are ignored */
  private watchGen = 0;
  private stream: ClientDuplexStream<IWatchRequest, IWatchResponse> | undefined;
  private watchLive = false;
  private watchTimer: NodeJS.Timeout | undefined;
  private backoffMs = MIN_BACKOFF_MS;
  private failStreak = 0;
  /** watch stream failures that led to a reconnect, and full re-reads after a compaction */
  readonly counters = { reconnects: 0, resyncs: 0 };

  constructor(private readonly host: WatchFollowerHost) {}

  /** the watch stream is established and applying events */
  get live(): boolean {
    return this.watchLive;
  }

  /** Starts following from the mirror's revision + 1. */
  start(): void {
    this.startWatch();
  }

  /** Abandons the stream for good (the store is closing; the client is already stopped). */
  stop(): void {
    this.abandonStream();
    this.watchLive = false;
  }

  private abandonStream(): void {
    this.watchGen++;
    if (this.watchTimer) clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    const s = this.stream;
    this.stream = undefined;
    if (s) {
      try {
        s.cancel();
      } catch {
        // already gone
      }
    }
  }

  private startWatch(): void {
    if (this.host.client.closed) return;
    const gen = ++this.watchGen;
    const member = this.host.client.order()[0]!;
    const from = this.host.applied() + 1;
    this.watchTimer = setTimeout(() => this.watchFailed(gen, member, new Error(`the watch was not confirmed within ${this.host.dialTimeoutMs} ms`)), this.host.dialTimeoutMs);
    member.watchStream().then(
      (stream) => {
        if (gen !== this.watchGen || this.host.client.closed) {
          stream.cancel();
          return;
        }
        this.stream = stream;
        stream.on("data", (res: IWatchResponse) => this.onWatchResponse(gen, member, from, res));
        stream.on("error", (err: Error) => this.watchFailed(gen, member, err));
        stream.on("end", () => this.watchFailed(gen, member, new Error("the watch stream ended")));
        stream.write({
          create_request: {
            key: this.host.client.rangeStart,
            range_end: this.host.client.rangeEnd,
            start_revision: from,
            progress_notify: false,
            prev_kv: false,
          },
        });
      },
      (err: unknown) => this.watchFailed(gen, member, err),
    );
  }

  private onWatchResponse(gen: number, member: Member, from: number, res: IWatchResponse): void {
    if (gen !== this.watchGen || this.host.client.closed) return;
    if (res.canceled) {
      const compactRev = Number(res.compact_revision ?? 0);
      if (compactRev > 0) {
        this.host.onCompacted(compactRev);
        void this.resync(`the watch from revision ${from} was refused: etcd compacted its history up to revision ${compactRev}`);
      } else {
        this.watchFailed(gen, member, new Error(`etcd canceled the watch (${res.cancel_reason || "no reason given"})`));
      }
      return;
    }
    if (res.created) {
      if (this.watchTimer) clearTimeout(this.watchTimer);
      this.watchTimer = undefined;
      this.watchLive = true;
      this.backoffMs = MIN_BACKOFF_MS;
      if (this.failStreak > 0) {
        this.host.log(`watch re-established on ${member.endpoint} from revision ${from} after ${this.failStreak} failed attempt(s)`);
      }
      this.failStreak = 0;
    }
    if (res.events && res.events.length > 0) this.host.onEvents(res.events);
  }

  private watchFailed(gen: number, member: Member, err: unknown): void {
    if (gen !== this.watchGen || this.host.client.closed) return;
    this.abandonStream();
    this.watchLive = false;
    member.suspectUntil = Date.now() + SUSPECT_MS;
    this.counters.reconnects++;
    this.failStreak++;
    const why = asFailure(err, member.endpoint).details;
    if (this.failStreak === 1 || this.failStreak % 20 === 0) {
      this.host.log(`watch on ${member.endpoint} failed (${why}); serving reads from the mirror at revision ${this.host.applied()} ` + `and reconnecting (attempt ${this.failStreak})`);
    }
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    void this.host.client.sleep(delay).then(() => {
      if (!this.host.client.closed && this.stream === undefined && !this.watchLive) this.startWatch();
    });
  }

  /** The watch's revision is gone: re-read the prefix, emit the differences, then watch again. */
  private async resync(reason: string): Promise<void> {
    this.abandonStream();
    this.watchLive = false;
    this.counters.resyncs++;
    this.host.log(`${reason}; re-reading the prefix to converge`);
    let backoff = MIN_BACKOFF_MS;
    while (!this.host.client.closed) {
      try {
        const snap = await this.host.client.readAll(Date.now() + this.host.requestTimeoutMs, "resync", this.host.applied());
        if (this.host.client.closed) return;
        if (snap.revision < this.host.applied()) throw new Error(`read revision ${snap.revision} is behind the mirror (${this.host.applied()})`);
        this.host.onSnapshot(snap);
        break;
      } catch (err) {
        this.host.log(`resync failed (${(err as Error).message}); retrying`);
        await this.host.client.sleep(backoff);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
    if (!this.host.client.closed) this.startWatch();
  }
}
