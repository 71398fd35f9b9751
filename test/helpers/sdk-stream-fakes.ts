/**
 * A fake crypto-stream transport for the SDK's stream unit tests: records what the client writes and
 * lets the test answer, drain and end it. Pure logic only; the real stream is tested against a daemon.
 */
import type { CryptoStreamRequest, CryptoStreamResponse } from "../../src/gen/hsm/v1/crypto";
import { HsmClientError } from "../../src/sdk";
import { PendingOp } from "../../src/sdk/pending-op";
import type { OpenStream, StreamEvents, StreamTransport } from "../../src/sdk/stream-conn";

/** One fake stream: its token, what was written to it, and its events to drive. */
export class FakeStream implements StreamTransport {
  readonly writes: CryptoStreamRequest[] = [];
  /** What write() answers next (false: "my buffer is full, wait for drain"). */
  writable = true;
  /** Thrown by the next write (an encoding failure). */
  failNextWrite: Error | undefined;
  ended = false;
  cancelled = false;

  constructor(
    readonly token: string | undefined,
    readonly events: StreamEvents,
    readonly endpoint?: string,
  ) {}

  write(request: CryptoStreamRequest): boolean {
    const fail = this.failNextWrite;
    if (fail !== undefined) {
      this.failNextWrite = undefined;
      throw fail;
    }
    this.writes.push(request);
    return this.writable;
  }

  end(): void {
    this.ended = true;
  }

  cancel(): void {
    this.cancelled = true;
  }

  /** The daemon answers `id`. */
  answer(id: number, result: CryptoStreamResponse["result"]): void {
    this.events.onResponse({ id, result });
  }
}

/** An opener that records every stream it opens in `into`. */
export function fakeOpener(into: FakeStream[], endpoint?: string): OpenStream {
  return (token, events) => {
    const s = new FakeStream(token, events, endpoint);
    into.push(s);
    return s;
  };
}

/** A pending sign of `message`, with its deadline and signal. */
export function signOp(message = "m", deadlineMs = 30_000, signal?: AbortSignal): PendingOp<{ name: string }> {
  let settle: (o: Outcome) => void = () => undefined;
  const done = new Promise<Outcome>((r) => {
    settle = r;
  });
  const op = new PendingOp<{ name: string }>(
    { $case: "sign", value: { keyId: "k", message: Buffer.from(message), algorithm: 0, messageType: 0, signatureFormat: 0, macLength: 0 } as never },
    new Date(Date.now() + deadlineMs),
    signal,
    (value) => settle({ ok: value }),
    (err) => settle({ err: { code: err.code, details: err.details } }),
  );
  outcomes.set(op, done);
  return op;
}

/** How an op settled. */
export type Outcome = { ok: unknown } | { err: { code: number; details: string } };
const outcomes = new WeakMap<PendingOp<never>, Promise<Outcome>>();

/** Resolves with how `op` settled. */
export function outcome(op: PendingOp<never> | PendingOp<{ name: string }>): Promise<Outcome> {
  return outcomes.get(op as PendingOp<never>)!;
}

/** A sign result. */
export function signed(signature: string): CryptoStreamResponse["result"] {
  return { $case: "sign", value: { signature: Buffer.from(signature) } as never };
}

/** An error result. */
export function failed(code: number, message: string): CryptoStreamResponse["result"] {
  return { $case: "error", value: { code, message } };
}

/** An HsmClientError as the tests compare it. */
export const errorOf = (e: HsmClientError) => ({ code: e.code, details: e.details });
