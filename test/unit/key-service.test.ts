/**
 * KeyService's own rules, on a fake device (pure logic: which device calls it makes, what it
 * commits, what it answers): validation, idempotency by request id, ownership and shares, the
 * records written (names, not numbers), and the undo when the device refuses. The real device is
 * in the integration tests; a real embedded store keeps the commits honest here.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Code, HsmError } from "../../src/errors";
import { KeyService, type GenerateKeyInput } from "../../src/keys";
import { KeyNotMaterializedError, type KeyDevice, type WrappedMaterial } from "../../src/pkcs11";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

const alice = { user: "alice", userId: "u-alice" };
const bob = { user: "bob", userId: "u-bob" };
const limits = { maxPayloadBytes: 64, maxBatchItems: 4, maxLabelLength: 16, maxRandomBytes: 32, maxPageSize: 10, maxRequestIdLength: 12, maxOaepLabelBytes: 16 };
const DOMAIN = "hsmd-domain-test";

/** A device that keeps key ids in a set and logs every call; `refuse` makes one method throw. */
class FakeDevice {
  readonly calls: string[] = [];
  readonly objects = new Set<string>();
  refuse: Partial<Record<string, Error>> = {};
  /** Ids whose next sign answers "not materialized" (the object went with its session). */
  readonly evicted = new Set<string>();

  private call(name: string, id = ""): void {
    this.calls.push(id ? `${name} ${id}` : name);
    const e = this.refuse[name];
    if (e) throw e;
  }
  async generate(id: string): Promise<{ spki?: Buffer }> {
    this.call("generate", id);
    this.objects.add(id);
    return {};
  }
  async secretLength(id: string, domainKeyId: string): Promise<number | undefined> {
    this.call("secretLength", id);
    expect(domainKeyId).toBe(DOMAIN);
    return 32;
  }
  async sealForRecord(id: string, _alg: unknown, _u: unknown, domainKeyId: string): Promise<WrappedMaterial | undefined> {
    this.call("sealForRecord", id);
    return { alg: "AES_KWP", wrappingKeyId: domainKeyId, blob: Buffer.from(`wrapped:${id}`) };
  }
  /** No call logged: the records ask it on every set (is a key made here resident?). */
  cached(id: string): boolean {
    return this.objects.has(id);
  }
  async destroy(id: string): Promise<void> {
    this.call("destroy", id);
    this.objects.delete(id);
  }
  async materialize(id: string, _alg: unknown, _u: unknown, material: WrappedMaterial): Promise<void> {
    this.call("materialize", id);
    expect(material.blob.toString()).toBe(`wrapped:${id}`);
    this.objects.add(id);
  }
  async sign(id: string): Promise<Buffer> {
    this.call("sign", id);
    if (this.evicted.delete(id) || !this.objects.has(id)) throw new KeyNotMaterializedError(id, "secret");
    return Buffer.alloc(32, 7);
  }
  async random(n: number): Promise<Buffer> {
    this.call("random");
    return Buffer.alloc(n, 1);
  }
}

const gen = (over: Partial<GenerateKeyInput> = {}): GenerateKeyInput => ({ spec: "AES_256", label: "k", usages: [], exportable: false, requestId: "", ...over });
const codeOf = (p: Promise<unknown> | (() => unknown)) =>
  Promise.resolve()
    .then(() => (typeof p === "function" ? p() : p))
    .then(
      () => "OK",
      (e: HsmError) => `${e.code}: ${e.message}`,
    );

