/**
 * The due pass of key states (src/keys/deletion-schedule.ts) on a fake clock: three "nodes" (key
 * services with their own records) over one real embedded store race their passes; exactly one
 * delete (or expiry) lands and exactly one audit entry is written. The store decides, not a node's
 * possibly stale copy: a cancel that landed first wins. The device is never asked to do anything.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type DueAuditEntry, type KeyDevice, type KeyRecord, KeyService, decodeRecord, recordKey } from "../../src/keys";
import { enabled, expired, needEnabled, windowDays, checkValidTo, deletionCancelled, scheduledForDeletion, disabled } from "../../src/keys/key-states";
import { checkTags, withTags, withoutTags } from "../../src/keys/key-tags";
import { encodeRecord } from "../../src/keys/record";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

const limits = { maxPayloadBytes: 64, maxBatchItems: 4, maxLabelLength: 16, maxRandomBytes: 32, maxPageSize: 50, maxRequestIdLength: 12, maxOaepLabelBytes: 16 };
const T0 = Date.parse("2026-06-01T00:00:00.000Z");
const iso = (ms: number) => new Date(ms).toISOString();

/** No device work is expected: `cached` answers "not held", anything else fails the test. */
const noDevice = new Proxy({ cached: () => false } as unknown as KeyDevice, {
  get: (t, p) => {
    if (p === "cached" || p === "then") return (t as unknown as Record<string | symbol, unknown>)[p];
    throw new Error(`device.${String(p)} called`);
  },
});

function record(id: string, over: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id,
    label: id,
    spec: "AES_256",
    usages: ["encrypt", "decrypt"],
    state: "ENABLED",
    origin: "IMPORTED",
    createdAt: iso(T0 - 1000),
    publicOnly: false,
    exportable: false,
    currentVersion: 1,
    versions: [{ version: 1, createdAt: iso(T0 - 1000), residency: "wrapped", material: { blob: Buffer.from("wrapped-bytes"), alg: "AES_KWP", wrappingKeyId: "d" } }],
    owner: { user: "alice", userId: "uid-a" },
    ...over,
  };
}

describe("the due pass, three nodes racing over one store", () => {
  let root: string;
  let store: EmbeddedStore;
  let nodes: KeyService[];
  let audit: DueAuditEntry[];
  const log = async (e: DueAuditEntry) => {
    audit.push(e);
  };

  /** Puts records in the store and in every node's copy, as their appliers would. */
  async function put(...rs: KeyRecord[]): Promise<void> {
    for (const r of rs) {
      await store.put(recordKey(r.id), encodeRecord(r));
      for (const n of nodes) n.records.set(r);
    }
  }
  const stored = async (id: string) => {
    const e = await store.get(recordKey(id));
    return e ? decodeRecord(e.value) : undefined;
  };

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-due-"));
    store = await openEmbeddedStore(join(root, "store"));
    nodes = [0, 1, 2].map(() => new KeyService({ device: noDevice, store, limits, domainKeyId: "d" }));
    audit = [];
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("deletes a key whose deletion date passed exactly once, with one audit entry; nothing before the date", async () => {
    await put(record("k1", { state: "PENDING_DELETION", deletionDate: iso(T0 + 1000), stateBeforeDeletion: "ENABLED" }), record("k2"));
    const early = await Promise.all(nodes.map((n) => n.duePass(T0 + 999, log)));
    expect(early.flatMap((r) => r.destroyed)).toEqual([]);
    expect(await stored("k1")).toBeDefined();
    for (let round = 0; round < 3; round++) {
      const res = await Promise.all(nodes.map((n) => n.duePass(T0 + 1000 + round, log)));
      expect(res.flatMap((r) => r.destroyed)).toEqual(round === 0 ? ["k1"] : []);
    }
    expect(await stored("k1")).toBeUndefined();
    expect(await stored("k2")).toBeDefined();
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({ operation: "ScheduledKeyDeletion", keyId: "k1", status: "OK" });
    // The node whose delete landed forgot the key at once; the others learn it from their appliers (not running here).
    expect(nodes.filter((n) => n.records.has("k1"))).toHaveLength(2);
  });

  it("the store decides: a cancel that landed first wins over a node's stale copy", async () => {
    const r = record("k3", { state: "PENDING_DELETION", deletionDate: iso(T0), stateBeforeDeletion: "DISABLED" });
    await put(r);
    // Cancelled in the store; the nodes' copies still say PENDING_DELETION.
    await store.put(recordKey("k3"), encodeRecord(deletionCancelled(r)));
    const res = await Promise.all(nodes.map((n) => n.duePass(T0 + 10_000, log)));
    expect(res.flatMap((x) => x.destroyed)).toEqual([]);
    expect((await stored("k3"))?.state).toBe("DISABLED");
    expect(audit).toEqual([]);
  });

  it("expires an imported key once when valid_to passes: PENDING_IMPORT, material removed, one audit entry", async () => {
    await put(record("k4", { validTo: iso(T0 + 500) }), record("k5", { validTo: iso(T0 + 500), state: "PENDING_DELETION", deletionDate: iso(T0 + 10 ** 9) }));
    expect((await Promise.all(nodes.map((n) => n.duePass(T0 + 499, log)))).flatMap((x) => x.expired)).toEqual([]);
    const res = await Promise.all(nodes.map((n) => n.duePass(T0 + 500, log)));
    expect(res.flatMap((x) => x.expired)).toEqual(["k4"]);
    const s = (await stored("k4"))!;
    expect(s.state).toBe("PENDING_IMPORT");
    expect(s.versions.every((v) => v.material === undefined)).toBe(true);
    // A key pending deletion keeps its material until it is destroyed or the deletion is cancelled.
    expect((await stored("k5"))?.versions[0]?.material).toBeDefined();
    expect(audit.map((e) => [e.operation, e.keyId])).toEqual([["KeyMaterialExpired", "k4"]]);
    // Again: nothing more.
    await Promise.all(nodes.map((n) => n.duePass(T0 + 600, log)));
    expect(audit).toHaveLength(1);
  });
});

