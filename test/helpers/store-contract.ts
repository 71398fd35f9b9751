/**
 * The StateStore contract (src/store/types.ts) as one suite, run against every store: the embedded one
 * (test/unit/store.test.ts) and etcd (test/integration/etcd-store.test.ts). Revisions are checked
 * relative to the store's own first write, since an etcd revision is global to the etcd cluster; what
 * only one store promises (the embedded store's dense revisions from 1, its arrival-order evaluation)
 * is asked of a store through its harness. Store-specific behaviour (the embedded log's durability,
 * etcd failover) stays in each store's own file.
 */
import { describe, expect, it } from "vitest";
import type { StateStore, WatchEvent } from "../../src/store";

/** How the contract suite drives one kind of store. */
export interface StoreHarness<S extends StateStore = StateStore> {
  /** names the describe blocks: "embedded store", "etcd store" */
  name: string;
  /** a fresh, empty store; the caller's file closes every store it opened after each test */
  open(): Promise<S>;
  /**
   * A store over the same data as `s`, as another reader would see it: the embedded store closes `s`
   * and opens its directory again, etcd opens a second node on the same prefix.
   */
  reopen(s: S): Promise<S>;
  /**
   * Waits until `cond` holds: the embedded store answers within one macrotask tick, so its harness
   * checks once after one; etcd's mirror follows a watch stream, so its harness polls.
   */
  until(cond: () => boolean | Promise<boolean>, what: string): Promise<void>;
  /** the revision of a fresh store, where the store defines one (the embedded store: 0) */
  freshRevision?: number;
  /** one client's txns are evaluated in arrival order (the embedded store: a single writer) */
  serial: boolean;
  /** how many keys the pagination test writes */
  manyKeys: number;
}

const b = (s: string) => Buffer.from(s);
const tick = () => new Promise((r) => setImmediate(r));

function collect(s: StateStore, prefix: string, from: number) {
  const events: WatchEvent[] = [];
  const stop = s.watch(prefix, from, (e) => events.push(e));
  return { events, stop };
}