describe("KeyService on a fake device", () => {
  let root: string;
  let store: EmbeddedStore;
  let device: FakeDevice;
  let keys: KeyService;

  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-key-service-"));
    store = await openEmbeddedStore(join(root, "store"));
    device = new FakeDevice();
    keys = new KeyService({ device: device as unknown as KeyDevice, store, limits, domainKeyId: DOMAIN });
    await keys.start();
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("validates before the device is asked anything", async () => {
    expect(await codeOf(keys.generateKey(gen({ label: "" }), alice))).toBe(`${Code.InvalidArgument}: label is required`);
    expect(await codeOf(keys.generateKey(gen({ label: "x".repeat(17) }), alice))).toBe(`${Code.InvalidArgument}: label is longer than 16 characters`);
    expect(await codeOf(keys.generateKey(gen({ label: "a;b" }), alice))).toMatch(/label may hold letters/);
    expect(await codeOf(keys.generateKey(gen({ requestId: "r".repeat(13) }), alice))).toBe(`${Code.InvalidArgument}: request_id is longer than 12 characters`);
    expect(await codeOf(keys.generateKey(gen({ spec: "HMAC_SHA256", usages: ["encrypt"] }), alice))).toBe(
      `${Code.InvalidArgument}: usages: a hmac key cannot be used to encrypt (allowed: sign, verify)`,
    );
    expect(await codeOf(keys.generateKey(gen({ usages: ["encrypt", "sign"] }), alice))).toMatch(/either a cipher key .* or an AES-CMAC key/);
    expect(await codeOf(() => keys.getKey({ keyId: "not a key id!" }))).toBe(`${Code.InvalidArgument}: key_id "not a key id!" is not a key id`);
    expect(await codeOf(() => keys.getKey({ keyId: "0123-missing" }))).toBe(`${Code.NotFound}: key 0123-missing not found`);
    expect(await codeOf(keys.generateRandom({ length: 33 }))).toMatch(/over the limit of 32 bytes/);
    expect(await codeOf(keys.runBatch([1, 2, 3, 4, 5], async (x) => x))).toMatch(/batch has 5 items; the limit is 4/);
    expect(device.calls).toEqual([]);
  });

  it("commits a record by names with its wrapped copy, owner and request id, after the device made and sealed the key", async () => {
    const k = await keys.generateKey(gen({ label: "payments", requestId: "req-1" }), alice);
    expect(k).toMatchObject({ spec: "AES_256", origin: "GENERATED", usages: ["encrypt", "decrypt"], owner: "alice", label: "payments", version: 1, sharedWith: [] });
    expect(device.calls).toEqual([`generate ${k.id}`, `secretLength ${k.id}`, `sealForRecord ${k.id}`]);
    const stored = JSON.parse((await store.get(`keys/${k.id}`))!.value.toString("utf8"));
    expect(stored).toMatchObject({
      spec: "AES_256",
      origin: "GENERATED",
      owner: alice,
      requestId: "req-1",
      versions: [{ version: 1, residency: "wrapped", material: { alg: "AES_KWP", wrappingKeyId: DOMAIN } }],
    });
    const rid = (await store.list("requests/")).map((e) => e.value.toString());
    expect(rid).toEqual([k.id]);
  });

  it("answers a retried create with the same request id with the same key, per owner", async () => {
    const a1 = await keys.generateKey(gen({ requestId: "same" }), alice);
    const a2 = await keys.generateKey(gen({ requestId: "same", label: "other" }), alice);
    const b1 = await keys.generateKey(gen({ requestId: "same" }), bob);
    expect(a2.id).toBe(a1.id);
    expect(a2.label).toBe("k");
    expect(b1.id).not.toBe(a1.id);
    expect(device.calls.filter((c) => c.startsWith("generate"))).toHaveLength(2);
    await keys.deleteKey({ keyId: a1.id });
    expect(await codeOf(keys.generateKey(gen({ requestId: "same" }), alice))).toBe(`${Code.AlreadyExists}: request_id was used for key ${a1.id}, which has since been deleted`);
  });

  it("keeps ownership and shares: the owner sees the share list, sharing with the owner or twice changes nothing", async () => {
    const k = await keys.generateKey(gen(), alice);
    expect((await keys.setShare(k.id, bob, true, alice.userId)).sharedWith).toEqual(["bob"]);
    expect((await keys.setShare(k.id, bob, true, alice.userId)).sharedWith).toEqual(["bob"]);
    expect((await keys.setShare(k.id, alice, true, alice.userId)).sharedWith).toEqual(["bob"]);
    expect(keys.getKey({ keyId: k.id }, bob.userId).sharedWith).toEqual([]);
    expect(keys.ownedBy(alice.userId)).toBe(1);
    expect(keys.ownedBy(bob.userId)).toBe(0);
    const visible = keys.listKeys({ pageSize: 0, pageToken: "", labelPrefix: "" }, bob.userId);
    expect(visible.keys.map((x) => x.id)).toEqual([k.id]);
    expect(visible.keys[0]!.sharedWith).toEqual([]);
    expect((await keys.setShare(k.id, bob, false, alice.userId)).sharedWith).toEqual([]);
    expect(keys.listKeys({ pageSize: 0, pageToken: "", labelPrefix: "" }, bob.userId).keys).toEqual([]);
    expect(await codeOf(keys.setShare("0000-gone", bob, true))).toBe(`${Code.NotFound}: key 0000-gone not found`);
  });

  it("undoes the device side and writes no record when the device refuses", async () => {
    device.refuse.generate = new HsmError(Code.Unavailable, "device busy", { transient: true });
    expect(await codeOf(keys.generateKey(gen({ requestId: "r1" }), alice))).toBe(`${Code.Unavailable}: device busy`);
    const id1 = device.calls[0]!.split(" ")[1]!;
    expect(device.calls).toEqual([`generate ${id1}`, `destroy ${id1}`]);
    delete device.refuse.generate;
    device.calls.length = 0;
    device.refuse.sealForRecord = new HsmError(Code.Unavailable, "seal failed", { transient: true });
    expect(await codeOf(keys.generateKey(gen({ requestId: "r1" }), alice))).toBe(`${Code.Unavailable}: seal failed`);
    const id2 = device.calls[0]!.split(" ")[1]!;
    expect(device.calls.at(-1)).toBe(`destroy ${id2}`);
    expect(device.objects.size).toBe(0);
    expect(await store.list("keys/")).toEqual([]);
    expect(await store.list("requests/")).toEqual([]);
    expect(keys.keyCount).toBe(0);
    // The request id is still free: the retry makes the key.
    delete device.refuse.sealForRecord;
    expect((await keys.generateKey(gen({ requestId: "r1" }), alice)).owner).toBe("alice");
  });

  it("refuses crypto the key's usages do not allow, and materializes a key the device lost, once", async () => {
    const mac = await keys.generateKey(gen({ usages: ["sign", "verify"] }), alice);
    const enc = await keys.generateKey(gen(), alice);
    const sign = (keyId: string) => keys.sign({ keyId, algorithm: "AES_CMAC", message: Buffer.from("m"), messageType: "RAW", signatureFormat: "DER", macLength: 0 });
    expect(await codeOf(sign(enc.id))).toBe(`${Code.FailedPrecondition}: key ${enc.id} does not allow sign (its usages: encrypt, decrypt)`);
    expect(await codeOf(keys.sign({ keyId: mac.id, algorithm: "ECDSA_SHA256", message: Buffer.from("m"), messageType: "RAW", signatureFormat: "DER", macLength: 0 }))).toMatch(
      /needs an EC key; this key is AES/,
    );
    device.calls.length = 0;
    device.evicted.add(mac.id);
    expect((await sign(mac.id)).signature).toEqual(Buffer.alloc(32, 7));
    expect(device.calls).toEqual([
      `sign ${mac.id}`, // materialized from the record: what the device held of it first cleaned up
      `destroy ${mac.id}`,
      `materialize ${mac.id}`,
      `sign ${mac.id}`,
    ]);
  });

  it("reports each batch item's own error", async () => {
    const res = await keys.runBatch(["a", "b"], async (x) => {
      if (x === "b") throw new HsmError(Code.NotFound, "key b not found");
      return x;
    });
    expect(res[0]).toEqual({ ok: true, value: "a" });
    expect(res[1]).toMatchObject({ ok: false, error: { code: Code.NotFound } });
  });
});