describe("state transitions and metadata (pure)", () => {
  const r = record("p1");
  it("enable, disable, schedule and cancel follow KMS's rules", () => {
    expect(enabled(r)).toBeUndefined();
    expect(disabled(r)?.state).toBe("DISABLED");
    expect(disabled(disabled(r)!)).toBeUndefined();
    const pd = scheduledForDeletion(disabled(r)!, iso(T0));
    expect(pd).toMatchObject({ state: "PENDING_DELETION", deletionDate: iso(T0), stateBeforeDeletion: "DISABLED" });
    expect(() => enabled(pd)).toThrow(/cancel the deletion first/);
    expect(() => scheduledForDeletion(pd, iso(T0))).toThrow(/already PENDING_DELETION/);
    expect(deletionCancelled(pd)).toEqual(disabled(r));
    expect(() => deletionCancelled(r)).toThrow(/not PENDING_DELETION/);
    expect(() => enabled(expired(r))).toThrow(/import its material again/);
    expect(() => needEnabled(pd)).toThrow(/is PENDING_DELETION/);
    expect(() => needEnabled(expired(r))).toThrow(/is PENDING_IMPORT/);
    expect(() => needEnabled({ ...r, state: "enabled" as never })).not.toThrow();
  });
  it("bounds: windows, valid_to, tags", () => {
    const w = { dayMs: 1, deletionWindowDays: { min: 7, max: 30 } };
    expect(windowDays(0, w)).toBe(30);
    expect(windowDays(7, w)).toBe(7);
    expect(() => windowDays(6, w)).toThrow(/7 to 30/);
    expect(() => windowDays(31, w)).toThrow(/7 to 30/);
    expect(checkValidTo("")).toBe("");
    expect(checkValidTo("2030-01-01T00:00:00+02:00", T0)).toBe("2029-12-31T22:00:00.000Z");
    expect(() => checkValidTo("2020-01-01T00:00:00Z", T0)).toThrow(/not in the future/);
    expect(() => checkValidTo("tomorrow", T0)).toThrow(/RFC 3339/);
    expect(() => checkValidTo("2030-01-01", T0)).toThrow(/RFC 3339/);
    expect(() => checkTags({ "a\u0000": "x" })).toThrow(/printable/);
    const tagged = withTags(r, { b: "2", a: "1" })!;
    expect(Object.keys(tagged.tags!)).toEqual(["a", "b"]);
    expect(withTags(tagged, { a: "1" })).toBeUndefined();
    expect(withoutTags(tagged, ["zzz"])).toBeUndefined();
    expect(withoutTags(tagged, ["a", "b"])?.tags).toBeUndefined();
  });
});
