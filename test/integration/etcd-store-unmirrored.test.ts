/**
 * The etcd store's unmirrored prefixes against a real etcd member: the mirror holds nothing under
 * them (neither from the read at open nor from the watch), reads under them go to etcd (and so do not
 * answer offline), writes and watches under them behave as under mirrored ones, a watch from 0 reads
 * the state from etcd then follows live without a gap or a duplicate, and a compaction while a node is
 * behind still tells it what changed there.
 */
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { WatchEvent } from "../../src/store";
import { openEtcdStore, type EtcdStore, type EtcdStoreOptions } from "../../src/store/etcd";
import { startEtcdCluster, startTcpProxy, type EtcdCluster } from "../helpers/etcd";

const b = (s: string) => Buffer.from(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const UNMIRRORED = ["keys/", "requests/"];

/** Polls until cond holds; the bound only keeps a broken build from hanging, it is not a latency check. */
async function eventually(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const until = Date.now() + 30_000;
  while (Date.now() < until) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting until ${what}`);
}

let cluster: EtcdCluster;
let raw: Etcd3;
const open: EtcdStore[] = [];
const logs: string[] = [];
let seq = 0;
const newPrefix = () => `hsmd/u${++seq}-${Math.random().toString(36).slice(2, 8)}/`;

async function openStore(prefix: string, opts: Partial<EtcdStoreOptions> = {}): Promise<EtcdStore> {
  const s = await openEtcdStore({ endpoints: cluster.endpoints, prefix, log: (m) => logs.push(m), unmirrored: UNMIRRORED, ...opts });
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

beforeAll(async () => {
  cluster = await startEtcdCluster(1);
  raw = new Etcd3({ hosts: cluster.endpoints });
});
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
});
afterAll(async () => {
  raw?.close();
  await cluster?.cleanup();
});

describe("etcd store: unmirrored prefixes", () => {
  it("rejects a bad unmirrored option with INVALID_ARGUMENT", async () => {
    await expect(openStore(newPrefix(), { unmirrored: [""] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(openStore(newPrefix(), { unmirrored: [3 as unknown as string] })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("the mirror holds no unmirrored key; reads, writes and watches under them work as under mirrored ones", async () => {
    const prefix = newPrefix();
    const s = await openStore(prefix);
    const other = await openStore(prefix);
    const seen = collect(other, "keys/", other.revision());
    const r1 = await s.put("keys/a", b("A"));
    await s.put("keys/b", b("B"));
    await s.put("users/u", b("U"));
    await s.put("requests/r", b("R"));
    // Read your own write at once, from etcd.
    expect(await s.get("keys/a")).toEqual({ key: "keys/a", value: b("A"), modRevision: r1, createRevision: r1, version: 1 });
    expect(await other.get("keys/b")).toMatchObject({ value: b("B") });
    const upd = await s.txn([{ key: "keys/a", op: "modRevision", equals: r1 }], [{ type: "put", key: "keys/a", value: b("A2") }]);
    expect(upd.succeeded).toBe(true);
    expect(await s.get("keys/a")).toMatchObject({ value: b("A2"), version: 2, createRevision: r1 });
    expect(s.revision()).toBe(upd.revision);
    await s.delete("keys/b");
    expect(await s.get("keys/b")).toBeUndefined();
    expect((await s.list("")).map((e) => e.key)).toEqual(["keys/a", "requests/r", "users/u"]);
    expect(await s.count("")).toBe(3);
    expect(await s.count("keys/")).toBe(1);
    await eventually(() => s.stats().pendingOwnWrites === 0 && other.revision() === s.revision(), "both nodes follow");
    // Only users/u is held in memory, on either node.
    expect(s.stats().keys).toBe(1);
    expect(other.stats().keys).toBe(1);
    await eventually(() => seen.events.length === 4, "the other node's subscriber gets every keys/ event");
    expect(seen.events.map((e) => [e.type, e.key, e.value?.toString()])).toEqual([
      ["put", "keys/a", "A"],
      ["put", "keys/b", "B"],
      ["put", "keys/a", "A2"],
      ["delete", "keys/b", undefined],
    ]);
    // Replay from the store's own log carries the values too.
    const late = collect(other, "keys/", r1 - 1);
    await eventually(() => late.events.length === 4, "the replay");
    expect(late.events).toEqual(seen.events);
  });

  it("open with 10,000 unmirrored records does not read them into the mirror; listing pages etcd", async () => {
    const prefix = newPrefix();
    const value = Buffer.alloc(1500, 0x61);
    for (let i = 0; i < 10_000; i += 100) {
      const ops = Array.from({ length: 100 }, (_, j) => ({ request_put: { key: Buffer.from(`${prefix}keys/${String(i + j).padStart(5, "0")}`), value } }));
      await raw.kv.txn({ compare: [], success: ops, failure: [] });
    }
    await raw.put(`${prefix}users/u`).value("u");
    const s = await openStore(prefix);
    expect(s.stats().keys).toBe(1);
    expect(await s.count("keys/")).toBe(10_000);
    const page = await s.list("keys/", { startAfter: "keys/04999", limit: 2500 });
    expect(page).toHaveLength(2500);
    expect(page[0]!.key).toBe("keys/05000");
    expect(page.at(-1)!.key).toBe("keys/07499");
    expect(page[0]!.value).toEqual(value);
    expect(await s.list("keys/", { startAfter: "keys/09998" })).toHaveLength(1);
    expect((await s.list("")).length).toBe(10_001);
    // The same store without the option holds them all: what the option saves.
    const full = await openStore(prefix, { unmirrored: [] });
    expect(full.stats().keys).toBe(10_001);
  });

  it("watch from 0 under an unmirrored prefix: the state from etcd, then live, no gap and no duplicate under writes", async () => {
    const prefix = newPrefix();
    const writer = await openStore(prefix);
    for (let i = 0; i < 30; i++) await writer.put(`keys/k${i % 20}`, b(`v${i}`));
    await writer.delete("keys/k0");
    const s = await openStore(prefix);
    const writes = (async () => {
      for (let i = 0; i < 40; i++) {
        if (i % 5 === 4) await writer.delete(`keys/k${i % 20}`);
        else await writer.put(`keys/k${i % 20}`, b(`w${i}`));
      }
    })();
    const all = collect(s, "keys/", 0);
    await writes;
    const last = await writer.put("keys/end", b("e"));
    await eventually(() => all.events.at(-1)?.revision === last, "the subscriber reaches the last write");
    const want = new Map((await writer.list("keys/")).map((e) => [e.key, e.value.toString()]));
    expect(fold(all.events)).toEqual(want);
    // No duplicate: each (key, revision) once.
    const ids = all.events.map((e) => `${e.key}@${e.revision}`);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("watch from before the node opened replays etcd's history under an unmirrored prefix, then live", async () => {
    const prefix = newPrefix();
    const writer = await openStore(prefix);
    const from = writer.revision();
    await writer.put("keys/a", b("1"));
    await writer.put("users/x", b("x"));
    await writer.delete("keys/a");
    await writer.put("keys/b", b("2"));
    const s = await openStore(prefix); // its own log starts here
    expect(await s.hasHistorySince(from)).toBe(true);
    const w = collect(s, "keys/", from);
    await eventually(() => w.events.length === 3, "the replay");
    expect(w.events.map((e) => [e.type, e.key])).toEqual([
      ["put", "keys/a"],
      ["delete", "keys/a"],
      ["put", "keys/b"],
    ]);
    await writer.put("keys/c", b("3"));
    await eventually(() => w.events.length === 4, "the live event");
    expect(w.events[3]).toMatchObject({ type: "put", key: "keys/c" });
  });

  it("watch from a revision etcd compacted without the node knowing: the current state instead, and later such watches are refused", async () => {
    const prefix = newPrefix();
    const writer = await openStore(prefix);
    const from = writer.revision();
    await writer.put("keys/a", b("1"));
    await writer.put("keys/gone", b("g"));
    await writer.delete("keys/gone");
    const last = await writer.put("keys/b", b("2"));
    await raw.kv.compact({ revision: last, physical: true });
    const s = await openStore(prefix);
    const w = collect(s, "keys/", from);
    await eventually(() => w.events.length === 2, "the current state");
    expect(fold(w.events)).toEqual(
      new Map([
        ["keys/a", "1"],
        ["keys/b", "2"],
      ]),
    );
    expect(logs.some((m) => /etcd compacted its history up to revision/.test(m))).toBe(true);
    await writer.put("keys/c", b("3"));
    await eventually(() => w.events.at(-1)?.key === "keys/c", "live after it");
    expect(() => s.watch("keys/", from, () => undefined)).toThrow(/compacted/);
  });

  it("reads under unmirrored prefixes answer UNAVAILABLE while etcd is unreachable; mirrored ones still answer", async () => {
    const prefix = newPrefix();
    const proxy = await startTcpProxy(cluster.endpoints[0]!);
    try {
      const s = await openStore(prefix, { endpoints: [proxy.url], requestTimeoutMs: 800, healthTimeoutMs: 400 });
      await s.put("keys/a", b("A"));
      await s.put("users/u", b("U"));
      proxy.pause();
      expect((await s.get("users/u"))!.value).toEqual(b("U"));
      const err = await s.get("keys/a").catch((e: unknown) => e);
      expect(err).toMatchObject({ code: "UNAVAILABLE" });
      expect((err as Error).message).toMatch(/^state store unavailable: no etcd quorum reachable \(read got no answer/);
      await expect(s.list("keys/")).rejects.toMatchObject({ code: "UNAVAILABLE" });
      await expect(s.count("keys/")).rejects.toMatchObject({ code: "UNAVAILABLE" });
      await expect(s.getFresh("keys/a")).rejects.toMatchObject({ code: "UNAVAILABLE" });
      proxy.resume();
      await eventually(async () => (await s.get("keys/a").catch(() => undefined)) !== undefined, "reads answer again");
    } finally {
      await proxy.close();
    }
  });

  it("a node cut off while etcd compacts is told what changed under unmirrored prefixes", async () => {
    const prefix = newPrefix();
    const proxy = await startTcpProxy(cluster.endpoints[0]!);
    try {
      const behind = await openStore(prefix, { endpoints: [proxy.url], requestTimeoutMs: 1000, healthTimeoutMs: 500 });
      const writer = await openStore(prefix);
      const seen = collect(behind, "keys/", behind.revision());
      for (let i = 0; i < 3; i++) await writer.put(`keys/k${i}`, b(`v${i}`));
      await eventually(() => seen.events.length === 3, "the node follows before the cut");
      proxy.pause();
      await writer.put("keys/k0", b("changed"));
      await writer.put("keys/new", b("n"));
      const last = await writer.put("users/u", b("u"));
      await raw.kv.compact({ revision: last, physical: true });
      proxy.resume();
      await eventually(() => behind.revision() >= last, "the node resyncs");
      expect(behind.stats().resyncs).toBeGreaterThanOrEqual(1);
      await eventually(() => fold(seen.events).get("keys/new") === "n", "the subscriber is told the new key");
      expect(fold(seen.events)).toEqual(
        new Map([
          ["keys/k0", "changed"],
          ["keys/k1", "v1"],
          ["keys/k2", "v2"],
          ["keys/new", "n"],
        ]),
      );
      expect(behind.stats().keys).toBe(1);
      expect(behind.stats().unmirroredGaps).toBeGreaterThanOrEqual(1);
      expect(logs.some((m) => /cannot be told/.test(m))).toBe(true);
    } finally {
      await proxy.close();
    }
  });
});
