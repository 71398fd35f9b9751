/**
 * One open crypto stream to one daemon: the ids of the operations in flight on it, its window (at
 * most `maxInFlight` of them), the transport's back-pressure (`write()` false until 'drain'), its
 * answers routed by id, and its end handing back the operations it left unanswered.
 */
import { status } from "@grpc/grpc-js";
import type { CryptoStreamRequest, CryptoStreamResponse } from "../gen/hsm/v1/crypto";
import { HsmClientError } from "./client-error";
import type { PendingOp } from "./pending-op";

/** What a stream's transport tells its owner (a grpc-js duplex call, or a fake in unit tests). */
export interface StreamEvents {
  onResponse(response: CryptoStreamResponse): void;
  /** The transport takes writes again after a `write()` answered false. */
  onDrain(): void;
  /** The stream ended: `undefined` for status OK, else its status as an HsmClientError. Called once. */
  onEnd(err: HsmClientError | undefined): void;
}

/** One open stream as the connection drives it. */
export interface StreamTransport {
  /**
   * Sends one request; false when the transport's buffer is full (wait for `onDrain`). Throws when the
   * request cannot be encoded: then nothing was sent.
   */
  write(request: CryptoStreamRequest): boolean;
  /** Half-closes: no more requests; the daemon answers what it has, then ends the stream. */
  end(): void;
  /** Cancels the stream at once (CANCELLED on both sides). */
  cancel(): void;
}

/** Opens a stream under `token`, delivering its events to `events` (never synchronously from here). */
export type OpenStream = (token: string | undefined, events: StreamEvents) => StreamTransport;

/** Size of a stream's window and how long it may sit idle. */
export interface StreamLimits {
  /** Operations in flight on one stream at most (the daemon's `grpc.streamMaxInFlight`). */
  readonly maxInFlight: number;
  /** A stream with nothing in flight for this long is half-closed (a new one opens on demand). */
  readonly idleTimeoutMs: number;
}

/** Who owns a connection (its endpoint's multiplexer). */
export interface ConnOwner<E> {
  /** `op`, sent on `conn`, was answered. */
  answered(conn: StreamConn<E>, op: PendingOp<E>, response: CryptoStreamResponse): void;
  /** `conn` may take more operations (an answer freed a slot, or the transport drained). */
  ready(conn: StreamConn<E>): void;
  /** `conn` ended; `unanswered` are the live operations it still had in flight. */
  ended(conn: StreamConn<E>, unanswered: PendingOp<E>[], err: HsmClientError | undefined): void;
}

/** Largest uint32: the id counter wraps after it (to 1; 0 is never used). */
const MAX_ID = 0xffff_ffff;

/**
 * The in-flight table of one stream. An operation that settles locally (deadline, abort, client close)
 * keeps its id and its slot until the daemon's late answer arrives (the daemon still counts it, and a
 * reused id would be refused), and that answer is dropped. A window full of such abandoned operations
 * is a stream that can carry nothing more: it is cancelled, and its owner opens another.
 */
export class StreamConn<E = unknown> {
  private readonly transport: StreamTransport;
  /** id → the live operation, or undefined once abandoned (the slot is kept until its answer). */
  private readonly inFlight = new Map<number, PendingOp<E> | undefined>();
  private live = 0;
  private nextId = 1;
  private writable = true;
  private retired = false;
  private halfClosed = false;
  /** True once the stream ended (or was cancelled here): nothing more is sent or delivered. */
  closed = false;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    open: OpenStream,
    /** The session token the stream was opened with (its `authorization` metadata). */
    readonly token: string | undefined,
    private readonly limits: StreamLimits,
    private readonly owner: ConnOwner<E>,
    /** The first id it hands out (tests start near the wrap). */
    firstId = 1,
  ) {
    this.nextId = firstId;
    this.transport = open(token, {
      onResponse: (r) => this.onResponse(r),
      onDrain: () => this.onDrain(),
      onEnd: (err) => this.onEnd(err),
    });
  }

  /** True when {@link send} may be called: open, not retired, the transport writable, a free slot. */
  get canSend(): boolean {
    return !this.closed && !this.retired && this.writable && this.inFlight.size < this.limits.maxInFlight;
  }

  /** Operations sent and not yet answered, abandoned ones included (what the daemon holds). */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** True once retired or closed: it takes no new operations. */
  get retiring(): boolean {
    return this.retired || this.closed;
  }

  /**
   * Sends `op` under a fresh id. A request that cannot be encoded rejects `op` alone (as grpc-js
   * rejects a unary call whose message it cannot serialize) and the stream carries on.
   */
  send(op: PendingOp<E>): void {
    const id = this.allocateId();
    try {
      this.writable = this.transport.write({ id, op: op.op });
    } catch (err) {
      op.reject(new HsmClientError(status.INTERNAL, `Request message serialization failure: ${(err as Error).message}`, { cause: err }));
      return;
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.inFlight.set(id, op);
    this.live += 1;
    op.onAbandon = () => this.abandon(id);
  }

  /** Takes no new operations; half-closes once nothing live is in flight (a token change, idleness). */
  retire(): void {
    this.retired = true;
    if (this.live === 0) this.halfClose();
  }

  /** Client close: half-closes now; answers still arriving are dropped. */
  close(): void {
    this.retired = true;
    this.halfClose();
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id === MAX_ID ? 1 : id + 1;
      if (!this.inFlight.has(id)) return id;
    }
  }

  private abandon(id: number): void {
    if (this.closed || this.inFlight.get(id) === undefined) return;
    this.inFlight.set(id, undefined);
    this.live -= 1;
    if (this.live > 0) return;
    if (this.retired) {
      this.halfClose();
    } else if (this.inFlight.size >= this.limits.maxInFlight) {
      // Every slot waits for an answer nobody wants: start afresh on a new stream.
      this.closed = true;
      this.transport.cancel();
      this.owner.ended(this, [], undefined);
    } else {
      this.armIdle();
    }
  }

  private onResponse(response: CryptoStreamResponse): void {
    if (this.closed || !this.inFlight.has(response.id)) return; // an id it never sent: nothing to settle
    const op = this.inFlight.get(response.id);
    this.inFlight.delete(response.id);
    if (op !== undefined) {
      this.live -= 1;
      op.onAbandon = undefined;
      this.owner.answered(this, op, response);
    }
    if (this.live === 0) {
      if (this.retired) this.halfClose();
      else this.armIdle();
    }
    if (this.canSend) this.owner.ready(this);
  }

  private onDrain(): void {
    if (this.closed) return;
    this.writable = true;
    if (this.canSend) this.owner.ready(this);
  }

  private onEnd(err: HsmClientError | undefined): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idleTimer);
    const unanswered: PendingOp<E>[] = [];
    for (const op of this.inFlight.values()) {
      if (op === undefined || op.settled) continue;
      op.onAbandon = undefined;
      unanswered.push(op);
    }
    this.inFlight.clear();
    this.live = 0;
    this.owner.ended(this, unanswered, err);
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    // unref: an idle stream never keeps the process alive.
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.live === 0 && !this.closed) this.retire();
    }, this.limits.idleTimeoutMs).unref();
  }

  private halfClose(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.halfClosed || this.closed) return;
    this.halfClosed = true;
    this.transport.end();
  }
}
