/**
 * ListKeys and ownedBy over the owner index (pure logic, records put in KeyRecords as the applier
 * would): many users, shares, filters and paging compared with a brute-force scan of the same
 * records; short pages with a next token when the per-call scan limit cuts a filtered listing;
 * deletes and share changes (through the real compare-and-put on the embedded store) reach the
 * listing at once. The device is never asked to do anything here.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type KeyDevice, type KeyRecord, KeyService, type ListKeysQuery, type UserRef, recordKey } from "../../src/keys";
import { encodeRecord } from "../../src/keys/record";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

const limits = { maxPayloadBytes: 64, maxBatchItems: 4, maxLabelLength: 16, maxRandomBytes: 32, maxPageSize: 50, maxRequestIdLength: 12, maxOaepLabelBytes: 16 };
const users: UserRef[] = Array.from({ length: 6 }, (_, i) => ({ user: `user${i}`, userId: `uid-${i}` }));
const SPECS = ["AES_256", "EC_P256"] as const;

/** A deterministic generator, so that a failure reproduces. */
function lcg(seed: number): (n: number) => number {
  let s = seed;
  return (n) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
}

function record(i: number, owner: UserRef | undefined, shares: UserRef[], spec: (typeof SPECS)[number], label: string): KeyRecord {
  return {
    id: `0000${i.toString(16).padStart(4, "0")}-key`,
    label,
    spec,
    usages: spec === "AES_256" ? ["encrypt", "decrypt"] : ["sign", "verify"],
    state: "enabled",
    origin: "GENERATED",
    createdAt: "2026-01-01T00:00:00.000Z",
    publicOnly: false,
    exportable: false,
    currentVersion: 1,
    versions: [{ version: 1, createdAt: "2026-01-01T00:00:00.000Z", residency: "wrapped" }],
    ...(owner ? { owner } : {}),
    shares,
  };
}

/** Listing needs no device: `cached` (asked when a record comes in) answers "not held", anything else fails the test. */
const noDevice = new Proxy({ cached: () => false } as unknown as KeyDevice, {
  get: (t, p) => {
    if (p === "cached" || p === "then") return (t as unknown as Record<string | symbol, unknown>)[p];
    throw new Error(`device.${String(p)} called`);
  },
});

const q = (over: Partial<ListKeysQuery> = {}): ListKeysQuery => ({ pageSize: 0, pageToken: "", labelPrefix: "", ...over });

