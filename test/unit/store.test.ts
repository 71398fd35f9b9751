import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  LOCK_FILE,
  LOG_FILE,
  StoreCompactedError,
  getJson,
  openEmbeddedStore,
  putJson,
  type EmbeddedStore,
  type WatchEvent,
} from "../../src/store";

let root: string;
let dir: string;
const open: EmbeddedStore[] = [];
const warnings: string[] = [];

async function openStore(opts: { compactAfterBytes?: number } = {}): Promise<EmbeddedStore> {
  const s = await openEmbeddedStore(dir, { ...opts, warn: (m) => warnings.push(m) });
  open.push(s);
  return s;
}
const b = (s: string) => Buffer.from(s);
const logPath = () => join(dir, LOG_FILE);

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "hsmd-store-"));
  dir = join(root, "state");
  warnings.length = 0;
});
afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
  rmSync(root, { recursive: true, force: true });
});

describe("embedded store: reads and writes", () => {
  it("creates its directory 0700 and log 0600, and starts at revision 0", async () => {
    const s = await openStore();
    expect(s.revision()).toBe(0);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(logPath()).mode & 0o777).toBe(0o600);
    expect(await s.healthy()).toBe(true);
  });

  it("put, get, delete with revisions, versions and create revisions", async () => {
    const s = await openStore();
    expect(await s.put("a", b("1"))).toBe(1);
    expect(await s.put("a", b("2"))).toBe(2);
    expect(await s.put("b", b("x"))).toBe(3);
    const a = await s.get("a");
    expect(a).toEqual({ key: "a", value: b("2"), modRevision: 2, createRevision: 1, version: 2 });
    expect(await s.delete("a")).toBe(4);
    expect(await s.get("a")).toBeUndefined();
    // Deleting an absent key changes nothing and makes no revision.
    expect(await s.delete("a")).toBe(4);
    expect(s.revision()).toBe(4);
    expect(await s.put("a", b("3"))).toBe(5);
    expect(await s.get("a")).toMatchObject({ createRevision: 5, version: 1 });
  });

  it("returns copies: mutating a value read or written does not change the store", async () => {
    const s = await openStore();
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
    const s = await openStore();
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

  it("pages through many keys across chunk boundaries", async () => {
    const s = await openStore();
    const keys = Array.from({ length: 2000 }, (_, i) => `k/${String((i * 7919) % 2000).padStart(5, "0")}`);
    await Promise.all(keys.map((k) => s.put(k, b(k))));
    for (let i = 0; i < 2000; i += 3) await s.delete(keys[i]!);
    const expected = keys.filter((_, i) => i % 3 !== 0).sort();
    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await s.list("k/", { startAfter: after, limit: 97 });
      if (page.length === 0) break;
      seen.push(...page.map((e) => e.key));
      after = page[page.length - 1]!.key;
    }
    expect(seen).toEqual(expected);
    expect(await s.count("k/")).toBe(expected.length);
  });
});