/** Registers the contract's describe/it blocks for one store. */
export function storeContract<S extends StateStore>(h: StoreHarness<S>): void {
  const settle = (s: S, rev: number, what: string) => h.until(() => s.revision() === rev, what);

  describe(`${h.name}: contract: reads and writes`, () => {
    it("put, get, delete with revisions, versions and create revisions", async () => {
      const s = await h.open();
      if (h.freshRevision !== undefined) expect(s.revision()).toBe(h.freshRevision);
      const r1 = await s.put("a", b("1"));
      if (h.freshRevision !== undefined) expect(r1).toBe(h.freshRevision + 1);
      expect(await s.put("a", b("2"))).toBe(r1 + 1);
      expect(await s.put("b", b("x"))).toBe(r1 + 2);
      expect(await s.get("a")).toEqual({ key: "a", value: b("2"), modRevision: r1 + 1, createRevision: r1, version: 2 });
      expect(await s.delete("a")).toBe(r1 + 3);
      expect(await s.get("a")).toBeUndefined();
      // Deleting an absent key changes nothing and makes no revision.
      expect(await s.delete("a")).toBe(r1 + 3);
      await settle(s, r1 + 3, "the store's revision reaches the last write");
      expect(await s.put("a", b("3"))).toBe(r1 + 4);
      expect(await s.get("a")).toMatchObject({ createRevision: r1 + 4, version: 1 });
    });

    it("returns copies: mutating a value read or written does not change the store", async () => {
      const s = await h.open();
      const v = b("abc");
      const p = s.put("k", v);
      v[0] = 0x7a;
      await p;
      const got = (await s.get("k"))!;
      expect(got.value.toString()).toBe("abc");
      got.value[0] = 0x7a;
      expect((await s.get("k"))!.value.toString()).toBe("abc");
    });

    it("lists by prefix in key order with pagination, and counts", async () => {
      const s = await h.open();
      for (const k of ["keys/3", "keys/1", "users/a", "keys/2", "key", "keys/10", "keyz"]) await s.put(k, b(k));
      expect((await s.list("keys/")).map((e) => e.key)).toEqual(["keys/1", "keys/10", "keys/2", "keys/3"]);
      expect((await s.list("keys/", { limit: 2 })).map((e) => e.key)).toEqual(["keys/1", "keys/10"]);
      expect((await s.list("keys/", { startAfter: "keys/10", limit: 2 })).map((e) => e.key)).toEqual(["keys/2", "keys/3"]);
      expect(await s.list("keys/", { startAfter: "keys/3" })).toEqual([]);
      expect((await s.list("keys/", { startAfter: "a" })).length).toBe(4);
      expect((await s.list("")).length).toBe(7);
      expect(await s.count("keys/")).toBe(4);
      expect(await s.count("key")).toBe(6);
      expect(await s.count("nothing/")).toBe(0);
      expect(await s.count("")).toBe(7);
    });

    it("pages through many keys across chunk boundaries, and another reader of the same data reads the same", async () => {
      const s = await h.open();
      const n = h.manyKeys;
      const keys = Array.from({ length: n }, (_, i) => `k/${String((i * 7919) % n).padStart(5, "0")}`);
      await Promise.all(keys.map((k) => s.put(k, b(k))));
      for (let i = 0; i < n; i += 3) await s.delete(keys[i]!);
      const expected = keys.filter((_, i) => i % 3 !== 0).sort();
      const page = async (st: S) => {
        const seen: string[] = [];
        let after: string | undefined;
        for (;;) {
          const p = await st.list("k/", { startAfter: after, limit: 97 });
          if (p.length === 0) break;
          seen.push(...p.map((e) => e.key));
          after = p[p.length - 1]!.key;
        }
        return seen;
      };
      expect(await page(s)).toEqual(expected);
      expect(await s.count("k/")).toBe(expected.length);
      const all = await s.list("");
      // etcd: opening reads the prefix in pages of 1000 keys; embedded: the log is replayed.
      const other = await h.reopen(s);
      expect(await page(other)).toEqual(expected);
      expect(await other.list("")).toEqual(all);
    });

    it("readers never see a write before it is acknowledged", async () => {
      const s = await h.open();
      const before = s.revision();
      const p = s.put("k", b("v"));
      expect(await s.get("k")).toBeUndefined();
      expect(s.revision()).toBe(before);
      await p;
      expect(await s.get("k")).toBeDefined();
    });

    it("close rejects later writes and watches and reports unhealthy", async () => {
      const s = await h.open();
      await s.put("k", b("v"));
      await s.close();
      await expect(s.put("k", b("w"))).rejects.toMatchObject({ code: "UNAVAILABLE", message: "state store is closed" });
      expect(() => s.watch("", 0, () => undefined)).toThrow(/closed/);
      expect(await s.healthy()).toBe(false);
    });
  });

  describe(`${h.name}: contract: transactions`, () => {
    it("absent / present / modRevision compares", async () => {
      const s = await h.open();
      const create = (k: string, v: string) => s.txn([{ key: k, op: "absent" }], [{ type: "put", key: k, value: b(v) }]);
      const first = await create("k", "1");
      expect(first.succeeded).toBe(true);
      const r = first.revision;
      if (h.freshRevision !== undefined) expect(r).toBe(h.freshRevision + 1);
      expect(await create("k", "2")).toEqual({ succeeded: false, revision: r });
      expect((await s.get("k"))!.value.toString()).toBe("1");

      const upd = await s.txn([{ key: "k", op: "modRevision", equals: r }], [{ type: "put", key: "k", value: b("3") }]);
      expect(upd).toEqual({ succeeded: true, revision: r + 1 });
      const stale = await s.txn([{ key: "k", op: "modRevision", equals: r }], [{ type: "put", key: "k", value: b("4") }]);
      expect(stale.succeeded).toBe(false);
      expect((await s.get("k"))!.value.toString()).toBe("3");
      // modRevision 0 means "absent", as in etcd.
      expect((await s.txn([{ key: "nope", op: "modRevision", equals: 0 }], [])).succeeded).toBe(true);

      expect((await s.txn([{ key: "nope", op: "present" }], [{ type: "delete", key: "k" }])).succeeded).toBe(false);
      expect(await s.get("k")).toBeDefined();
      const del = await s.txn([{ key: "k", op: "present" }], [{ type: "delete", key: "k" }]);
      expect(del).toEqual({ succeeded: true, revision: r + 2 });
      await settle(s, r + 2, "the store's revision reaches the delete");
    });

    it("a failed compare changes nothing, a successful txn applies all ops as one revision", async () => {
      const s = await h.open();
      const w = collect(s, "", s.revision());
      const r0 = await s.put("a", b("a0"));
      const r = await s.txn(
        [
          { key: "a", op: "present" },
          { key: "b", op: "present" },
        ],
        [
          { type: "put", key: "a", value: b("a1") },
          { type: "put", key: "c", value: b("c1") },
        ],
      );
      expect(r).toEqual({ succeeded: false, revision: r0 });
      await settle(s, r0, "the store's revision is that of the last write");
      expect((await s.get("a"))!.value.toString()).toBe("a0");
      expect(await s.get("c")).toBeUndefined();

      const ok = await s.txn(
        [
          { key: "a", op: "present" },
          { key: "b", op: "absent" },
        ],
        [
          { type: "put", key: "a", value: b("a1") },
          { type: "put", key: "c", value: b("c1") },
          { type: "delete", key: "zz" },
        ],
      );
      expect(ok).toEqual({ succeeded: true, revision: r0 + 1 });
      expect((await s.get("a"))!.modRevision).toBe(r0 + 1);
      expect((await s.get("c"))!.modRevision).toBe(r0 + 1);
      await h.until(() => w.events.length === 3, "the watcher sees both ops");
      expect(w.events.map((e) => [e.type, e.key, e.revision])).toEqual([
        ["put", "a", r0],
        ["put", "a", r0 + 1],
        ["put", "c", r0 + 1],
      ]);
    });

    it(`concurrent creates of the same key: exactly one wins${h.serial ? ", evaluated in arrival order" : ""}`, async () => {
      const s = await h.open();
      const rs = await Promise.all(Array.from({ length: 20 }, (_, i) => s.txn([{ key: "one", op: "absent" }], [{ type: "put", key: "one", value: b(String(i)) }])));
      const winners = rs.map((r, i) => (r.succeeded ? i : -1)).filter((i) => i >= 0);
      expect(winners).toHaveLength(1);
      expect((await s.get("one"))!.value.toString()).toBe(String(winners[0]));
      if (h.serial) {
        expect(winners[0]).toBe(0);
        expect(s.revision()).toBe(rs[0]!.revision);
      }
    });

    it("rejects bad input with INVALID_ARGUMENT and writes nothing", async () => {
      const s = await h.open();
      const before = s.revision();
      await expect(s.put("", b("x"))).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
      await expect(s.put("k", "str" as unknown as Buffer)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
      await expect(
        s.txn(
          [],
          [
            { type: "put", key: "k", value: b("1") },
            { type: "delete", key: "k" },
          ],
        ),
      ).rejects.toMatchObject({
        code: "INVALID_ARGUMENT",
      });
      await expect(s.txn([{ key: "k", op: "bogus" } as never], [])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
      expect(s.revision()).toBe(before);
      expect(await s.count("")).toBe(0);
    });

    it(`revisions are monotonic and dense for one writer${h.serial ? " in arrival order" : ""}, and the store ends at the last one`, async () => {
      const s = await h.open();
      const start = s.revision();
      const revs = await Promise.all(Array.from({ length: 100 }, (_, i) => s.put(`k${i % 10}`, b(String(i)))));
      expect([...revs].sort((x, y) => x - y)).toEqual(Array.from({ length: 100 }, (_, i) => start + i + 1));
      if (h.serial) expect(revs).toEqual([...revs].sort((x, y) => x - y)); // arrival order
      await settle(s, start + 100, "the store's revision reaches the last write");
      expect(await s.count("")).toBe(10);
    });
  });

  describe(`${h.name}: contract: watch`, () => {
    it("replays events after a past revision, then streams live ones, filtered by prefix", async () => {
      const s = await h.open();
      const r1 = await s.put("keys/a", b("1"));
      await s.put("users/x", b("u"));
      await s.put("keys/b", b("2"));
      await s.delete("keys/a");
      await settle(s, r1 + 3, "the store has every write");
      const w = collect(s, "keys/", r1);
      await tick(); // the replay comes from memory, on the next microtask: no waiting for a stream
      expect(w.events).toEqual([
        { type: "put", key: "keys/b", value: b("2"), revision: r1 + 2 },
        { type: "delete", key: "keys/a", revision: r1 + 3 },
      ]);
      await s.txn(
        [],
        [
          { type: "put", key: "keys/c", value: b("3") },
          { type: "put", key: "other", value: b("o") },
        ],
      );
      await h.until(() => w.events.length === 3, "the live event arrives");
      expect(w.events.at(-1)).toEqual({ type: "put", key: "keys/c", value: b("3"), revision: r1 + 4 });
      w.stop();
      await s.put("keys/d", b("4"));
      await settle(s, r1 + 5, "the store has the last write");
      await tick();
      expect(w.events).toHaveLength(3);
    });

    it("unsubscribing inside a callback stops even the events of the same txn already queued", async () => {
      const s = await h.open();
      const got: WatchEvent[] = [];
      const stop = s.watch("", s.revision(), (e) => {
        got.push(e);
        stop();
      });
      const r = await s.txn(
        [],
        ["a", "b", "c"].map((k) => ({ type: "put" as const, key: k, value: b(k) })),
      );
      expect(r.succeeded).toBe(true);
      await settle(s, r.revision, "the store has the txn");
      await tick();
      expect(got.map((e) => e.key)).toEqual(["a"]);
    });

    it("a callback that throws does not stop delivery to it or to others; each gets its own copy of a value", async () => {
      const s = await h.open();
      const thrower: WatchEvent[] = [];
      const other: WatchEvent[] = [];
      s.watch("", s.revision(), (e) => {
        thrower.push(e);
        e.value![0] = 0x7a; // a subscriber that changes what it was given changes nothing for anyone else
        throw new Error("a subscriber's bug");
      });
      s.watch("", s.revision(), (e) => other.push(e));
      const r1 = await s.put("k1", b("v1"));
      const r2 = await s.put("k2", b("v2"));
      await h.until(() => thrower.length === 2 && other.length === 2, "both subscribers get both events");
      expect(other).toEqual([
        { type: "put", key: "k1", value: b("v1"), revision: r1 },
        { type: "put", key: "k2", value: b("v2"), revision: r2 },
      ]);
      expect((await s.get("k1"))!.value).toEqual(b("v1"));
      const late = collect(s, "", r1 - 1);
      await tick();
      expect(late.events.map((e) => e.value)).toEqual([b("v1"), b("v2")]);
    });
  });
}