describe("ListKeys over the owner index", () => {
  let root: string;
  let store: EmbeddedStore;
  let live: Map<string, KeyRecord>;

  const service = (listScanLimit?: number) => new KeyService({ device: noDevice, store, limits, domainKeyId: "d", listScanLimit });

  /** Every page of a listing, following next tokens; also the largest page seen. */
  function walk(keys: KeyService, query: ListKeysQuery, viewerId?: string): { ids: string[]; calls: number; pages: number[] } {
    const ids: string[] = [];
    const pages: number[] = [];
    let token = query.pageToken;
    for (;;) {
      const page = keys.listKeys({ ...query, pageToken: token }, viewerId);
      ids.push(...page.keys.map((k) => k.id));
      pages.push(page.keys.length);
      if (!page.nextPageToken) return { ids, calls: pages.length, pages };
      expect(page.nextPageToken).not.toBe(token);
      token = page.nextPageToken;
    }
  }

  /** What a scan of every record answers. */
  function expected(viewerId: string | undefined, query: ListKeysQuery): string[] {
    return [...live.values()]
      .filter((r) => viewerId === undefined || r.owner?.userId === viewerId || r.shares?.some((s) => s.userId === viewerId))
      .filter((r) => r.label.startsWith(query.labelPrefix) && (query.spec === undefined || r.spec === query.spec) && (!query.usage || r.usages.includes(query.usage)))
      .map((r) => r.id)
      .sort();
  }

  /** Puts `n` records in the store and in `keys.records`, as the applier does. */
  async function fill(keys: KeyService, n: number): Promise<void> {
    const rand = lcg(7);
    const writes: Promise<number>[] = [];
    for (let i = 0; i < n; i++) {
      const owner = rand(20) === 0 ? undefined : users[rand(users.length)];
      const shares = users.filter((u) => u !== owner && rand(6) === 0);
      const r = record(i, owner, shares, SPECS[rand(2)]!, `${["pay", "log", "tls"][rand(3)]}-${i}`);
      writes.push(store.put(recordKey(r.id), encodeRecord(r)));
      keys.records.set(r);
      live.set(r.id, r);
    }
    await Promise.all(writes);
  }

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-key-list-"));
    store = await openEmbeddedStore(join(root, "store"));
    live = new Map();
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("pages each user's owned and shared keys, with every filter, as a full scan would answer", async () => {
    const keys = service();
    await fill(keys, 800);
    const queries = [q({ pageSize: 7 }), q({ pageSize: 50, labelPrefix: "pay-" }), q({ pageSize: 3, spec: "EC_P256" }), q({ pageSize: 9, usage: "decrypt", labelPrefix: "t" })];
    for (const u of users) {
      for (const query of queries) {
        const got = walk(keys, query, u.userId);
        expect(got.ids).toEqual(expected(u.userId, query));
        // Under the scan limit, every page but the last is full.
        expect(got.pages.slice(0, -1).every((n) => n === query.pageSize)).toBe(true);
      }
      expect(keys.ownedBy(u.userId)).toBe([...live.values()].filter((r) => r.owner?.userId === u.userId).length);
    }
    expect(walk(keys, q({ pageSize: 50 })).ids).toEqual(expected(undefined, q()));
    expect(keys.listKeys(q({ spec: null }), users[0]!.userId)).toEqual({ keys: [], nextPageToken: "" });
    expect(keys.listKeys(q(), "uid-nobody")).toEqual({ keys: [], nextPageToken: "" });
  });

  it("answers short pages with a next token when the scan limit cuts a filter that matches few keys", async () => {
    const keys = service(20);
    await fill(keys, 400);
    const u = users[1]!;
    const query = q({ pageSize: 5, labelPrefix: "pay-1" });
    const got = walk(keys, query, u.userId);
    expect(got.ids).toEqual(expected(u.userId, query));
    expect(got.pages.some((n) => n < 5)).toBe(true);
    // Each call examines at most 20 of the user's keys: walking them all takes at least that many calls.
    expect(got.calls).toBeGreaterThanOrEqual(Math.ceil(keys.records.owners.visibleCount(u.userId) / 20));
    // Without filters the limit does not cut pages short.
    const all = walk(keys, q({ pageSize: 50 }), u.userId);
    expect(all.pages.slice(0, -1).every((n) => n === 50)).toBe(true);
    expect(all.ids).toEqual(expected(u.userId, q()));
  });

  it("shows the share list to the owner only, and follows share changes and deletes at once", async () => {
    const keys = service();
    await fill(keys, 120);
    const [owner, other] = [users[2]!, users[3]!];
    const mine = expected(owner.userId, q()).filter((id) => live.get(id)!.owner?.userId === owner.userId);
    const target = mine.find((id) => !live.get(id)!.shares?.some((s) => s.userId === other.userId))!;
    const shared = await keys.setShare(target, other, true, owner.userId);
    live.set(target, keys.records.get(target)!);
    expect(shared.sharedWith).toContain(other.user);
    expect(walk(keys, q({ pageSize: 4 }), other.userId).ids).toContain(target);
    const seen = keys.listKeys(q({ pageSize: 50 }), other.userId).keys.find((k) => k.id === target);
    expect(seen?.sharedWith ?? "not on the first page").toEqual(seen ? [] : "not on the first page");
    expect(keys.listKeys(q({ pageSize: 50 }), owner.userId).keys.find((k) => k.id === target)?.sharedWith).toContain(other.user);
    await keys.setShare(target, other, false, owner.userId);
    live.set(target, keys.records.get(target)!);
    expect(walk(keys, q({ pageSize: 4 }), other.userId).ids).not.toContain(target);

    // A page token naming a key deleted since still continues after it.
    const first = keys.listKeys(q({ pageSize: 5 }), owner.userId);
    const last = first.keys[first.keys.length - 1]!.id;
    const before = keys.ownedBy(owner.userId);
    keys.records.delete(last);
    live.delete(last);
    expect(keys.ownedBy(owner.userId)).toBe(before - (mine.includes(last) ? 1 : 0));
    const rest = walk(keys, q({ pageSize: 5, pageToken: first.nextPageToken }), owner.userId).ids;
    expect([...first.keys.slice(0, -1).map((k) => k.id), ...rest]).toEqual(expected(owner.userId, q()));
  });

  it("refuses a page size over the limit and a token it did not issue; reads a token made before the index", async () => {
    const keys = service();
    await fill(keys, 30);
    expect(() => keys.listKeys(q({ pageSize: 51 }))).toThrow(/page_size must be at most 50/);
    expect(() => keys.listKeys(q({ pageToken: Buffer.from("x:1").toString("base64url") }))).toThrow(/page_token is not one this service issued/);
    const ids = expected(users[0]!.userId, q());
    const token = Buffer.from(`k:${ids[2]}`).toString("base64url");
    expect(keys.listKeys(q({ pageToken: token }), users[0]!.userId).keys.map((k) => k.id)).toEqual(ids.slice(3));
  });
});