describe("embedded store: transactions", () => {
  it("absent / present / modRevision compares", async () => {
    const s = await openStore();
    const create = (k: string, v: string) => s.txn([{ key: k, op: "absent" }], [{ type: "put", key: k, value: b(v) }]);
    expect(await create("k", "1")).toEqual({ succeeded: true, revision: 1 });
    expect(await create("k", "2")).toEqual({ succeeded: false, revision: 1 });
    expect((await s.get("k"))!.value.toString()).toBe("1");

    const upd = await s.txn([{ key: "k", op: "modRevision", equals: 1 }], [{ type: "put", key: "k", value: b("3") }]);
    expect(upd).toEqual({ succeeded: true, revision: 2 });
    const stale = await s.txn([{ key: "k", op: "modRevision", equals: 1 }], [{ type: "put", key: "k", value: b("4") }]);
    expect(stale.succeeded).toBe(false);
    // modRevision 0 means "absent", as in etcd.
    expect((await s.txn([{ key: "nope", op: "modRevision", equals: 0 }], [])).succeeded).toBe(true);

    expect((await s.txn([{ key: "nope", op: "present" }], [{ type: "delete", key: "k" }])).succeeded).toBe(false);
    expect(await s.get("k")).toBeDefined();
    const del = await s.txn([{ key: "k", op: "present" }], [{ type: "delete", key: "k" }]);
    expect(del).toEqual({ succeeded: true, revision: 3 });
    expect(s.revision()).toBe(3);
  });

  it("a failed compare changes nothing, a successful txn applies all ops as one revision", async () => {
    const s = await openStore();
    await s.put("a", b("a0"));
    const before = s.stats();
    const r = await s.txn(
      [{ key: "a", op: "present" }, { key: "b", op: "present" }],
      [{ type: "put", key: "a", value: b("a1") }, { type: "put", key: "c", value: b("c1") }],
    );
    expect(r.succeeded).toBe(false);
    expect(s.revision()).toBe(1);
    expect((await s.get("a"))!.value.toString()).toBe("a0");
    expect(await s.get("c")).toBeUndefined();
    expect(s.stats().logBytes).toBe(before.logBytes);
    expect(s.stats().fsyncs).toBe(before.fsyncs);

    const ok = await s.txn(
      [{ key: "a", op: "present" }, { key: "b", op: "absent" }],
      [{ type: "put", key: "a", value: b("a1") }, { type: "put", key: "c", value: b("c1") }, { type: "delete", key: "zz" }],
    );
    expect(ok).toEqual({ succeeded: true, revision: 2 });
    expect((await s.get("a"))!.modRevision).toBe(2);
    expect((await s.get("c"))!.modRevision).toBe(2);
  });

  it("concurrent creates of the same key: exactly one wins, evaluated in arrival order", async () => {
    const s = await openStore();
    const rs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        s.txn([{ key: "one", op: "absent" }], [{ type: "put", key: "one", value: b(String(i)) }]),
      ),
    );
    expect(rs.filter((r) => r.succeeded)).toHaveLength(1);
    expect(rs[0]!.succeeded).toBe(true);
    expect((await s.get("one"))!.value.toString()).toBe("0");
    expect(s.revision()).toBe(1);
  });

  it("rejects bad input with INVALID_ARGUMENT", async () => {
    const s = await openStore();
    await expect(s.put("", b("x"))).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(s.put("k", "str" as unknown as Buffer)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(
      s.txn([], [{ type: "put", key: "k", value: b("1") }, { type: "delete", key: "k" }]),
    ).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    expect(s.revision()).toBe(0);
  });

  it("revisions are monotonic and dense across many writers", async () => {
    const s = await openStore();
    const revs = await Promise.all(Array.from({ length: 100 }, (_, i) => s.put(`k${i % 10}`, b(String(i)))));
    expect([...revs].sort((x, y) => x - y)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(revs).toEqual([...revs].sort((x, y) => x - y)); // arrival order
    expect(s.revision()).toBe(100);
  });

  it("group commit: 200 concurrent puts are all durable with far fewer than 200 fsyncs", async () => {
    const s = await openStore();
    const before = s.stats().fsyncs;
    await Promise.all(Array.from({ length: 200 }, (_, i) => s.put(`keys/${i}`, b(`v${i}`))));
    const fsyncs = s.stats().fsyncs - before;
    expect(fsyncs).toBeGreaterThanOrEqual(1);
    expect(fsyncs).toBeLessThan(20);
    await s.close();
    const again = await openStore();
    expect(await again.count("keys/")).toBe(200);
    expect(again.revision()).toBe(200);
  });

  it("readers never see a write before it is acknowledged", async () => {
    const s = await openStore();
    const p = s.put("k", b("v"));
    expect(await s.get("k")).toBeUndefined();
    expect(s.revision()).toBe(0);
    await p;
    expect(await s.get("k")).toBeDefined();
  });
});

