import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { HsmClientError } from "../../src/sdk";
import type { PendingOp } from "../../src/sdk/pending-op";
import { StreamRouter } from "../../src/sdk/stream-router";
import { FakeStream, failed, fakeOpener, outcome, signOp, signed } from "../helpers/sdk-stream-fakes";

// The stream router's policy over fake endpoints and fake streams: per-message errors, broken
// streams re-sent elsewhere, session recovery, and the unary path for a daemon without the stream.

interface Ep {
  name: string;
}

/** A router over endpoints "a" and "b" (round robin, skipping tried ones, as EndpointPool picks). */
function router(opts: { canRelogin?: boolean; maxAttempts?: number; endpoints?: string[] } = {}) {
  const eps: Ep[] = (opts.endpoints ?? ["a", "b"]).map((name) => ({ name }));
  const streams: FakeStream[] = [];
  const state = { token: "t-1" as string | undefined, relogins: 0, retries: 0, unavailable: [] as string[], unary: [] as string[] };
  let cursor = 0;
  const r = new StreamRouter<Ep>({
    pick: (tried) => {
      for (let i = 0; i < eps.length; i++) {
        const e = eps[(cursor + i) % eps.length]!;
        if (tried.size < eps.length && tried.has(e)) continue;
        cursor = (eps.indexOf(e) + 1) % eps.length;
        return e;
      }
      return eps[0]!;
    },
    endpointCount: eps.length,
    reportUnavailable: (e) => state.unavailable.push(e.name),
    open: (e) => fakeOpener(streams, e.name),
    token: () => state.token,
    canRelogin: opts.canRelogin ?? false,
    relogin: async () => {
      state.relogins += 1;
      state.token = `t-${state.relogins + 1}`;
      r.tokenChanged();
    },
    countRetry: () => {
      state.retries += 1;
    },
    retry: { maxAttempts: opts.maxAttempts ?? 5, initialBackoffMs: 1, maxBackoffMs: 2 },
    limits: { maxInFlight: 16, idleTimeoutMs: 60_000 },
  });
  /** An op whose unary call is recorded and answers "unary". */
  const op = (message = "m") => {
    const o = signOp(message) as PendingOp<Ep>;
    o.unary = async () => {
      state.unary.push(message);
      return { signature: Buffer.from("unary") };
    };
    return o;
  };
  return { r, streams, state, op };
}

/** Every write of every stream to `endpoint` answered with a signature naming it, from `from` on. */
function answerAll(streams: FakeStream[], from = 0): void {
  for (const s of streams.slice(from)) for (const w of s.writes) s.answer(w.id, signed(s.endpoint!));
}

const until = async (check: () => boolean): Promise<void> => {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 2));
};

describe("per-message answers", () => {
  it("turns an answer's error into exactly that HsmClientError and does not retry it", async () => {
    const { r, streams, state, op } = router();
    const o = op();
    r.run(o);
    streams[0]!.answer(streams[0]!.writes[0]!.id, failed(grpc.status.NOT_FOUND, "key k-1 not found"));
    expect(await outcome(o)).toEqual({ err: { code: grpc.status.NOT_FOUND, details: "key k-1 not found" } });
    expect(state.retries).toBe(0);
  });

  it("re-sends an op answered UNAVAILABLE to the other endpoint and reports the first", async () => {
    const { r, streams, state, op } = router();
    const o = op();
    r.run(o);
    streams[0]!.answer(streams[0]!.writes[0]!.id, failed(grpc.status.UNAVAILABLE, "the node is draining"));
    await until(() => streams.length === 2 && streams[1]!.writes.length === 1);
    expect(streams.map((s) => s.endpoint)).toEqual(["a", "b"]);
    answerAll(streams, 1);
    expect(await outcome(o)).toEqual({ ok: { signature: Buffer.from("b") } });
    expect(state).toMatchObject({ unavailable: ["a"], retries: 1 });
  });

  it("rejects an answer of another kind than the request as INTERNAL", async () => {
    const { r, streams, op } = router();
    const o = op();
    r.run(o);
    streams[0]!.answer(streams[0]!.writes[0]!.id, { $case: "verify", value: { valid: true } as never });
    expect(await outcome(o)).toEqual({ err: { code: grpc.status.INTERNAL, details: "the daemon answered a sign on the crypto stream with a verify result" } });
  });
});

describe("a stream that breaks", () => {
  it("re-sends every op in flight on a stream to the other endpoint", async () => {
    const { r, streams, state, op } = router();
    const ops = Array.from({ length: 10 }, (_, i) => op(`m${i}`));
    for (const o of ops) r.run(o);
    // Round robin: both endpoints have a stream; break a's.
    const a = streams.find((s) => s.endpoint === "a")!;
    const onA = a.writes.length;
    expect(onA).toBeGreaterThan(0);
    a.events.onEnd(new HsmClientError(grpc.status.UNAVAILABLE, "Connection dropped"));
    await until(() => streams.filter((s) => s.endpoint === "b").reduce((n, s) => n + s.writes.length, 0) === 10);
    answerAll(streams.filter((s) => s.endpoint === "b"));
    const results = await Promise.all(ops.map((o) => outcome(o)));
    expect(results.every((x) => "ok" in x)).toBe(true);
    expect(state.retries).toBe(onA);
    expect(state.unavailable).toEqual(["a"]);
  });

  it("re-sends the ops of a stream that ended OK while they were in flight", async () => {
    const { r, streams, op } = router({ endpoints: ["a"] });
    const o = op();
    r.run(o);
    streams[0]!.events.onEnd(undefined);
    await until(() => streams.length === 2 && streams[1]!.writes.length === 1);
    answerAll(streams, 1);
    expect(await outcome(o)).toEqual({ ok: { signature: Buffer.from("a") } });
  });

  it("gives up after retry.maxAttempts breaks with the stream's error", async () => {
    const { r, streams, op } = router({ endpoints: ["a"], maxAttempts: 3 });
    const o = op();
    r.run(o);
    for (let i = 0; i < 3; i++) {
      await until(() => streams.length === i + 1 && streams[i]!.writes.length === 1);
      streams[i]!.events.onEnd(new HsmClientError(grpc.status.UNAVAILABLE, `dropped ${i}`));
    }
    expect(await outcome(o)).toEqual({ err: { code: grpc.status.UNAVAILABLE, details: "dropped 2" } });
    expect(streams).toHaveLength(3);
  });
});

