import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { HsmClientError } from "../../src/sdk";
import { PendingOp } from "../../src/sdk/pending-op";
import { StreamConn, type ConnOwner } from "../../src/sdk/stream-conn";
import { StreamMux } from "../../src/sdk/stream-mux";
import { FakeStream, fakeOpener, outcome, signOp, signed } from "../helpers/sdk-stream-fakes";

// The pure multiplexing of one endpoint's stream (ids, window, back-pressure, deadlines, queue),
// driven through a fake transport. Failover and session recovery: sdk-stream-router.test.ts.

const LIMITS = { maxInFlight: 4, idleTimeoutMs: 60_000 };

/** A multiplexer over fake streams whose answers resolve the ops (errors reject them as the router would). */
function mux(limits = LIMITS, token = () => "t-1" as string | undefined) {
  const streams: FakeStream[] = [];
  const broken: Array<{ unanswered: PendingOp[]; queued: PendingOp[]; err: HsmClientError | undefined }> = [];
  const m = new StreamMux(fakeOpener(streams), token, limits, {
    answered: (op, response) => (response.result?.$case === "error" ? op.reject(new HsmClientError(response.result.value.code, response.result.value.message)) : op.resolve(response.result?.value)),
    broken: (unanswered, queued, err) => broken.push({ unanswered, queued, err }),
  });
  return { m, streams, broken };
}

describe("one stream's ids and window", () => {
  it("opens the stream lazily, once, under the session's token, and gives each op its own id", async () => {
    const { m, streams } = mux();
    expect(streams).toHaveLength(0);
    const ops = [signOp(), signOp(), signOp()];
    for (const op of ops) m.submit(op);
    expect(streams).toHaveLength(1);
    expect(streams[0]!.token).toBe("t-1");
    const ids = streams[0]!.writes.map((w) => w.id);
    expect(new Set(ids).size).toBe(3);
    // Answers out of order resolve the op of their id.
    streams[0]!.answer(ids[2]!, signed("c"));
    streams[0]!.answer(ids[0]!, signed("a"));
    streams[0]!.answer(ids[1]!, signed("b"));
    expect(await Promise.all(ops.map((op) => outcome(op)))).toEqual([{ signature: Buffer.from("a") }, { signature: Buffer.from("b") }, { signature: Buffer.from("c") }].map((v) => ({ ok: v })));
  });

  it("keeps at most maxInFlight on the stream and sends the rest first in, first out as answers free slots", () => {
    const { m, streams } = mux();
    const ops = Array.from({ length: 7 }, (_, i) => signOp(`m${i}`));
    for (const op of ops) m.submit(op);
    const s = streams[0]!;
    expect(s.writes.map((w) => w.op)).toEqual(ops.slice(0, 4).map((op) => op.op));
    expect(m.queued).toBe(3);
    s.answer(s.writes[1]!.id, signed("x"));
    expect(s.writes).toHaveLength(5);
    expect(s.writes[4]!.op).toEqual(ops[4]!.op);
    s.answer(s.writes[0]!.id, signed("x"));
    s.answer(s.writes[2]!.id, signed("x"));
    expect(s.writes.map((w) => w.op)).toEqual(ops.map((op) => op.op));
    expect(streams).toHaveLength(1);
  });

  it("stops writing when write() answers false and goes on at 'drain'", () => {
    const { m, streams } = mux({ maxInFlight: 100, idleTimeoutMs: 60_000 });
    m.submit(signOp());
    const s = streams[0]!;
    s.writable = false;
    m.submit(signOp()); // accepted by the transport, which now says "full"
    for (let i = 0; i < 5; i++) m.submit(signOp());
    expect(s.writes).toHaveLength(2);
    expect(m.queued).toBe(5);
    s.writable = true;
    s.events.onDrain();
    expect(s.writes).toHaveLength(7);
    expect(m.queued).toBe(0);
  });

  it("never reuses an id still in flight, and wraps after 2^32 - 1 to 1", () => {
    const streams: FakeStream[] = [];
    const owner: ConnOwner = { answered: (_c, op, r) => op.resolve(r.result?.value), ready: () => undefined, ended: () => undefined };
    const conn = new StreamConn(fakeOpener(streams), "t", { maxInFlight: 3, idleTimeoutMs: 60_000 }, owner, 0xffff_fffe);
    const s = () => streams[0]!;
    conn.send(signOp());
    conn.send(signOp());
    conn.send(signOp());
    expect(s().writes.map((w) => w.id)).toEqual([0xffff_fffe, 0xffff_ffff, 1]);
    s().answer(0xffff_ffff, signed("x"));
    conn.send(signOp()); // 2 is free
    s().answer(1, signed("x"));
    s().answer(2, signed("x"));
    conn.send(signOp()); // 3
    conn.send(signOp()); // 4
    // 0xfffffffe is still in flight when the counter comes round again: later ids skip it.
    expect(s().writes.map((w) => w.id)).toEqual([0xffff_fffe, 0xffff_ffff, 1, 2, 3, 4]);
    expect(conn.canSend).toBe(false);
  });

  it("rejects only the op whose request cannot be encoded; the stream carries on", async () => {
    const { m, streams } = mux();
    const good = signOp();
    m.submit(signOp());
    streams[0]!.failNextWrite = new Error("invalid wire type");
    const bad = signOp();
    m.submit(bad);
    m.submit(good);
    expect(await outcome(bad)).toEqual({ err: { code: grpc.status.INTERNAL, details: "Request message serialization failure: invalid wire type" } });
    streams[0]!.answer(streams[0]!.writes[1]!.id, signed("g"));
    expect(await outcome(good)).toEqual({ ok: { signature: Buffer.from("g") } });
  });
});