describe("embedded store: watch", () => {
  function collect(s: EmbeddedStore, prefix: string, from: number) {
    const events: WatchEvent[] = [];
    const stop = s.watch(prefix, from, (e) => events.push(e));
    return { events, stop };
  }
  const tick = () => new Promise((r) => setImmediate(r));

  it("replays events after a past revision, then streams live ones, filtered by prefix", async () => {
    const s = await openStore();
    await s.put("keys/a", b("1")); // 1
    await s.put("users/x", b("u")); // 2
    await s.put("keys/b", b("2")); // 3
    await s.delete("keys/a"); // 4
    const w = collect(s, "keys/", 1);
    await tick();
    expect(w.events).toEqual([
      { type: "put", key: "keys/b", value: b("2"), revision: 3 },
      { type: "delete", key: "keys/a", revision: 4 },
    ]);
    await s.txn([], [{ type: "put", key: "keys/c", value: b("3") }, { type: "put", key: "other", value: b("o") }]);
    await tick();
    expect(w.events.at(-1)).toEqual({ type: "put", key: "keys/c", value: b("3"), revision: 5 });
    expect(w.events).toHaveLength(3);
    w.stop();
    await s.put("keys/d", b("4"));
    await tick();
    expect(w.events).toHaveLength(3);
  });

  it("watch from 0 replays everything; from the current revision only live events; in order under load", async () => {
    const s = await openStore();
    await s.put("a", b("1"));
    const all = collect(s, "", 0);
    const live = collect(s, "", s.revision());
    await Promise.all(Array.from({ length: 50 }, (_, i) => s.put(`k${i}`, b(String(i)))));
    await tick();
    expect(all.events.map((e) => e.revision)).toEqual(Array.from({ length: 51 }, (_, i) => i + 1));
    expect(live.events.map((e) => e.revision)).toEqual(Array.from({ length: 50 }, (_, i) => i + 2));
  });

  it("watch replays history after reopen; a compacted revision is refused", async () => {
    let s = await openStore();
    await s.put("a", b("1"));
    await s.put("a", b("2"));
    await s.close();
    s = await openStore();
    const w = collect(s, "", 1);
    await tick();
    expect(w.events).toEqual([{ type: "put", key: "a", value: b("2"), revision: 2 }]);
    await s.compact();
    expect(() => s.watch("", 1, () => undefined)).toThrow(StoreCompactedError);
    const after = collect(s, "", 2);
    await s.put("a", b("3"));
    await tick();
    expect(after.events.map((e) => e.revision)).toEqual([3]);
  });
});

