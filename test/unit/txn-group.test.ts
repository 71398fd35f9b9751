/**
 * TxnGroup over the real embedded store: concurrent submissions commit in fewer revisions than
 * submissions, each one resolves as if alone (its own compares decide, its writes are committed when
 * it resolves), submissions sharing a key are never merged, the limits bound a merged txn, and a
 * failed store txn fails every member. `counting` only records the txns the group sends to the store.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Code, HsmError } from "../../src/errors";
import { TxnGroup, openEmbeddedStore, type Compare, type EmbeddedStore, type Op, type StateStore } from "../../src/store";

let dir: string;
let store: EmbeddedStore;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "txn-group-"));
  store = await openEmbeddedStore(dir);
});
afterEach(async () => {
  await store.close().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** The store, with every txn the group sends it recorded (its compare and op counts). */
function counting(s: StateStore): { txns: Array<{ compares: number; ops: number }>; keys: string[][]; store: Pick<StateStore, "txn"> } {
  const txns: Array<{ compares: number; ops: number }> = [];
  const keys: string[][] = [];
  return {
    txns,
    keys,
    store: {
      txn: (c: Compare[], o: Op[]) => {
        txns.push({ compares: c.length, ops: o.length });
        keys.push(o.map((x) => x.key));
        return s.txn(c, o);
      },
    },
  };
}

/** The store, with the op count of every txn sent; the first one waits for `release()`: in flight for as long as the test says. */
function gated(): { sent: number[]; release: () => void; held: Pick<StateStore, "txn"> } {
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const sent: number[] = [];
  const held: Pick<StateStore, "txn"> = {
    txn: async (cs, os) => {
      sent.push(os.length);
      if (sent.length === 1) await gate;
      return store.txn(cs, os);
    },
  };
  return { sent, release, held };
}

const tick = () => new Promise((r) => setImmediate(r));

const put = (key: string, v = key): Op => ({ type: "put", key, value: Buffer.from(v) });
const absent = (key: string): Compare => ({ key, op: "absent" });