describe("session recovery", () => {
  it("logs in again when the stream ends UNAUTHENTICATED and re-sends under the new token", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"], canRelogin: true });
    const ops = [op("x"), op("y")];
    for (const o of ops) r.run(o);
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.UNAUTHENTICATED, "the session ended: logged out"));
    await until(() => streams.length === 2 && streams[1]!.writes.length === 2);
    expect(streams[1]!.token).toBe(state.token);
    expect(state.token).not.toBe("t-1");
    answerAll(streams, 1);
    for (const o of ops) expect(await outcome(o)).toEqual({ ok: { signature: Buffer.from("a") } });
  });

  it("rejects with the stream's UNAUTHENTICATED when it cannot log in again", async () => {
    const { r, streams, op } = router({ endpoints: ["a"], canRelogin: false });
    const o = op();
    r.run(o);
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.UNAUTHENTICATED, "the session ended: logged out"));
    expect(await outcome(o)).toEqual({ err: { code: grpc.status.UNAUTHENTICATED, details: "the session ended: logged out" } });
  });

  it("re-sends without a login when the token already changed since the stream opened", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"], canRelogin: false });
    const o = op();
    r.run(o);
    state.token = "t-refreshed";
    r.tokenChanged();
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.UNAUTHENTICATED, "the session was refreshed"));
    await until(() => streams.length === 2 && streams[1]!.writes.length === 1);
    expect(streams[1]!.token).toBe("t-refreshed");
    expect(state.relogins).toBe(0);
  });
});

describe("token changes", () => {
  it("half-closes the streams of the old token at once on a logout, and the next login's ops get a new stream", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"] });
    const first = op("1");
    r.run(first);
    answerAll(streams);
    await outcome(first);
    state.token = undefined; // logout
    r.tokenChanged();
    expect(streams[0]!.ended).toBe(true);
    state.token = "t-2"; // login
    r.tokenChanged();
    const next = op("2");
    r.run(next);
    expect(streams.map((s) => s.token)).toEqual(["t-1", "t-2"]);
  });
});

describe("a daemon that does not serve the stream", () => {
  it("sends the ops as unary calls after UNIMPLEMENTED, and later ones unary at once", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"] });
    const first = op("1");
    r.run(first);
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.UNIMPLEMENTED, "unknown method CryptoStream"));
    expect(await outcome(first)).toEqual({ ok: { signature: Buffer.from("unary") } });
    const later = op("2");
    r.run(later);
    expect(await outcome(later)).toEqual({ ok: { signature: Buffer.from("unary") } });
    expect(streams).toHaveLength(1);
    expect(state.unary).toEqual(["1", "2"]);
  });

  it("uses the unary call for a token the stream refused (PERMISSION_DENIED), and the stream again for the next token", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"] });
    r.run(op("1"));
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.PERMISSION_DENIED, "crypto officers do not use keys"));
    const same = op("2");
    r.run(same);
    await outcome(same);
    expect(streams).toHaveLength(1);
    state.token = "t-9";
    r.tokenChanged();
    r.run(op("3"));
    expect(streams).toHaveLength(2);
    expect(state.unary).toEqual(["1", "2"]);
  });

  it("sends each op of a stream that ended RESOURCE_EXHAUSTED as its own unary call", async () => {
    const { r, streams, state, op } = router({ endpoints: ["a"] });
    r.run(op("big"));
    r.run(op("small"));
    streams[0]!.events.onEnd(new HsmClientError(grpc.status.RESOURCE_EXHAUSTED, "Received message larger than max"));
    await until(() => state.unary.length === 2);
    expect(state.unary.sort()).toEqual(["big", "small"]);
    r.run(op("next"));
    expect(streams).toHaveLength(2); // the endpoint still serves the stream
  });
});

describe("close", () => {
  it("rejects every op not yet settled with FAILED_PRECONDITION and half-closes the streams", async () => {
    const { r, streams, op } = router();
    const ops = [op(), op(), op()];
    for (const o of ops) r.run(o);
    r.close();
    for (const o of ops) expect(await outcome(o)).toEqual({ err: { code: grpc.status.FAILED_PRECONDITION, details: "the HsmClient is closed" } });
    expect(streams.every((s) => s.ended)).toBe(true);
    const after = op();
    r.run(after);
    expect(await outcome(after)).toEqual({ err: { code: grpc.status.FAILED_PRECONDITION, details: "the HsmClient is closed" } });
    expect(r.activeCount).toBe(0);
  });
});
