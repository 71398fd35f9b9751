import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { LOCK_FILE, LOG_FILE, StoreCompactedError, getJson, openEmbeddedStore, putJson, type EmbeddedStore, type WatchEvent } from "../../src/store";
import { storeContract } from "../helpers/store-contract";

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

const tick = () => new Promise((r) => setImmediate(r));

// The StateStore contract, as the etcd store passes it too (test/integration/etcd-store.test.ts).
storeContract<EmbeddedStore>({
  name: "embedded store",
  open: () => openStore(),
  reopen: async (s) => {
    await s.close();
    return openStore();
  },
  until: async (cond, what) => {
    await tick();
    expect(await cond(), what).toBe(true);
  },
  freshRevision: 0,
  serial: true,
  manyKeys: 2000,
});

describe("embedded store: reads and writes", () => {
  it("creates its directory 0700 and log 0600, and starts at revision 0", async () => {
    const s = await openStore();
    expect(s.revision()).toBe(0);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(logPath()).mode & 0o777).toBe(0o600);
    expect(await s.healthy()).toBe(true);
  });
});

describe("embedded store: transactions", () => {
  it("a failed compare writes nothing to the log and costs no fsync", async () => {
    const s = await openStore();
    await s.put("a", b("a0"));
    const before = s.stats();
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
    expect(r.succeeded).toBe(false);
    expect(s.revision()).toBe(1);
    expect(s.stats().logBytes).toBe(before.logBytes);
    expect(s.stats().fsyncs).toBe(before.fsyncs);
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
});

describe("embedded store: watch", () => {
  function collect(s: EmbeddedStore, prefix: string, from: number) {
    const events: WatchEvent[] = [];
    const stop = s.watch(prefix, from, (e) => events.push(e));
    return { events, stop };
  }

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

describe("embedded store: history probe", () => {
  it("hasHistorySince holds for its own revisions since the last compaction, not before it nor past the current one", async () => {
    let s = await openStore();
    expect(await s.hasHistorySince(0)).toBe(true);
    for (let i = 0; i < 4; i++) await s.put(`k${i}`, b(String(i)));
    expect(await s.hasHistorySince(0)).toBe(true);
    expect(await s.hasHistorySince(4)).toBe(true);
    expect(await s.hasHistorySince(5)).toBe(false); // not one of this store's revisions
    await s.compact();
    expect(await s.hasHistorySince(3)).toBe(false);
    expect(await s.hasHistorySince(4)).toBe(true);
    await s.put("k9", b("9"));
    await s.close();
    s = await openStore();
    expect(await s.hasHistorySince(3)).toBe(false);
    expect(await s.hasHistorySince(4)).toBe(true);
    // What it answers true for, watch replays.
    const events: WatchEvent[] = [];
    s.watch("", 4, (e) => events.push(e));
    await tick();
    expect(events.map((e) => e.key)).toEqual(["k9"]);
    await expect(s.hasHistorySince(-1)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
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

  it("a write accepted before close is still committed; later ones are refused", async () => {
    const s = await openStore();
    const p = s.put("k", b("v"));
    await s.close();
    await expect(p).resolves.toBe(1); // accepted before close: committed
    await expect(s.put("k", b("w"))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(await s.healthy()).toBe(false);
  });
});
