/**
 * The etcd state store against real etcd members (Debian's etcd-server): the same contract the
 * embedded store passes (test/unit/store.test.ts), then what only a cluster has: several nodes on one
 * prefix, prefixes isolating clusters, compaction while a node is behind, and losing members.
 */
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { StoreCompactedError, type WatchEvent } from "../../src/store";
import { openEtcdStore, type EtcdStore, type EtcdStoreOptions } from "../../src/store/etcd";
import { freePort, startEtcdCluster, startTcpProxy, type EtcdCluster, type TcpProxy } from "../helpers/etcd";
import { storeContract } from "../helpers/store-contract";

const b = (s: string) => Buffer.from(s);
const tick = () => new Promise((r) => setImmediate(r));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until cond holds; the bound only keeps a broken build from hanging, it is not a latency check. */
async function eventually(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting until ${what}`);
}

let cluster: EtcdCluster;
const open: EtcdStore[] = [];
const logs: string[] = [];
let seq = 0;
const newPrefix = () => `hsmd/t${++seq}-${Math.random().toString(36).slice(2, 8)}/`;

async function openStore(prefix: string, opts: Partial<EtcdStoreOptions> = {}): Promise<EtcdStore> {
  const s = await openEtcdStore({ endpoints: cluster.endpoints, prefix, log: (m) => logs.push(m), ...opts });
  open.push(s);
  return s;
}

function collect(s: EtcdStore, prefix: string, from: number) {
  const events: WatchEvent[] = [];
  const stop = s.watch(prefix, from, (e) => events.push(e));
  return { events, stop };
}

/** The state a subscriber builds from its events. */
function fold(events: WatchEvent[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of events) {
    if (e.type === "put") m.set(e.key, e.value!.toString());
    else m.delete(e.key);
  }
  return m;
}

async function snapshot(s: EtcdStore, prefix = ""): Promise<Map<string, string>> {
  return new Map((await s.list(prefix)).map((e) => [e.key, e.value.toString()]));
}

function sorted(m: Map<string, string>): Map<string, string> {
  return new Map([...m].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
}

function expectOrdered(events: WatchEvent[]): void {
  for (let i = 1; i < events.length; i++) expect(events[i]!.revision).toBeGreaterThanOrEqual(events[i - 1]!.revision);
}

beforeAll(async () => {
  cluster = await startEtcdCluster(1);
});
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
});
afterAll(async () => {
  await cluster?.cleanup();
});

// The StateStore contract, as the embedded store passes it too (test/unit/store.test.ts).
storeContract<EtcdStore>({
  name: "etcd store",
  open: () => openStore(newPrefix()),
  reopen: (s) => openStore(s.prefix),
  until: eventually,
  serial: false,
  manyKeys: 1500,
});

// The same contract with the prefixes it uses most left out of the mirror (read from etcd instead).
storeContract<EtcdStore>({
  name: "etcd store (keys/ and k/ unmirrored)",
  open: () => openStore(newPrefix(), { unmirrored: ["keys/", "k/"] }),
  reopen: (s) => openStore(s.prefix, { unmirrored: ["keys/", "k/"] }),
  until: eventually,
  serial: false,
  manyKeys: 1500,
});

describe("etcd store: reads and writes (one member)", () => {
  it("reads its own write as soon as the txn resolves", async () => {
    // Hardly any wait for the watch: reads are served from the own-write overlay until it catches up.
    const s = await openStore(newPrefix(), { ownWriteWaitMs: 1 });
    for (let i = 0; i < 20; i++) {
      const rev = await s.put(`k${i % 3}`, b(String(i)));
      expect(await s.get(`k${i % 3}`)).toMatchObject({ value: b(String(i)), modRevision: rev });
      const r = await s.txn([{ key: `k${i % 3}`, op: "modRevision", equals: rev }], [{ type: "delete", key: `k${i % 3}` }]);
      expect(r.succeeded).toBe(true);
      expect(await s.get(`k${i % 3}`)).toBeUndefined();
      expect(await s.count("")).toBe((await s.list("")).length);
    }
    await eventually(() => s.stats().pendingOwnWrites === 0, "the watch confirms every own write");
  });
});

describe("etcd store: transactions", () => {
  it("etcd's own limit on ops per txn comes back as INVALID_ARGUMENT and writes nothing", async () => {
    const s = await openStore(newPrefix());
    const before = s.revision();
    // etcd's own limit (--max-txn-ops, 128 by default) comes back as INVALID_ARGUMENT too.
    const many = Array.from({ length: 200 }, (_, i) => ({ type: "put" as const, key: `m${i}`, value: b("v") }));
    await expect(s.txn([], many)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(s.revision()).toBe(before);
    expect(await s.count("")).toBe(0);
  });
});

describe("etcd store: watch", () => {
  it("from 0 replays the current state, from the current revision only live events; in order under load", async () => {
    const prefix = newPrefix();
    const writer = await openStore(prefix);
    await writer.put("a", b("1"));
    await writer.put("gone", b("x"));
    await writer.delete("gone");
    const s = await openStore(prefix);
    const all = collect(s, "", 0);
    const live = collect(s, "", s.revision());
    await tick();
    expect(all.events.map((e) => e.key)).toEqual(["a"]);
    const revs = await Promise.all(Array.from({ length: 50 }, (_, i) => s.put(`k${i}`, b(String(i)))));
    const last = Math.max(...revs);
    await eventually(() => live.events.length === 50, "50 live events");
    expect(live.events.map((e) => e.revision)).toEqual([...revs].sort((x, y) => x - y));
    expect(all.events.slice(1)).toEqual(live.events);
    expect(s.revision()).toBe(last);
    // Older than what this node has seen (and not 0): replayed from etcd's own history, then live.
    const old = collect(s, "", 1);
    await eventually(() => old.events.length === 53, "the replay from etcd's history");
    expect(old.events.slice(0, 3).map((e) => [e.type, e.key])).toEqual([
      ["put", "a"],
      ["put", "gone"],
      ["delete", "gone"],
    ]);
    expect(old.events.slice(3)).toEqual(live.events);
    expect(s.stats().etcdReplays).toBe(1);
    await s.put("z", b("z"));
    await eventually(() => old.events.at(-1)?.key === "z" && live.events.at(-1)?.key === "z", "live after the replay");
    expect(old.events).toHaveLength(54);
  });

  it("two nodes on one prefix see each other's writes through the watch, in order", async () => {
    const prefix = newPrefix();
    const a = await openStore(prefix);
    const c = await openStore(prefix);
    const wa = collect(a, "", a.revision());
    const wc = collect(c, "", c.revision());
    const writes: Promise<number>[] = [];
    for (let i = 0; i < 30; i++) {
      writes.push((i % 2 ? a : c).put(`k${i % 7}`, b(`v${i}`)));
      if (i % 5 === 4) writes.push((i % 2 ? c : a).delete(`k${i % 7}`));
    }
    // Each node's mirror learns the other's writes through its watch: compare once both have seen the last one.
    const top = Math.max(...(await Promise.all(writes)));
    await eventually(() => a.revision() >= top && c.revision() >= top, "both mirrors at the last write's revision");
    const final = await snapshot(a);
    expect(JSON.stringify([...(await snapshot(c))])).toBe(JSON.stringify([...final]));
    await eventually(() => a.revision() === c.revision(), "both mirrors at one revision");
    expect(wa.events).toEqual(wc.events);
    expectOrdered(wa.events);
    expect(fold(wa.events)).toEqual(final);
    expect(await c.get("k1")).toEqual(await a.get("k1"));
  });

  it("concurrent compare-and-put from two nodes on one key: exactly one wins each round", async () => {
    const prefix = newPrefix();
    const a = await openStore(prefix);
    const c = await openStore(prefix);
    const created = await Promise.all([
      a.txn([{ key: "lock", op: "absent" }], [{ type: "put", key: "lock", value: b("a") }]),
      c.txn([{ key: "lock", op: "absent" }], [{ type: "put", key: "lock", value: b("c") }]),
    ]);
    expect(created.filter((r) => r.succeeded)).toHaveLength(1);
    // a reads its mirror: when c won the create, a sees the key once the watch brings it.
    await eventually(async () => (await a.get("lock")) !== undefined, "node a has the key");
    for (let round = 0; round < 10; round++) {
      const m = (await a.get("lock"))!.modRevision;
      await eventually(async () => (await c.get("lock"))?.modRevision === m, "the other node has the key");
      const [ra, rc] = await Promise.all([
        a.txn([{ key: "lock", op: "modRevision", equals: m }], [{ type: "put", key: "lock", value: b(`a${round}`) }]),
        c.txn([{ key: "lock", op: "modRevision", equals: m }], [{ type: "put", key: "lock", value: b(`c${round}`) }]),
      ]);
      expect([ra.succeeded, rc.succeeded].filter(Boolean)).toHaveLength(1);
      const winner = ra.succeeded ? `a${round}` : `c${round}`;
      expect((await (ra.succeeded ? a : c).get("lock"))!.value.toString()).toBe(winner);
      await eventually(async () => (await (ra.succeeded ? c : a).get("lock"))?.value.toString() === winner, "the loser sees the winner");
    }
  });

  it("prefixes isolate two clusters on one etcd", async () => {
    const p1 = newPrefix();
    const p2 = newPrefix();
    const one = await openStore(p1);
    const two = await openStore(p2);
    const w2 = collect(two, "", two.revision());
    await one.put("shared-name", b("one"));
    await two.put("shared-name", b("two"));
    await one.put("only-one", b("1"));
    expect((await one.get("shared-name"))!.value.toString()).toBe("one");
    expect((await two.get("shared-name"))!.value.toString()).toBe("two");
    expect(await two.get("only-one")).toBeUndefined();
    expect(await two.count("")).toBe(1);
    expect(await one.count("")).toBe(2);
    await eventually(() => two.revision() > 0 && w2.events.length === 1, "two's own event");
    await one.delete("shared-name");
    await eventually(async () => (await two.get("shared-name")) !== undefined && one.revision() > two.revision(), "one moves on alone");
    expect(w2.events.map((e) => e.key)).toEqual(["shared-name"]);
    // What etcd holds: the cluster prefix prepended to each key.
    const raw = new Etcd3({ hosts: cluster.endpoints });
    try {
      expect(await raw.get(`${p2}shared-name`).string()).toBe("two");
      expect(await raw.get(`${p1}shared-name`).string()).toBeNull();
      expect(await raw.getAll().prefix(p1).keys()).toEqual([`${p1}only-one`]);
    } finally {
      raw.close();
    }
  });

  it("a node cut off while etcd compacts its history resyncs from a full read and converges", async () => {
    const prefix = newPrefix();
    const proxy: TcpProxy = await startTcpProxy(cluster.endpoints[0]!);
    const raw = new Etcd3({ hosts: cluster.endpoints });
    try {
      const behind = await openStore(prefix, { endpoints: [proxy.url], requestTimeoutMs: 1000, healthTimeoutMs: 500 });
      const writer = await openStore(prefix);
      const seen = collect(behind, "", behind.revision());
      for (let i = 0; i < 5; i++) await writer.put(`k${i}`, b(`v${i}`));
      await eventually(() => seen.events.length === 5, "the node follows before the cut");

      proxy.pause();
      const cutAt = behind.revision();
      await writer.put("k0", b("changed"));
      await writer.delete("k1");
      await writer.put("new", b("n"));
      await writer.put("transient", b("t"));
      await writer.delete("transient");
      const last = await writer.put("k4", b("changed too"));
      await raw.kv.compact({ revision: last, physical: true });

      // Cut off, the node still answers reads from its mirror, and refuses writes.
      expect((await behind.get("k1"))!.value.toString()).toBe("v1");
      expect(await behind.count("")).toBe(5);
      expect(behind.revision()).toBe(cutAt);
      const err = await behind.put("x", b("x")).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "UNAVAILABLE" });
      expect((err as Error).message).toMatch(/^state store unavailable: no etcd quorum reachable \(/);
      expect(await behind.healthy()).toBe(false);

      proxy.resume();
      const want = await snapshot(writer);
      await eventually(async () => JSON.stringify([...(await snapshot(behind))]) === JSON.stringify([...want]), "the mirror converges");
      expect(behind.stats().resyncs).toBeGreaterThanOrEqual(1);
      expect(behind.revision()).toBeGreaterThanOrEqual(last);
      expect(logs.some((m) => /compacted/.test(m))).toBe(true);
      // The subscriber converged too: no change was lost for the final state, and events stayed in order.
      expect(fold(seen.events)).toEqual(want);
      expectOrdered(seen.events);
      expect(seen.events.some((e) => e.key === "transient")).toBe(false);
      // And it follows live again.
      await writer.put("after", b("a"));
      await eventually(() => seen.events.at(-1)?.key === "after", "live events after the resync");
      expect(await behind.healthy()).toBe(true);
    } finally {
      raw.close();
      await proxy.close();
    }
  });

  it("hasHistorySince: true before etcd compacts past a revision, false after, and false for a future revision", async () => {
    const s = await openStore(newPrefix());
    const raw = new Etcd3({ hosts: cluster.endpoints });
    try {
      const r1 = await s.put("a", b("1"));
      const r2 = await s.put("a", b("2"));
      await s.put("b", b("x"));
      expect(await s.hasHistorySince(r1)).toBe(true);
      expect(await s.hasHistorySince(r2)).toBe(true);
      expect(await s.hasHistorySince(r2 + 1_000_000)).toBe(false);
      await raw.kv.compact({ revision: r2, physical: true });
      expect(await s.hasHistorySince(r1)).toBe(false);
      // Known compacted by a node whose own log starts later: a watch from there is refused at once.
      const t = await openStore(s.prefix);
      expect(await t.hasHistorySince(r1)).toBe(false);
      expect(() => t.watch("", r1, () => undefined)).toThrow(StoreCompactedError);
      expect(await s.hasHistorySince(0)).toBe(false);
      expect(await s.hasHistorySince(r2)).toBe(true);
      expect(await s.hasHistorySince(s.revision())).toBe(true);
      await expect(s.hasHistorySince(-1)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    } finally {
      raw.close();
    }
  });

  it("open fails with UNAVAILABLE when no member answers", async () => {
    const port = await freePort();
    const err = await openEtcdStore({ endpoints: [`http://127.0.0.1:${port}`], prefix: "hsmd/none/", dialTimeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "UNAVAILABLE" });
    expect((err as Error).message).toMatch(/^state store unavailable: no etcd quorum reachable \(.*127\.0\.0\.1:\d+/);
  });
});

