/**
 * Key records written before records stored names: test/fixtures/store-v1 is an embedded store made
 * by hsmd at commit fcc05a4 (spec and origin as ts-proto enum numbers). The current code loads a copy
 * of it, reads every record's spec and origin as names, gives the same API view the old code
 * answered, and writes names when a record changes.
 */
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KeyOrigin, KeySpec, KeyUsage } from "../../src/gen/hsm/v1/keys";
import { keyToProto } from "../../src/grpc/map/keys";
import { KeyService, decodeRecord, originFromStored, specFromStored } from "../../src/keys";
import type { KeyDevice } from "../../src/pkcs11";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

const FIXTURE = join(__dirname, "../fixtures/store-v1");
const alice = { user: "alice", userId: "u-alice-1" };
const bob = { user: "bob", userId: "u-bob-1" };

/** What the code of fcc05a4 answered for each key (its GenerateKey/ImportPublicKey/... responses). */
const EXPECTED: Record<string, { label: string; spec: KeySpec; origin: KeyOrigin; usages: KeyUsage[]; publicOnly: boolean; exportable: boolean; owner: string; residency: string }> = {
  "d9971d4f-fa50-4b20-a009-f3d0c45fcd1f": { label: "aes-256", spec: 2, origin: 1, usages: [1, 2], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "34db3a31-188c-4a18-ab88-70054c60ac7a": { label: "aes-128-cmac", spec: 1, origin: 1, usages: [3, 4], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "bd0d0677-4e24-4d8f-9e4b-668f9fc63ffb": { label: "hmac-256", spec: 3, origin: 1, usages: [3, 4], publicOnly: false, exportable: false, owner: "bob", residency: "wrapped" },
  "940fdc17-ae99-44ce-a8bd-ac87072b9eb3": { label: "ec-p256", spec: 9, origin: 1, usages: [3, 4, 7], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "b66d669a-89bc-4ebe-b0c5-566d3288ebb0": { label: "rsa-2048", spec: 6, origin: 1, usages: [1, 2], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "bc26304e-046f-4b33-a63e-e7404d8e2113": { label: "ed25519", spec: 13, origin: 1, usages: [3, 4], publicOnly: false, exportable: false, owner: "alice", residency: "device" },
  "27fa9de1-47f7-493d-830f-8448301b6ecc": { label: "wrapper", spec: 2, origin: 1, usages: [5, 6], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "c5130c79-cb67-4047-9898-20e57060fcd4": { label: "exportable", spec: 1, origin: 1, usages: [1, 2], publicOnly: false, exportable: true, owner: "alice", residency: "wrapped" },
  "458ba5a6-5cba-4526-ad97-5242f31f9bf1": { label: "unwrapped", spec: 1, origin: 4, usages: [1, 2], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "74e85a8d-4b6e-4219-9268-6a5f858e18a2": { label: "derived", spec: 2, origin: 5, usages: [1, 2], publicOnly: false, exportable: false, owner: "alice", residency: "wrapped" },
  "3e51d1a1-fd43-437c-8e8e-604b6f79e63a": { label: "public-p384", spec: 10, origin: 3, usages: [4], publicOnly: true, exportable: false, owner: "bob", residency: "public" },
};
const NAMES: Record<string, [string, string]> = {
  "aes-256": ["AES_256", "GENERATED"],
  "aes-128-cmac": ["AES_128", "GENERATED"],
  "hmac-256": ["HMAC_SHA256", "GENERATED"],
  "ec-p256": ["EC_P256", "GENERATED"],
  "rsa-2048": ["RSA_2048", "GENERATED"],
  ed25519: ["ED25519", "GENERATED"],
  wrapper: ["AES_256", "GENERATED"],
  exportable: ["AES_128", "GENERATED"],
  unwrapped: ["AES_128", "UNWRAPPED"],
  derived: ["AES_256", "DERIVED"],
  "public-p384": ["EC_P384", "PUBLIC"],
};

/** Loading records and answering views needs no device: any device call fails the test. */
const noDevice = new Proxy(
  {},
  {
    get: (_t, p) => () => {
      throw new Error(`device.${String(p)} called`);
    },
  },
) as unknown as KeyDevice;
const limits = { maxPayloadBytes: 1024, maxBatchItems: 8, maxLabelLength: 64, maxRandomBytes: 64, maxPageSize: 100, maxRequestIdLength: 64, maxOaepLabelBytes: 64 };

describe("key records written by the version that stored enum numbers", () => {
  let root: string;
  let store: EmbeddedStore;
  let keys: KeyService;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-record-migration-"));
    cpSync(FIXTURE, join(root, "store"), { recursive: true });
    store = await openEmbeddedStore(join(root, "store"));
    keys = new KeyService({ device: noDevice, store, limits, domainKeyId: "unused" });
    await keys.start();
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("the fixture holds numbers, not names (it is the old format)", async () => {
    const raw = await store.list("keys/");
    expect(raw).toHaveLength(Object.keys(EXPECTED).length);
    for (const e of raw) {
      const json = JSON.parse(e.value.toString("utf8"));
      expect(typeof json.spec).toBe("number");
      expect(typeof json.origin).toBe("number");
    }
  });

  it("loads every record with its spec and origin as names", async () => {
    expect(keys.keyCount).toBe(Object.keys(EXPECTED).length);
    for (const [id, want] of Object.entries(EXPECTED)) {
      const r = keys.record(id);
      expect([r.spec, r.origin], want.label).toEqual(NAMES[want.label]);
      expect(r.label).toBe(want.label);
      expect(r.owner?.user).toBe(want.owner);
      expect(r.versions[0]!.residency).toBe(want.residency);
      // The in-memory copy carries no wrapped material; it is read from the store when needed.
      expect(r.versions[0]!.material).toBeUndefined();
      if (want.residency === "wrapped") expect((await keys.records.material(r))!.blob.length).toBeGreaterThan(0);
    }
  });

  it("answers the API view the old code answered, enum numbers and all", () => {
    for (const [id, want] of Object.entries(EXPECTED)) {
      const viewer = want.owner === "alice" ? alice.userId : bob.userId;
      const k = keyToProto(keys.getKey({ keyId: id }, viewer));
      expect(k).toMatchObject({
        id,
        label: want.label,
        spec: want.spec,
        origin: want.origin,
        usages: want.usages,
        publicOnly: want.publicOnly,
        exportable: want.exportable,
        owner: want.owner,
        version: 1,
        heldBy: [],
      });
      expect(k.publicKeySpki.length > 0).toBe(want.spec >= 6);
    }
    // The one share: alice's AES-256 key with bob, seen by its owner only.
    expect(keys.getKey({ keyId: "d9971d4f-fa50-4b20-a009-f3d0c45fcd1f" }, alice.userId).sharedWith).toEqual(["bob"]);
    expect(keys.getKey({ keyId: "d9971d4f-fa50-4b20-a009-f3d0c45fcd1f" }, bob.userId).sharedWith).toEqual([]);
  });

  it("filters old records by spec and usage like new ones", () => {
    const page = keys.listKeys({ pageSize: 0, pageToken: "", labelPrefix: "", spec: "AES_128" });
    expect(page.keys.map((k) => k.label).sort()).toEqual(["aes-128-cmac", "exportable", "unwrapped"]);
    expect(keys.listKeys({ pageSize: 0, pageToken: "", labelPrefix: "", usage: "derive" }).keys.map((k) => k.label)).toEqual(["ec-p256"]);
  });

  it("writes names when a record changes (a share), and reads them back", async () => {
    const id = "940fdc17-ae99-44ce-a8bd-ac87072b9eb3";
    await keys.setShare(id, bob, true, alice.userId);
    const e = await store.get(`keys/${id}`);
    const json = JSON.parse(e!.value.toString("utf8"));
    expect([json.spec, json.origin]).toEqual(["EC_P256", "GENERATED"]);
    expect(decodeRecord(e!.value)).toMatchObject({ spec: "EC_P256", origin: "GENERATED", shares: [bob] });
  });

  it("maps every number the old format used, and leaves names alone", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13].map(specFromStored)).toEqual([
      "AES_128",
      "AES_256",
      "HMAC_SHA256",
      "HMAC_SHA384",
      "HMAC_SHA512",
      "RSA_2048",
      "RSA_3072",
      "RSA_4096",
      "EC_P256",
      "EC_P384",
      "EC_P521",
      "EC_SECP256K1",
      "ED25519",
    ]);
    expect([1, 2, 3, 4, 5].map(originFromStored)).toEqual(["GENERATED", "IMPORTED", "PUBLIC", "UNWRAPPED", "DERIVED"]);
    expect(specFromStored("EC_P256")).toBe("EC_P256");
    expect(originFromStored("IMPORTED")).toBe("IMPORTED");
    // The frozen table agrees with the proto's numbering today.
    expect(KeySpec.KEY_SPEC_ED25519).toBe(13);
    expect(KeyOrigin.KEY_ORIGIN_DERIVED).toBe(5);
  });
});
