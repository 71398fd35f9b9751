/**
 * Aliases (issue 13) without a device: the name rules, who may see an alias, which keys it may move
 * between (pure), and KeyAliases' resolution, ownership checks, paging and watch over a real embedded
 * store with a fake source of key records (a second KeyAliases on the same store plays another node).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Code, type HsmError } from "../../src/errors";
import { KeyAliases, type KeyRecord, type KeyRecords, aliasVisible, checkAliasName, recordKey, repointRefusal } from "../../src/keys";
import { encodeRecord } from "../../src/keys/record";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

const alice = { user: "alice", userId: "u-alice" };
const bob = { user: "bob", userId: "u-bob" };
const carol = { user: "carol", userId: "u-carol" };

function rec(id: string, over: Partial<KeyRecord> = {}): KeyRecord {
  return {
    id,
    label: id,
    spec: "AES_256",
    usages: ["encrypt", "decrypt"],
    state: "ENABLED",
    origin: "GENERATED",
    createdAt: new Date(0).toISOString(),
    publicOnly: false,
    exportable: false,
    currentVersion: 1,
    versions: [{ version: 1, createdAt: new Date(0).toISOString(), residency: "wrapped" }],
    owner: alice,
    shares: [],
    ...over,
  };
}

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "OK",
    (e: HsmError) => `${e.code}: ${e.message}`,
  );

describe("alias names", () => {
  it("accepts alias/ then 1 to 250 of [A-Za-z0-9/_-]", () => {
    for (const ok of ["alias/a", "alias/Payments_2024-v1", "alias/team/app/key", `alias/${"z".repeat(250)}`, "alias/hsmd"]) expect(checkAliasName(ok, "alias_name", true)).toBe(ok);
  });

  it("refuses, naming the field and the rule: empty, no prefix, nothing after it, too long, bad characters, the reserved prefix", () => {
    const cases: Array<[string, RegExp]> = [
      ["", /^alias_name is required/],
      ["payments", /does not start with "alias\/"/],
      ["Alias/x", /does not start with/],
      ["alias/", /nothing after/],
      [`alias/${"z".repeat(251)}`, /251 characters/],
      ["alias/a b", /character outside/],
      ["alias/é", /character outside/],
      ["alias/a:b", /character outside/],
      ["alias/hsmd/x", /reserved for hsmd/],
    ];
    for (const [name, why] of cases) {
      let err: HsmError | undefined;
      try {
        checkAliasName(name, "alias_name", true);
      } catch (e) {
        err = e as HsmError;
      }
      expect(err?.code, name).toBe(Code.InvalidArgument);
      expect(err?.message).toMatch(why);
      expect(err?.message).toContain("alias_name");
    }
    // Looking up a reserved name is no error: it just finds nothing.
    expect(checkAliasName("alias/hsmd/x", "key_id")).toBe("alias/hsmd/x");
  });
});

describe("visibility and re-pointing (pure)", () => {
  const a = { name: "alias/x", targetKeyId: "k", owner: alice, createdAt: "", updatedAt: "" };
  it("the alias's owner, the key's owner and its shared users see it; nobody else; a gone key leaves it to its owner", () => {
    const k = rec("k", { owner: bob, shares: [carol] });
    expect(aliasVisible(a, k, alice.userId)).toBe(true);
    expect(aliasVisible(a, k, bob.userId)).toBe(true);
    expect(aliasVisible(a, k, carol.userId)).toBe(true);
    expect(aliasVisible(a, rec("k", { owner: bob }), carol.userId)).toBe(false);
    expect(aliasVisible(a, undefined, alice.userId)).toBe(true);
    expect(aliasVisible(a, undefined, bob.userId)).toBe(false);
  });

  it("moves only within a key type and with the same usages (in any order)", () => {
    expect(repointRefusal(rec("a"), rec("b", { spec: "AES_128", usages: ["decrypt", "encrypt"] }))).toBeUndefined();
    expect(repointRefusal(rec("a"), rec("b", { spec: "RSA_2048" }))).toMatch(/same type/);
    expect(repointRefusal(rec("a"), rec("b", { spec: "HMAC_SHA256", usages: ["sign", "verify"] }))).toMatch(/same type/);
    expect(repointRefusal(rec("a"), rec("b", { usages: ["encrypt", "decrypt", "wrap"] }))).toMatch(/same usages/);
    expect(repointRefusal(rec("a", { spec: "EC_P256", usages: ["sign", "verify"] }), rec("b", { spec: "EC_P384", usages: ["sign", "verify"] }))).toBeUndefined();
    expect(repointRefusal(rec("a", { spec: "EC_P256", usages: ["verify"] }), rec("b", { spec: "EC_P256", usages: ["verify"], publicOnly: true }))).toMatch(/same kind/);
  });
});

describe("KeyAliases on an embedded store", () => {
  let root: string;
  let store: EmbeddedStore;
  let keys: Map<string, KeyRecord>;
  let aliases: KeyAliases;
  /** Another node's view of the same store. */
  let other: KeyAliases;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-aliases-"));
    store = await openEmbeddedStore(join(root, "store"));
    keys = new Map();
    const records = { get: (id: string) => keys.get(id), fresh: async (id: string) => keys.get(id) } as unknown as KeyRecords;
    for (const r of [rec("k1", { shares: [bob] }), rec("k2"), rec("k-ec", { spec: "EC_P256", usages: ["sign", "verify"] }), rec("k-bob", { owner: bob })]) {
      keys.set(r.id, r);
      await store.put(recordKey(r.id), encodeRecord(r));
    }
    aliases = new KeyAliases({ store, records, maxPageSize: 5 });
    other = new KeyAliases({ store, records, maxPageSize: 5 });
    await aliases.start();
    await other.start();
  });
  afterEach(async () => {
    aliases.stop();
    other.stop();
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("resolves for the owner and shared users, hides it from others exactly as an unknown alias", async () => {
    await aliases.create(alice, "alias/pay", keys.get("k1")!);
    expect(await aliases.resolve(alice.userId, "alias/pay")).toBe("k1");
    expect(await aliases.resolve(bob.userId, "alias/pay")).toBe("k1");
    expect(await codeOf(aliases.resolve(carol.userId, "alias/pay"))).toBe(`${Code.NotFound}: alias/pay not found`);
    expect(await codeOf(aliases.resolve(carol.userId, "alias/none"))).toBe(`${Code.NotFound}: alias/none not found`);
    expect(await codeOf(aliases.resolve(carol.userId, "alias/a b", "wrapping_key_id"))).toMatch(new RegExp(`^${Code.InvalidArgument}: wrapping_key_id`));
  });

  it("refuses a taken name and a target whose record is gone, leaving nothing written", async () => {
    await aliases.create(alice, "alias/dup", keys.get("k1")!);
    expect(await codeOf(aliases.create(alice, "alias/dup", keys.get("k2")!))).toBe(`${Code.FailedPrecondition}: alias/dup already exists: UpdateAlias re-points it`);
    // Taken on another node a moment ago: the txn's compare refuses it.
    await other.create(bob, "alias/race", keys.get("k-bob")!);
    expect(await codeOf(aliases.create(alice, "alias/race", keys.get("k1")!))).toMatch(/already exists/);
    await store.delete(recordKey("k2"));
    expect(await codeOf(aliases.create(alice, "alias/orphan", keys.get("k2")!))).toBe(`${Code.NotFound}: key k2 not found`);
    expect(await store.get("aliases/orphan")).toBeUndefined();
  });

  it("re-points and deletes for the alias's owner only; the type must match; a dangling alias names its key", async () => {
    await aliases.create(alice, "alias/mv", keys.get("k1")!);
    expect(await codeOf(aliases.update(bob, "alias/mv", keys.get("k-bob")!))).toBe(`${Code.PermissionDenied}: alias/mv belongs to alice: only its owner may re-point it`);
    expect(await codeOf(aliases.delete(bob, "alias/mv"))).toMatch(new RegExp(`^${Code.PermissionDenied}`));
    expect(await codeOf(aliases.delete(carol, "alias/mv"))).toBe(`${Code.NotFound}: alias/mv not found`);
    expect(await codeOf(aliases.update(alice, "alias/mv", keys.get("k-ec")!))).toMatch(/cannot move from key k1 to key k-ec: .*same type/);
    expect((await aliases.update(alice, "alias/mv", keys.get("k2")!)).targetKeyId).toBe("k2");
    expect(aliases.namesOf("k2")).toEqual(["alias/mv"]);
    expect(aliases.namesOf("k1")).toEqual([]);
    // The key goes (another node's DeleteKey with the alias ops), this node still has the row: dangling.
    keys.delete("k2");
    expect(await codeOf(aliases.resolve(alice.userId, "alias/mv"))).toBe(`${Code.NotFound}: alias/mv points at key k2, which no longer exists: re-point it (UpdateAlias) or delete it`);
    expect(await codeOf(aliases.resolve(bob.userId, "alias/mv"))).toBe(`${Code.NotFound}: alias/mv not found`);
    await aliases.delete(alice, "alias/mv");
    expect(aliases.get("alias/mv")).toBeUndefined();
  });

  it("another node's writes arrive through the watch; an older event never undoes a newer own write", async () => {
    await other.create(alice, "alias/remote", keys.get("k1")!);
    await other.update(alice, "alias/remote", keys.get("k2")!);
    await waitFor(() => aliases.get("alias/remote")?.targetKeyId === "k2");
    expect(aliases.namesOf("k2")).toEqual(["alias/remote"]);
    await aliases.delete(alice, "alias/remote");
    await waitFor(() => other.get("alias/remote") === undefined);
    expect(aliases.get("alias/remote")).toBeUndefined();
    expect(aliases.size).toBe(0);
  });

  it("deleteOpsFor names every alias of a key, for the key's own txn", async () => {
    await aliases.create(alice, "alias/d1", keys.get("k1")!);
    await aliases.create(alice, "alias/d2", keys.get("k1")!);
    const ops = aliases.deleteOpsFor("k1");
    expect(ops).toEqual([
      { type: "delete", key: "aliases/d1" },
      { type: "delete", key: "aliases/d2" },
    ]);
    const res = await store.txn([], [{ type: "delete", key: recordKey("k1") }, ...ops]);
    aliases.deletedWithKey(["alias/d1", "alias/d2"], res.revision);
    expect(aliases.namesOf("k1")).toEqual([]);
    await waitFor(() => other.get("alias/d1") === undefined && other.get("alias/d2") === undefined);
  });

  it("lists the caller's visible aliases a page at a time, by name, with an opaque token", async () => {
    const names = ["alias/l0", "alias/l1", "alias/l2", "alias/l3", "alias/l4", "alias/l5", "alias/l6"];
    for (const n of names) await aliases.create(alice, n, keys.get(n < "alias/l4" ? "k1" : "k2")!);
    await aliases.create(bob, "alias/bobs", keys.get("k-bob")!);
    const walk = (userId: string, keyId?: string) => {
      const out: string[] = [];
      let pageToken = "";
      do {
        const p = aliases.list(userId, { keyId, pageSize: 3, pageToken });
        expect(p.aliases.length).toBeLessThanOrEqual(3);
        out.push(...p.aliases.map((a) => a.name));
        pageToken = p.nextPageToken;
      } while (pageToken);
      return out;
    };
    expect(walk(alice.userId)).toEqual(names);
    // bob sees his own and those of k1 (shared with him), not k2's.
    expect(walk(bob.userId)).toEqual(["alias/bobs", "alias/l0", "alias/l1", "alias/l2", "alias/l3"]);
    expect(walk(carol.userId)).toEqual([]);
    expect(walk(alice.userId, "k2")).toEqual(["alias/l4", "alias/l5", "alias/l6"]);
    expect(aliases.list(alice.userId, { pageSize: 0, pageToken: "" }).aliases).toHaveLength(5);
    expect(() => aliases.list(alice.userId, { pageSize: 6, pageToken: "" })).toThrow(/page_size must be at most 5/);
    expect(() => aliases.list(alice.userId, { pageSize: 1, pageToken: Buffer.from("k:x").toString("base64url") })).toThrow(/page_token/);
  });

  it("a restarted node loads every alias row", async () => {
    await aliases.create(alice, "alias/kept", keys.get("k1")!);
    const again = new KeyAliases({ store, records: { get: (id: string) => keys.get(id), fresh: async (id: string) => keys.get(id) } as unknown as KeyRecords });
    await again.start();
    expect(again.get("alias/kept")).toMatchObject({ targetKeyId: "k1", owner: alice });
    again.stop();
  });
});

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(check()).toBe(true);
}
