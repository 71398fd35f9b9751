/**
 * OwnerIndex (pure logic): ids by owner and by viewer in ascending order, paging strictly after a
 * cursor, shares, removal, idempotent adds, records without an owner; and a randomized comparison
 * with a brute-force scan of the same records.
 */
import { describe, expect, it } from "vitest";
import type { KeyRecord, UserRef } from "../../src/keys";
import { OwnerIndex } from "../../src/keys/owner-index";

const u = (n: string): UserRef => ({ user: n, userId: `id-${n}` });
const rec = (id: string, owner?: UserRef, shares: UserRef[] = []): KeyRecord => ({
  id,
  label: id,
  spec: "AES_256",
  usages: ["encrypt"],
  state: "enabled",
  origin: "GENERATED",
  createdAt: "2026-01-01T00:00:00.000Z",
  publicOnly: false,
  exportable: false,
  currentVersion: 1,
  versions: [{ version: 1, createdAt: "2026-01-01T00:00:00.000Z", residency: "wrapped" }],
  ...(owner ? { owner } : {}),
  shares,
});

describe("OwnerIndex", () => {
  it("pages a user's owned and shared keys in id order, strictly after the cursor", () => {
    const ix = new OwnerIndex();
    const [alice, bob, carol] = [u("alice"), u("bob"), u("carol")];
    ix.add(rec("k3", alice));
    ix.add(rec("k1", alice, [bob]));
    ix.add(rec("k2", bob));
    ix.add(rec("k4", carol, [alice, bob]));
    expect(ix.page(alice.userId, "", 10)).toEqual(["k1", "k3", "k4"]);
    expect(ix.page(bob.userId, "", 10)).toEqual(["k1", "k2", "k4"]);
    expect(ix.page(bob.userId, "k1", 1)).toEqual(["k2"]);
    expect(ix.page(bob.userId, "k2", 5)).toEqual(["k4"]);
    expect(ix.page(bob.userId, "k4", 5)).toEqual([]);
    expect(ix.page(bob.userId, "k15", 5)).toEqual(["k2", "k4"]);
    expect(ix.page("id-nobody", "", 5)).toEqual([]);
    expect(ix.page(alice.userId, "", 0)).toEqual([]);
    expect(ix.ownedCount(alice.userId)).toBe(2);
    expect(ix.ownedCount(bob.userId)).toBe(1);
    expect(ix.visibleCount(bob.userId)).toBe(3);
    expect(ix.pageAll("", 10)).toEqual(["k1", "k2", "k3", "k4"]);
    expect(ix.size).toBe(4);
  });

  it("forgets removed records and share changes, and adding twice counts once", () => {
    const ix = new OwnerIndex();
    const [alice, bob] = [u("alice"), u("bob")];
    const k = rec("k1", alice);
    ix.add(k);
    ix.add(k);
    expect(ix.ownedCount(alice.userId)).toBe(1);
    const shared = rec("k1", alice, [bob]);
    ix.remove(k);
    ix.add(shared);
    expect(ix.page(bob.userId, "", 10)).toEqual(["k1"]);
    ix.remove(shared);
    ix.add(k);
    expect(ix.page(bob.userId, "", 10)).toEqual([]);
    expect(ix.visibleCount(bob.userId)).toBe(0);
    ix.remove(k);
    expect(ix.ownedCount(alice.userId)).toBe(0);
    expect(ix.page(alice.userId, "", 10)).toEqual([]);
    expect(ix.size).toBe(0);
    ix.remove(k);
    expect(ix.size).toBe(0);
  });

  it("indexes a record without an owner under no user, only in the full listing", () => {
    const ix = new OwnerIndex();
    ix.add(rec("legacy"));
    expect(ix.pageAll("", 5)).toEqual(["legacy"]);
    expect(ix.page("", "", 5)).toEqual([]);
    expect(ix.ownedCount("")).toBe(0);
  });

  it("answers what a scan of the same records answers, across many chunks", () => {
    const ix = new OwnerIndex();
    const users = Array.from({ length: 7 }, (_, i) => u(`user${i}`));
    const live = new Map<string, KeyRecord>();
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 3000; i++) {
      const id = `key-${String(rand(2000)).padStart(5, "0")}`;
      const old = live.get(id);
      if (old) ix.remove(old);
      if (old && rand(3) === 0) {
        live.delete(id);
        continue;
      }
      const shares = users.filter(() => rand(5) === 0);
      const r = rec(id, users[rand(users.length)], shares);
      live.set(id, r);
      ix.add(r);
    }
    const sorted = [...live.keys()].sort();
    for (const user of users) {
      const expected = sorted.filter((id) => {
        const r = live.get(id)!;
        return r.owner?.userId === user.userId || r.shares?.some((s) => s.userId === user.userId);
      });
      const got: string[] = [];
      let after = "";
      for (;;) {
        const page = ix.page(user.userId, after, 37);
        if (page.length === 0) break;
        got.push(...page);
        after = page[page.length - 1]!;
      }
      expect(got).toEqual(expected);
      expect(ix.ownedCount(user.userId)).toBe(sorted.filter((id) => live.get(id)!.owner?.userId === user.userId).length);
    }
    expect(ix.pageAll("", 10_000)).toEqual(sorted);
  });
});