describe("etcd store: a three-member cluster losing members", () => {
  let three: EtcdCluster;
  beforeAll(async () => {
    three = await startEtcdCluster(3);
  });
  afterAll(async () => {
    await three?.cleanup();
  });

  /** Index of the member that is not the leader (status through a client of each member). */
  async function aFollower(except: number[] = []): Promise<number> {
    for (let i = 0; i < three.members.length; i++) {
      if (except.includes(i)) continue;
      const c = new Etcd3({ hosts: three.members[i]!.clientUrl });
      try {
        const st = await c.maintenance.status();
        if (st.leader !== st.header.member_id) return i;
      } finally {
        c.close();
      }
    }
    throw new Error("no follower found");
  }

  it("keeps writing with one member down, answers UNAVAILABLE without quorum while still serving reads, and recovers", async () => {
    const prefix = newPrefix();
    const opts = { endpoints: three.endpoints, requestTimeoutMs: 1500, healthTimeoutMs: 1000 };
    const a = await openEtcdStore({ prefix, log: (m) => logs.push(m), ...opts });
    open.push(a);
    const c = await openEtcdStore({ prefix, log: (m) => logs.push(m), ...opts });
    open.push(c);
    const seen = collect(a, "", a.revision());
    await a.put("before", b("1"));
    await c.put("from-c", b("c"));
    await eventually(async () => (await a.get("from-c")) !== undefined, "a sees c's write");

    // One of three down: still a quorum.
    const first = await aFollower();
    await three.members[first]!.stop();
    // A read first: a node whose preferred member just went away moves to another one without
    // spending a write on it (a write in flight when its member dies has an unknown outcome).
    await eventually(() => a.healthy(), "a reaches the quorum");
    await eventually(() => c.healthy(), "c reaches the quorum");
    await a.put("one-down", b("1"));
    await c.put("one-down-c", b("2"));
    await eventually(async () => (await a.get("one-down-c")) !== undefined && (await c.get("one-down")) !== undefined, "both see both");
    expect(await a.healthy()).toBe(true);

    // Two of three down: no quorum. Writes fail with a clear UNAVAILABLE, reads answer from the mirror.
    const second = three.members.findIndex((_, i) => i !== first);
    await three.members[second]!.stop();
    const err = await a.put("no-quorum", b("x")).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "UNAVAILABLE", transient: true });
    expect((err as Error).message).toMatch(/^state store unavailable: no etcd quorum reachable \(/);
    await expect(c.txn([{ key: "k", op: "absent" }], [{ type: "put", key: "k", value: b("v") }])).rejects.toMatchObject({
      code: "UNAVAILABLE",
    });
    expect(await a.healthy()).toBe(false);
    expect((await a.get("one-down-c"))!.value.toString()).toBe("2");
    expect((await a.list("")).map((e) => e.key)).toEqual(expect.arrayContaining(["before", "from-c", "one-down", "one-down-c"]));
    expect(await a.count("one-down")).toBe(2);

    // Back to three: writes work again, and each node catches up with what the other wrote.
    await three.members[first]!.start();
    await three.members[second]!.start();
    await eventually(() => a.healthy(), "a is healthy again");
    await eventually(() => c.healthy(), "c is healthy again");
    await a.put("after", b("a"));
    for (let i = 0; i < 5; i++) await c.put(`after-c${i}`, b(String(i)));
    await eventually(async () => (await a.count("after-c")) === 5 && (await c.get("after")) !== undefined, "both caught up");
    const want = await snapshot(c);
    await eventually(async () => JSON.stringify([...(await snapshot(a))]) === JSON.stringify([...want]), "the mirrors agree");
    // The write that got UNAVAILABLE may or may not have been applied; the subscriber agrees with the mirror either way.
    await eventually(() => JSON.stringify([...sorted(fold(seen.events))]) === JSON.stringify([...want]), "the subscriber converges");
    expectOrdered(seen.events);
  });
});
