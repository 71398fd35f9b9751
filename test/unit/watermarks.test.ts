/**
 * Watermarks (src/cluster/watermark.ts) over a real embedded store: publication is coalesced with at
 * most one write in flight and never triggered by the node's own row; checkUsable and awaitCoverage
 * count the nodes whose watermark passed a create revision; held_by; the migration of per-key
 * coverage rows; a catch-up's choice between replaying changes and the full check.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Watermarks, fullCheckReason, watermarkKey } from "../../src/cluster";
import type { KeyRecord } from "../../src/keys";
import { type EmbeddedStore, type StateStore, openEmbeddedStore } from "../../src/store";

let root: string;
let store: EmbeddedStore;
const made: Watermarks[] = [];

function marks(nodeId: string, minNodes = 1): Watermarks {
  const w = new Watermarks({ store, nodeId, minNodes });
  made.push(w);
  return w;
}

/** A store whose puts are counted (and can be held until released), the rest passed through. */
function countingStore(inner: StateStore): { store: StateStore; puts: string[]; hold: () => () => void } {
  const puts: string[] = [];
  let gate: Promise<void> | undefined;
  const store = Object.create(inner) as StateStore;
  store.put = async (key: string, value: Buffer) => {
    puts.push(`${key}=${value.toString("utf8")}`);
    if (gate) await gate;
    return inner.put(key, value);
  };
  return {
    store,
    puts,
    hold: () => {
      let release!: () => void;
      gate = new Promise((r) => (release = r));
      return () => {
        gate = undefined;
        release();
      };
    },
  };
}

const record = (residency: "wrapped" | "device", createdOn?: string): KeyRecord =>
  ({ id: "k", spec: "ec-p256", usages: ["sign"], currentVersion: 1, versions: [{ version: 1, createdAt: "", residency }], createdOn }) as unknown as KeyRecord;

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), "hsmd-watermarks-"));
  store = await openEmbeddedStore(join(root, "store"));
});

afterEach(async () => {
  for (const w of made.splice(0)) w.stop();
  await store.close();
  rmSync(root, { recursive: true, force: true });
});

describe("Watermarks", () => {
  it("publishes at most one write at a time, coalescing values asked meanwhile into one write of the newest", async () => {
    const c = countingStore(store);
    const w = new Watermarks({ store: c.store, nodeId: "n1" });
    made.push(w);
    const release = c.hold();
    w.publish(5);
    for (let r = 6; r <= 20; r++) w.publish(r);
    w.publish(3); // older: nothing
    expect(c.puts.length).toBe(1);
    release();
    await w.flushed();
    expect(c.puts.map((p) => JSON.parse(p.split("=")[1]!).revision)).toEqual([5, 20]);
    expect(w.publishedRevision).toBe(20);
    w.publish(20);
    await w.flushed();
    expect(c.puts.length).toBe(2);
  });

  it("its own row, seen through its watch, does not make it write again", async () => {
    const c = countingStore(store);
    const w = new Watermarks({ store: c.store, nodeId: "n1" });
    made.push(w);
    await w.start();
    await store.put("keys/k", Buffer.from("{}"));
    w.publish(store.revision());
    await w.flushed();
    const wrote = c.puts.length;
    // The row's own write is a new store revision; it reaches the watch and nothing follows.
    const until = Date.now() + 10_000;
    while (w.of("n1") === undefined && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
    expect(w.of("n1")).toBe(1);
    await w.flushed();
    expect(c.puts.length).toBe(wrote);
    expect(wrote).toBe(1);
  });

  it("with minNodes 2, a key is usable once two nodes' watermarks passed its create revision; awaitCoverage waits for that", async () => {
    const n1 = marks("n1", 2);
    const n2 = marks("n2", 2);
    await n1.start();
    await n2.start();
    n1.publish(10);
    await n1.flushed();
    await expect(n1.checkUsable("k", 10)).rejects.toMatchObject({ code: "UNAVAILABLE", transient: true, message: expect.stringContaining("cluster.minNodes = 2") });
    const waiting = n1.awaitCoverage("k", 10);
    n2.publish(12);
    await waiting;
    await n1.checkUsable("k", 10);
    expect(n1.nodesPast(10)).toEqual(["n1", "n2"]);
    expect(n1.nodesPast(11)).toEqual(["n2"]);
    // A node at revision 0 does not count for a key created at 11.
    await expect(n1.checkUsable("k2", 13)).rejects.toMatchObject({ code: "UNAVAILABLE" });
    // minNodes 1: usable once committed, whatever the watermarks.
    await marks("n3", 1).checkUsable("k2", 1000);
  });

  it("held_by: the nodes past the create revision; a key that lives only in its device, its creator alone", async () => {
    const n1 = marks("n1");
    await n1.start();
    await store.put(watermarkKey("n2"), Buffer.from(JSON.stringify({ revision: 50, at: "" })));
    await store.put(watermarkKey("n3"), Buffer.from(JSON.stringify({ revision: 20, at: "" })));
    await store.put(watermarkKey("bad"), Buffer.from("not json"));
    n1.publish(40);
    await n1.flushed();
    await new Promise((r) => setImmediate(r));
    expect(n1.heldBy(record("wrapped"), 30)).toEqual(["n1", "n2"]);
    expect(n1.heldBy(record("device", "n3"), 30)).toEqual(["n3"]);
    expect(n1.heldBy(record("device"), 30)).toEqual([]);
  });

  it("removes an older hsmd's coverage rows in batches, idempotently", async () => {
    for (let i = 0; i < 230; i++) await store.put(`coverage/key-${String(i).padStart(3, "0")}/n1`, Buffer.from("x"));
    await store.put("keys/untouched", Buffer.from("{}"));
    const w = marks("n1");
    expect(await w.removeLegacyCoverage()).toBe(230);
    expect(await store.count("coverage/")).toBe(0);
    expect(await store.count("keys/")).toBe(1);
    expect(await w.removeLegacyCoverage()).toBe(0);
  });

  it("catch-up or full check: asked, unknown revision, or a store past it runs the full check, naming why", async () => {
    await store.put("a", Buffer.from("1"));
    expect(await fullCheckReason(store, store.revision(), false)).toBeUndefined();
    expect(await fullCheckReason(store, store.revision(), true)).toBe("asked for (--full-check)");
    expect(await fullCheckReason(store, undefined, false)).toMatch(/applied revision is unknown/);
    const noHistory = Object.create(store) as StateStore;
    noHistory.hasHistorySince = async () => false;
    expect(await fullCheckReason(noHistory, 7, false)).toBe("the store has compacted past revision 7");
  });
});