describe("deadlines and cancellation", () => {
  it("rejects a queued op at its deadline without ever sending it", async () => {
    const { m, streams } = mux({ maxInFlight: 1, idleTimeoutMs: 60_000 });
    m.submit(signOp());
    const late = signOp("late", 20);
    m.submit(late);
    expect(await outcome(late)).toEqual({ err: { code: grpc.status.DEADLINE_EXCEEDED, details: expect.stringContaining("Deadline exceeded") } });
    const next = signOp("next");
    m.submit(next);
    streams[0]!.answer(streams[0]!.writes[0]!.id, signed("first"));
    // The slot went to the next op, not to the one that gave up.
    expect(streams[0]!.writes.map((w) => w.op)).toEqual([signOp().op, next.op]);
  });

  it("rejects an op in flight at its deadline, drops the daemon's late answer, and keeps its slot until then", async () => {
    const { m, streams } = mux({ maxInFlight: 2, idleTimeoutMs: 60_000 });
    const slow = signOp("slow", 20);
    m.submit(slow);
    expect(await outcome(slow)).toEqual({ err: { code: grpc.status.DEADLINE_EXCEEDED, details: expect.any(String) } });
    const a = signOp("a");
    const b = signOp("b");
    m.submit(a);
    m.submit(b);
    const s = streams[0]!;
    expect(s.writes).toHaveLength(2); // the abandoned op still holds a slot: the daemon is still working on it
    s.answer(s.writes[0]!.id, signed("too late"));
    expect(s.writes).toHaveLength(3);
    expect(s.writes[2]!.id).not.toBe(s.writes[1]!.id);
    s.answer(s.writes[1]!.id, signed("a"));
    expect(await outcome(a)).toEqual({ ok: { signature: Buffer.from("a") } });
  });

  it("rejects on abort with CANCELLED (DEADLINE_EXCEEDED for a TimeoutError reason)", async () => {
    const { m } = mux();
    const ac = new AbortController();
    const op = signOp("m", 30_000, ac.signal);
    m.submit(op);
    ac.abort();
    expect(await outcome(op)).toEqual({ err: { code: grpc.status.CANCELLED, details: "the call was aborted" } });
    const timed = signOp("m", 30_000, AbortSignal.timeout(10));
    m.submit(timed);
    expect(await outcome(timed)).toEqual({ err: { code: grpc.status.DEADLINE_EXCEEDED, details: "the call's abort signal timed out" } });
  });

  it("cancels a stream whose whole window waits for answers nobody wants, and carries on on a new one", async () => {
    const { m, streams, broken } = mux({ maxInFlight: 2, idleTimeoutMs: 60_000 });
    const ac = new AbortController();
    m.submit(signOp("a", 30_000, ac.signal));
    m.submit(signOp("b", 30_000, ac.signal));
    const waiting = signOp("c");
    m.submit(waiting);
    ac.abort();
    expect(streams[0]!.cancelled).toBe(true);
    expect(broken).toEqual([]);
    expect(streams).toHaveLength(2);
    expect(streams[1]!.writes.map((w) => w.op)).toEqual([waiting.op]);
  });
});

describe("ends of a stream", () => {
  it("hands back what was in flight and what was queued when the stream breaks", () => {
    const { m, streams, broken } = mux({ maxInFlight: 2, idleTimeoutMs: 60_000 });
    const ops = [signOp("a"), signOp("b"), signOp("c"), signOp("d")];
    for (const op of ops) m.submit(op);
    streams[0]!.answer(streams[0]!.writes[0]!.id, signed("a"));
    const err = new HsmClientError(grpc.status.UNAVAILABLE, "Connection dropped");
    streams[0]!.events.onEnd(err);
    expect(broken).toHaveLength(1);
    expect(broken[0]!.err).toBe(err);
    expect(broken[0]!.unanswered).toEqual([ops[1], ops[2]]);
    expect(broken[0]!.queued).toEqual([ops[3]]);
    // A later op opens a new stream.
    m.submit(signOp("e"));
    expect(streams).toHaveLength(2);
  });

  it("opens a new stream when the token changes; the old one half-closes once its ops are answered", async () => {
    let token = "t-1";
    const { m, streams } = mux(LIMITS, () => token);
    const first = signOp("a");
    m.submit(first);
    token = "t-2";
    m.retireStale();
    const second = signOp("b");
    m.submit(second);
    expect(streams.map((s) => s.token)).toEqual(["t-1", "t-2"]);
    expect(streams[0]!.ended).toBe(false);
    streams[0]!.answer(streams[0]!.writes[0]!.id, signed("a"));
    expect(streams[0]!.ended).toBe(true);
    expect(await outcome(first)).toEqual({ ok: { signature: Buffer.from("a") } });
    expect(streams[1]!.writes.map((w) => w.op)).toEqual([second.op]);
  });

  it("half-closes a stream idle for idleTimeoutMs; the next op opens another", async () => {
    const { m, streams, broken } = mux({ maxInFlight: 4, idleTimeoutMs: 20 });
    m.submit(signOp());
    streams[0]!.answer(streams[0]!.writes[0]!.id, signed("x"));
    await new Promise((r) => setTimeout(r, 60));
    expect(streams[0]!.ended).toBe(true);
    streams[0]!.events.onEnd(undefined);
    expect(broken).toEqual([]);
    m.submit(signOp());
    expect(streams).toHaveLength(2);
  });
});