describe("embedded store: durability and recovery", () => {
  it("reopen restores state and revision", async () => {
    let s = await openStore();
    await s.put("a", b("1"));
    await s.put("a", b("2"));
    await s.put("b", b("3"));
    await s.delete("b");
    await putJson(s, "j", { hello: "world", n: 1 });
    await s.close();
    s = await openStore();
    expect(s.revision()).toBe(5);
    expect(await s.get("a")).toEqual({ key: "a", value: b("2"), modRevision: 2, createRevision: 1, version: 2 });
    expect(await s.get("b")).toBeUndefined();
    expect((await getJson<{ hello: string }>(s, "j"))!.value).toEqual({ hello: "world", n: 1 });
    expect(await s.put("c", b("4"))).toBe(6);
    expect(warnings).toEqual([]);
  });

  async function seed(): Promise<number> {
    const s = await openStore();
    for (let i = 0; i < 5; i++) await s.put(`k${i}`, b(`value-${i}`)); // one frame per write batch
    await s.close();
    return statSync(logPath()).size;
  }

  it.each([
    ["garbage without a newline", (_: string) => "garbage"],
    ["garbage lines", (_: string) => "not a frame\nnor this\n"],
    ["half of a real frame", (frame: string) => frame.slice(0, Math.floor(frame.length / 2))],
    ["a whole frame failing its checksum", (frame: string) => frame],
    ["zeros", (_: string) => "\0".repeat(300)],
  ])("a torn tail (%s) is discarded on reopen with a warning", async (_name, tail) => {
    const size = await seed();
    const lines = readFileSync(logPath(), "utf8").split("\n");
    // The last frame, renumbered to revision 6 without fixing its checksum.
    const lastFrame = lines[lines.length - 2]!.replace('"r":5', '"r":6').replace('"b":5', '"b":6') + "\n";
    expect(lastFrame).toContain('"r":6,"b":6');
    appendFileSync(logPath(), tail(lastFrame));
    const s = await openStore();
    expect(s.revision()).toBe(5);
    expect((await s.get("k4"))!.value.toString()).toBe("value-4");
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(logPath());
    expect(warnings[0]).toContain(`offset ${size}`);
    expect(statSync(logPath()).size).toBe(size);
    expect(await s.put("k5", b("after"))).toBe(6);
    await s.close();
    const again = await openStore();
    expect(again.revision()).toBe(6);
    expect(warnings).toHaveLength(1);
  });

  it("a bad frame in the middle refuses to open, naming the file and offset", async () => {
    await seed();
    const text = readFileSync(logPath(), "utf8");
    const lines = text.split("\n");
    const offset = lines[0]!.length + 1 + lines[1]!.length + 1; // third frame
    const i = offset + 30; // inside the JSON of the third of five frames
    const damaged = text.slice(0, i) + (text[i] === "A" ? "B" : "A") + text.slice(i + 1);
    writeFileSync(logPath(), damaged);
    const err = await openEmbeddedStore(dir).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "FAILED_PRECONDITION" });
    expect((err as Error).message).toContain(logPath());
    expect((err as Error).message).toContain(`offset ${offset}`);
    expect(readFileSync(logPath(), "utf8")).toBe(damaged); // nothing truncated
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false); // lock released on failure
  });

  it("damage inside the final write batch only (pages persisted out of order) is cut off, not refused", async () => {
    await seed();
    let s = await openStore();
    await Promise.all([s.put("x1", b("1")), s.put("x2", b("2")), s.put("x3", b("3"))]); // one batch: revisions 6-8
    expect(s.stats().batches).toBe(1);
    await s.close();
    const text = readFileSync(logPath(), "utf8");
    const lines = text.split("\n");
    const offset = lines.slice(0, 6).reduce((n, l) => n + l.length + 1, 0); // frame of revision 7
    const i = offset + 30;
    writeFileSync(logPath(), text.slice(0, i) + (text[i] === "A" ? "B" : "A") + text.slice(i + 1));
    s = await openStore();
    expect(s.revision()).toBe(6);
    expect(warnings[0]).toContain(`offset ${offset}`);
  });

  it("a missing frame (revision gap) refuses to open", async () => {
    await seed();
    const lines = readFileSync(logPath(), "utf8").split("\n");
    lines.splice(2, 1);
    writeFileSync(logPath(), lines.join("\n"));
    await expect(openEmbeddedStore(dir)).rejects.toThrow(/corrupt at byte offset \d+: revision 4 follows revision 2/);
  });

  it("compaction keeps data and revision, shrinks the log, and survives reopen", async () => {
    let s = await openStore({ compactAfterBytes: 4096 });
    for (let round = 0; round < 40; round++) {
      await Promise.all(Array.from({ length: 10 }, (_, i) => s.put(`k/${i}`, b(`r${round}-${"x".repeat(50)}`))));
    }
    await s.delete("k/9");
    const st = s.stats();
    expect(st.compactions).toBeGreaterThan(0);
    expect(st.revision).toBe(401);
    expect(statSync(logPath()).size).toBeLessThan(8192);
    const snapshot = await s.list("");
    await s.close();
    s = await openStore({ compactAfterBytes: 4096 });
    expect(s.revision()).toBe(401);
    expect(await s.list("")).toEqual(snapshot);
    expect((await s.get("k/0"))!).toMatchObject({ version: 40, createRevision: expect.any(Number) });
    expect(await s.put("k/new", b("1"))).toBe(402);
    await s.compact();
    await s.close();
    s = await openStore();
    expect(s.revision()).toBe(402);
    expect(await s.count("k/")).toBe(10);
    expect(warnings).toEqual([]);
  });

  it("a leftover compaction temp file (crash before rename) is ignored", async () => {
    await seed();
    writeFileSync(join(dir, "store.log.compact.tmp"), "half a snapshot");
    const s = await openStore();
    expect(s.revision()).toBe(5);
    expect(existsSync(join(dir, "store.log.compact.tmp"))).toBe(false);
  });
});

describe("embedded store: single writer lock", () => {
  it("a second open of the same directory fails until the first closes", async () => {
    const s = await openStore();
    await expect(openEmbeddedStore(dir)).rejects.toThrow(/locked by this process/);
    await s.close();
    const again = await openStore();
    expect(again.revision()).toBe(0);
  });

  it("a lock left by a dead process is taken over; one held by a live process is not", async () => {
    const s = await openStore();
    await s.close();
    writeFileSync(join(dir, LOCK_FILE), "2147483646\n");
    const again = await openStore();
    expect(readFileSync(join(dir, LOCK_FILE), "utf8").trim()).toBe(String(process.pid));
    await again.close();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    writeFileSync(join(dir, LOCK_FILE), `${process.ppid}\n`);
    await expect(openEmbeddedStore(dir)).rejects.toThrow(new RegExp(`locked by process ${process.ppid}`));
  });

  it("close rejects later writes and reports unhealthy", async () => {
    const s = await openStore();
    const p = s.put("k", b("v"));
    await s.close();
    await expect(p).resolves.toBe(1); // accepted before close: committed
    await expect(s.put("k", b("w"))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(await s.healthy()).toBe(false);
  });
});