describe("TxnGroup", () => {
  it("commits concurrent submissions in fewer revisions, each resolving after its write is durable", async () => {
    const g = new TxnGroup(store);
    const start = store.revision();
    const n = 50;
    const seen = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const res = await g.submit([absent(`k/${i}`), absent(`r/${i}`)], [put(`k/${i}`), put(`r/${i}`)]);
        const e = await store.get(`k/${i}`);
        return { res, modRevision: e?.modRevision };
      }),
    );
    for (const s of seen) {
      expect(s.res.succeeded).toBe(true);
      expect(s.modRevision).toBe(s.res.revision);
    }
    expect(store.revision() - start).toBeLessThan(n);
    expect(await store.count("k/")).toBe(n);
    expect(g.stats()).toMatchObject({ submitted: n, split: 0 });
    expect(g.stats().txns).toBe(store.revision() - start);
  });

  it.each([
    [1, [1, 20]],
    [2, [1, 10, 10]],
  ])("with %i txn(s) in flight at most, merges what arrives meanwhile into the next", async (maxInFlight, sizes) => {
    const { sent, release, held } = gated();
    const g = new TxnGroup(held, { maxInFlight });
    const first = g.submit([], [put("a")]);
    await tick();
    expect(sent).toEqual([1]);
    const wave1 = Array.from({ length: 10 }, (_, i) => g.submit([absent(`m/${i}`)], [put(`m/${i}`)]));
    await tick();
    const wave2 = Array.from({ length: 10 }, (_, i) => g.submit([absent(`n/${i}`)], [put(`n/${i}`)]));
    await tick();
    release();
    const results = await Promise.all([first, ...wave1, ...wave2]);
    expect(results.every((r) => r.succeeded)).toBe(true);
    expect(sent).toEqual(sizes);
    expect(await store.count("m/")).toBe(10);
    expect(await store.count("n/")).toBe(10);
  });

  it("isolates a failing compare: only its submission fails, the others commit", async () => {
    await store.put("taken", Buffer.from("x"));
    const g = new TxnGroup(store);
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => (i === 4 ? g.submit([absent("taken")], [put("taken", "overwritten"), put("bad/extra")]) : g.submit([absent(`ok/${i}`)], [put(`ok/${i}`)]))),
    );
    expect(results.map((r) => r.succeeded)).toEqual([true, true, true, true, false, true, true, true, true, true]);
    expect((await store.get("taken"))?.value.toString()).toBe("x");
    expect(await store.get("bad/extra")).toBeUndefined();
    expect(await store.count("ok/")).toBe(9);
    expect(g.stats().split).toBe(1);
  });

  it("never merges two submissions that share a key: the later sees the earlier's write", async () => {
    const c = counting(store);
    const g = new TxnGroup(c.store);
    const [a, b, dupA, dupB] = await Promise.all([
      g.submit([], [put("shared")]),
      g.submit([absent("shared")], [put("other")]),
      g.submit([absent("rid")], [put("rid", "first")]),
      g.submit([absent("rid")], [put("rid", "second")]),
    ]);
    expect(a.succeeded).toBe(true);
    expect(b.succeeded).toBe(false);
    expect(await store.get("other")).toBeUndefined();
    expect([dupA.succeeded, dupB.succeeded]).toEqual([true, false]);
    expect((await store.get("rid"))?.value.toString()).toBe("first");
    // Merged: `shared`'s put with `rid`'s first; then the two that conflicted, together.
    expect(c.txns[0]).toEqual({ compares: 1, ops: 2 });
  });

  it("holds a submission back while a txn touching its keys is in flight, even with room for another", async () => {
    const { sent, release, held } = gated();
    const g = new TxnGroup(held, { maxInFlight: 4 });
    const a = g.submit([], [put("k")]);
    await tick();
    const b = g.submit([absent("k")], [put("k2")]);
    const other = g.submit([], [put("free")]);
    await tick();
    expect(sent).toEqual([1, 1]);
    release();
    expect(await a).toMatchObject({ succeeded: true });
    expect(await b).toMatchObject({ succeeded: false });
    expect(await other).toMatchObject({ succeeded: true });
    expect(sent).toEqual([1, 1, 1]);
    expect(await store.get("k2")).toBeUndefined();
  });

  it("keeps a merged txn within maxOps and maxBytes; a larger submission runs alone", async () => {
    const c = counting(store);
    const g = new TxnGroup(c.store, { maxOps: 6, maxBytes: 200 });
    const three = (i: number): Op[] => [put(`t/${i}/a`), put(`t/${i}/b`), put(`t/${i}/c`)];
    const big: Op[] = Array.from({ length: 8 }, (_, i) => put(`big/${i}`));
    const heavy = put("heavy", "h".repeat(190));
    const res = await Promise.all([...Array.from({ length: 7 }, (_, i) => g.submit([], three(i))), g.submit([], big), g.submit([], [heavy]), g.submit([], [put("light")])]);
    expect(res.every((r) => r.succeeded)).toBe(true);
    for (const t of c.txns) if (t.ops > 6) expect(t).toEqual({ compares: 0, ops: 8 });
    expect(c.txns.filter((t) => t.ops === 6).length).toBeGreaterThan(0);
    // 195 bytes with its key: nothing else fits beside it under 200.
    expect(c.keys.find((k) => k.includes("heavy"))).toEqual(["heavy"]);
    expect(await store.count("t/")).toBe(21);
    expect(await store.count("big/")).toBe(8);
  });

  it("fails every member of a group whose store txn throws", async () => {
    const c = counting(store);
    const g = new TxnGroup(c.store);
    await store.close();
    const outcomes = await Promise.all(Array.from({ length: 5 }, (_, i) => g.submit([absent(`e/${i}`)], [put(`e/${i}`)]).catch((e: unknown) => e)));
    expect(c.txns).toHaveLength(1);
    for (const o of outcomes) expect(o).toBe(outcomes[0]);
    expect(outcomes[0]).toBeInstanceOf(Error);
  });

  it("refuses a submission's bad input alone, before it is merged", async () => {
    const g = new TxnGroup(store);
    const [bad, good] = await Promise.all([g.submit([], [put("d"), { type: "delete", key: "d" }]).catch((e: unknown) => e), g.submit([], [put("fine")])]);
    expect(bad).toBeInstanceOf(HsmError);
    expect((bad as HsmError).code).toBe(Code.InvalidArgument);
    expect(good).toMatchObject({ succeeded: true });
    expect(() => new TxnGroup(store, { maxOps: 0 })).toThrow(RangeError);
  });
});
