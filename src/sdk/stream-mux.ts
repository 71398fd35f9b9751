/**
 * The crypto stream of one endpoint: opened lazily under the session's current token, the operations
 * beyond its window queued here (FIFO, each within its own deadline), a new stream when the token
 * changes (the old one finishes what it carries, then half-closes), and every break reported with the
 * operations it left unanswered.
 */
import type { CryptoStreamResponse } from "../gen/hsm/v1/crypto";
import type { HsmClientError } from "./client-error";
import type { PendingOp } from "./pending-op";
import { StreamConn, type OpenStream, type StreamLimits } from "./stream-conn";

/** Where a multiplexer hands its operations' outcomes (the router: retries, failover, re-login). */
export interface MuxSink<E> {
  answered(op: PendingOp<E>, response: CryptoStreamResponse, token: string | undefined): void;
  /**
   * The stream opened under `token` ended: `unanswered` were in flight on it, `queued` waited for it
   * (only given when something was in flight: a break, not an idle end).
   */
  broken(unanswered: PendingOp<E>[], queued: PendingOp<E>[], err: HsmClientError | undefined, token: string | undefined): void;
}

/** The streams and the queue of one endpoint. */
export class StreamMux<E = unknown> {
  private current: StreamConn<E> | undefined;
  /** Every stream still open: the current one and those retired after a token change. */
  private readonly conns = new Set<StreamConn<E>>();
  private queue: PendingOp<E>[] = [];
  private head = 0;
  private closed = false;

  constructor(
    private readonly open: OpenStream,
    /** The session's token now: a stream opened under another one takes no new operations. */
    private readonly token: () => string | undefined,
    private readonly limits: StreamLimits,
    private readonly sink: MuxSink<E>,
  ) {}

  /** Streams open now (the current one and retired ones finishing), for tests and stats. */
  get openStreams(): number {
    return this.conns.size;
  }

  /** Operations waiting for a slot (settled ones not yet skipped included). */
  get queued(): number {
    return this.queue.length - this.head;
  }

  /** Sends `op` on the current stream, or queues it until a slot frees. */
  submit(op: PendingOp<E>): void {
    this.queue.push(op);
    this.pump();
  }

  /** A token change: the streams opened under another token take nothing new and end when done. */
  retireStale(): void {
    const token = this.token();
    for (const conn of this.conns) if (conn.token !== token && !conn.retiring) conn.retire();
    if (this.current !== undefined && this.current.token !== token) this.current = undefined;
    this.pump();
  }

  /** Client close: every stream half-closed; the router has rejected the operations. */
  close(): void {
    this.closed = true;
    for (const conn of this.conns) conn.close();
    this.conns.clear();
    this.current = undefined;
    this.queue = [];
    this.head = 0;
  }

  private pump(): void {
    if (this.closed) return;
    const token = this.token();
    if (this.current !== undefined && (this.current.token !== token || this.current.retiring)) {
      if (!this.current.retiring) this.current.retire();
      this.current = undefined;
    }
    while (this.head < this.queue.length) {
      const op = this.queue[this.head]!;
      if (op.settled) {
        this.head += 1;
        continue;
      }
      if (this.current === undefined) {
        const conn: StreamConn<E> = new StreamConn<E>(this.open, token, this.limits, {
          answered: (c, answeredOp, response) => this.sink.answered(answeredOp, response, c.token),
          ready: (c) => {
            if (c === this.current) this.pump();
          },
          ended: (c, unanswered, err) => this.ended(c, unanswered, err),
        });
        this.conns.add(conn);
        this.current = conn;
        if (conn.closed) continue; // it could not even open: ended() took the queue
      }
      if (!this.current.canSend) break;
      this.head += 1;
      this.current.send(op);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private ended(conn: StreamConn<E>, unanswered: PendingOp<E>[], err: HsmClientError | undefined): void {
    this.conns.delete(conn);
    const wasCurrent = conn === this.current;
    if (wasCurrent) this.current = undefined;
    if (this.closed) return;
    if (unanswered.length === 0 && err === undefined) {
      // An idle or emptied stream ended cleanly: the next operation opens another.
      this.pump();
      return;
    }
    let queued: PendingOp<E>[] = [];
    if (wasCurrent) {
      queued = this.queue.slice(this.head).filter((op) => !op.settled);
      this.queue = [];
      this.head = 0;
    }
    this.sink.broken(unanswered, queued, err, conn.token);
  }
}
