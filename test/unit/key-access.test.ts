/**
 * The key access decision, and the work behind a NOT_FOUND: in a cluster, another user's key was
 * answered from this node's copy while an unknown id cost an etcd read, so timing told which ids
 * exist. Now both cost exactly one fresh store read (counted here on a real embedded store given a
 * fresh read), the owner none; a share committed elsewhere counts at once.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AccessGuard, keyAccess } from "../../src/access";
import { Code } from "../../src/errors";
import { KeyOrigin, KeySpec } from "../../src/gen/hsm/v1/keys";
import { KeyService, type KeyRecord } from "../../src/keys";
import type { Device } from "../../src/pkcs11";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";
import { UserService, type Principal } from "../../src/users";

const alice = { user: "alice", userId: "u-alice" };
const bob = { user: "bob", userId: "u-bob" };
const carol = { user: "carol", userId: "u-carol" };

function rec(id: string, owner = alice, shares: Array<typeof alice> = []): KeyRecord {
  return {
    id,
    label: id,
    spec: KeySpec.KEY_SPEC_AES_256,
    usages: ["encrypt", "decrypt"],
    state: "enabled",
    origin: KeyOrigin.KEY_ORIGIN_GENERATED,
    createdAt: new Date(0).toISOString(),
    publicOnly: false,
    exportable: false,
    currentVersion: 1,
    versions: [{ version: 1, createdAt: new Date(0).toISOString(), residency: "wrapped" }],
    owner,
    shares,
  };
}

const principal = (u: typeof alice): Principal => ({ ...u, role: "CU", sessionId: "s", mustChangePassword: false, expiresAt: Number.MAX_SAFE_INTEGER });
const put = (store: EmbeddedStore, r: KeyRecord) => store.txn([], [{ type: "put", key: `keys/${r.id}`, value: Buffer.from(JSON.stringify({ ...r })) }]);

describe("keyAccess", () => {
  it("is owner for the owner, shared for a user it is shared with, none otherwise and for no record", () => {
    const r = rec("k1", alice, [bob]);
    expect(keyAccess(r, alice.userId)).toBe("owner");
    expect(keyAccess(r, bob.userId)).toBe("shared");
    expect(keyAccess(r, carol.userId)).toBe("none");
    expect(keyAccess(undefined, alice.userId)).toBe("none");
    // A record from before users existed belongs to nobody.
    expect(keyAccess({ ...r, owner: undefined, shares: undefined }, alice.userId)).toBe("none");
  });
});

describe("AccessGuard.key on a store with fresh reads", () => {
  let root: string;
  let store: EmbeddedStore;
  let freshReads: string[];
  let keys: KeyService;
  let guard: AccessGuard;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-key-access-"));
    store = await openEmbeddedStore(join(root, "store"));
    // The embedded store has no separate replicated copy: its fresh read is its read, counted.
    freshReads = [];
    store.getFresh = async (k: string) => {
      freshReads.push(k);
      return store.get(k);
    };
    await put(store, rec("k-alice", alice, [bob]));
    // The access path never touches the device: none is given (a device call would throw here).
    keys = new KeyService({
      device: undefined as unknown as Device,
      store,
      limits: { maxPayloadBytes: 1, maxBatchItems: 1, maxLabelLength: 1, maxRandomBytes: 1, maxPageSize: 1, maxRequestIdLength: 1 },
      domainKeyId: "d",
    });
    await keys.start();
    guard = new AccessGuard(new UserService({ store }), keys);
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  const attempt = async (who: typeof alice, id: string, need: "use" | "own") => {
    freshReads = [];
    const out = await guard.key(principal(who), id, need).then(
      (r) => ({ code: "OK", id: r.id }),
      (e: { code: Code; message: string }) => ({ code: e.code, message: e.message }),
    );
    return { ...out, freshReads: freshReads.length };
  };

  it("answers another user's key and an unknown id the same NOT_FOUND after the same one fresh read", async () => {
    const others = await attempt(carol, "k-alice", "use");
    const unknown = await attempt(carol, "k-nobody", "use");
    expect(others).toEqual({ code: Code.NotFound, message: "key k-alice not found", freshReads: 1 });
    expect(unknown).toEqual({ code: Code.NotFound, message: "key k-nobody not found", freshReads: 1 });
  });

  it("lets the owner in without a store read, a shared user use (not own) it, and refuses malformed ids first", async () => {
    expect(await attempt(alice, "k-alice", "own")).toEqual({ code: "OK", id: "k-alice", freshReads: 0 });
    expect(await attempt(bob, "k-alice", "use")).toEqual({ code: "OK", id: "k-alice", freshReads: 0 });
    expect(await attempt(bob, "k-alice", "own")).toMatchObject({ code: Code.PermissionDenied, freshReads: 0 });
    expect(await attempt(carol, "not a key id!", "use")).toMatchObject({ code: Code.InvalidArgument, freshReads: 0 });
    expect(await attempt(carol, "", "use")).toMatchObject({ code: Code.InvalidArgument, message: "key_id is required" });
  });

  it("decides on the store's record when this node's copy says no: a key or share committed elsewhere counts at once", async () => {
    // Written behind the service's back (no applier follows the store here), as another node's commit not yet seen.
    await put(store, rec("k-alice", alice, [bob, carol]));
    await put(store, rec("k-new", carol));
    expect(await attempt(carol, "k-alice", "use")).toEqual({ code: "OK", id: "k-alice", freshReads: 1 });
    expect(await attempt(carol, "k-new", "own")).toEqual({ code: "OK", id: "k-new", freshReads: 1 });
    // A key unknown here is then known to the service (the handler that follows finds it).
    expect(keys.known("k-new")?.owner).toEqual(carol);
  });
});
