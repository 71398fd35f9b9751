/**
 * Key states through gRPC against a real daemon on a SoftHSM2 token (issue 13): a DISABLED key
 * refuses every use with FAILED_PRECONDITION naming its state (unary, batch items, the crypto
 * stream), management still works, EnableKey brings it back; scheduled deletion (window bounds,
 * cancel, destruction when the window ends, with a 200 ms "day": the record, the token's objects
 * and an audit entry checked); description and tags with their bounds; ListKeys state and tag filters.
 */
import { generateKeyPairSync } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, KeyState, KeyUsage, SigningAlgorithm, WrapAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { pkcs11Tool } from "../helpers/softhsm";
import { ensureUser, officerClient, userClient } from "../helpers/users";

const DAY_MS = 200;
let td: TestDaemon;
let owner: HsmClient;
let ownerUnary: HsmClient;
let shared: HsmClient;
let other: HsmClient;
let co: HsmClient;
let seq = 0;
const label = (p: string) => `${p}-${++seq}`;
const message = Buffer.from("states message");
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const ES256 = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const peer = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" });

beforeAll(async () => {
  td = await startTestDaemon({ config: { lifecycle: { dayMs: DAY_MS, checkIntervalMs: 100 } } });
  await ensureUser(td, "shared");
  await ensureUser(td, "other");
  owner = await userClient(td, "owner");
  ownerUnary = await userClient(td, "owner", { cryptoStream: false });
  shared = await userClient(td, "shared");
  other = await userClient(td, "other");
  co = await officerClient(td);
}, 120_000);

afterAll(async () => {
  for (const c of [owner, ownerUnary, shared, other, co]) c?.close();
  await td?.cleanup();
});

/** The status name of a call's answer ("OK" when it succeeds). */
async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    return (e as HsmClientError).codeName;
  }
}

/** Throws a batch's first item's error, if any (the item answers for its key). */
function item(res: { results: Array<{ result?: { $case: string; value: unknown } }> }): void {
  const r = res.results[0]!.result!;
  if (r.$case === "error") {
    const e = r.value as { code: number; message: string };
    throw new HsmClientError(e.code, e.message);
  }
}

/** Whether the token holds any object of the key (its objects are labelled hsmd:<id>). */
function tokenHolds(id: string): boolean {
  return pkcs11Tool(td.token, ["--list-objects"]).includes(`hsmd:${id}`);
}

async function until(ok: () => Promise<boolean> | boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("a disabled key", () => {
  const k = {} as Record<"aes" | "p256" | "wrap" | "exportable" | "ecdh", string>;
  let ct: { ciphertext: Buffer; iv: Buffer };
  let sig: Buffer;
  let wdk: Buffer;
  let blob: Buffer;

  beforeAll(async () => {
    const gen = async (spec: KeySpec, usages: KeyUsage[] = [], exportable = false) => (await owner.generateKey({ spec, label: label("fixture"), usages, exportable })).id;
    k.aes = await gen(KeySpec.KEY_SPEC_AES_256);
    k.p256 = await gen(KeySpec.KEY_SPEC_EC_P256);
    k.wrap = await gen(KeySpec.KEY_SPEC_AES_256, [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]);
    k.exportable = await gen(KeySpec.KEY_SPEC_AES_256, [], true);
    k.ecdh = await gen(KeySpec.KEY_SPEC_EC_P256, [KeyUsage.KEY_USAGE_DERIVE]);
    for (const id of Object.values(k)) await owner.shareKey({ keyId: id, username: "shared" });
    ct = await owner.encrypt({ keyId: k.aes, algorithm: GCM, plaintext: message });
    sig = Buffer.from((await owner.sign({ keyId: k.p256, algorithm: ES256, message })).signature);
    wdk = Buffer.from((await owner.generateDataKeyWithoutPlaintext({ keyId: k.aes })).wrappedDataKey);
    blob = Buffer.from((await owner.wrapKey({ wrappingKeyId: k.wrap, keyId: k.exportable, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP })).wrappedKey);
  }, 60_000);

  /** Every use of the fixture keys by `c` (unary or over the stream, as `c` was made); WrapKey is its owner's only. */
  const uses = (c: HsmClient) => {
    const all = allUses(c);
    if (c === shared) delete (all as Partial<typeof all>).wrapKey;
    return all;
  };
  const allUses = (c: HsmClient) => ({
    encrypt: () => c.encrypt({ keyId: k.aes, algorithm: GCM, plaintext: message }),
    decrypt: () => c.decrypt({ keyId: k.aes, algorithm: GCM, ...ct }),
    sign: () => c.sign({ keyId: k.p256, algorithm: ES256, message }),
    verify: () => c.verify({ keyId: k.p256, algorithm: ES256, message, signature: sig }),
    generateDataKey: () => c.generateDataKey({ keyId: k.aes }),
    generateDataKeyWithoutPlaintext: () => c.generateDataKeyWithoutPlaintext({ keyId: k.aes }),
    decryptDataKey: () => c.decryptDataKey({ keyId: k.aes, wrappedDataKey: wdk }),
    wrapKey: () => c.wrapKey({ wrappingKeyId: k.wrap, keyId: k.exportable, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP }),
    unwrapKey: () => c.unwrapKey({ unwrappingKeyId: k.wrap, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP, wrappedKey: blob, spec: KeySpec.KEY_SPEC_AES_256, label: label("unw") }),
    deriveKey: () => c.deriveKey({ privateKeyId: k.ecdh, peerPublicKeySpki: peer(), spec: KeySpec.KEY_SPEC_AES_256, label: label("drv") }),
    getPublicKey: () => c.getPublicKey({ keyId: k.p256 }),
    batchEncrypt: async () => item(await c.batchEncrypt({ items: [{ keyId: k.aes, algorithm: GCM, plaintext: message }] })),
    batchDecrypt: async () => item(await c.batchDecrypt({ items: [{ keyId: k.aes, algorithm: GCM, ...ct }] })),
    batchSign: async () => item(await c.batchSign({ items: [{ keyId: k.p256, algorithm: ES256, message }] })),
    batchVerify: async () => item(await c.batchVerify({ items: [{ keyId: k.p256, algorithm: ES256, message, signature: sig }] })),
  });

  it("works while ENABLED, for the owner and a user it is shared with", async () => {
    for (const c of [owner, ownerUnary, shared]) for (const [name, use] of Object.entries(uses(c))) expect(`${name}: ${await code(use())}`).toBe(`${name}: OK`);
  });

  it("refuses every use, unary, per batch item and over the stream, with FAILED_PRECONDITION naming DISABLED; management still works; EnableKey brings it back", async () => {
    for (const id of Object.values(k)) expect((await owner.disableKey({ keyId: id })).state).toBe(KeyState.KEY_STATE_DISABLED);
    // Idempotent.
    expect((await owner.disableKey({ keyId: k.aes })).state).toBe(KeyState.KEY_STATE_DISABLED);
    for (const c of [owner, ownerUnary, shared]) {
      for (const [name, use] of Object.entries(uses(c))) {
        const e = await expectError(use(), "FAILED_PRECONDITION", "is DISABLED", "EnableKey");
        expect(e.details, name).toMatch(/key [0-9a-f-]{36} is DISABLED/);
      }
    }
    // The stream answers per message: one disabled key does not end it for the others.
    const live = (await owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: label("live") })).id;
    expect((await owner.encrypt({ keyId: live, algorithm: GCM, plaintext: message })).ciphertext.length).toBeGreaterThan(0);
    // Management in every state.
    expect((await owner.getKey({ keyId: k.aes })).state).toBe(KeyState.KEY_STATE_DISABLED);
    expect((await shared.getKey({ keyId: k.aes })).state).toBe(KeyState.KEY_STATE_DISABLED);
    await owner.tagKey({ keyId: k.aes, tags: { env: "test" } });
    await owner.updateKeyDescription({ keyId: k.aes, description: "disabled for a while" });
    await owner.shareKey({ keyId: k.aes, username: "other" });
    await owner.unshareKey({ keyId: k.aes, username: "other" });
    expect((await owner.listKeys({ state: KeyState.KEY_STATE_DISABLED })).keys.map((x) => x.id).sort()).toEqual(Object.values(k).sort());
    for (const id of Object.values(k)) expect((await owner.enableKey({ keyId: id })).state).toBe(KeyState.KEY_STATE_ENABLED);
    expect((await owner.enableKey({ keyId: k.aes })).state).toBe(KeyState.KEY_STATE_ENABLED);
    for (const c of [owner, ownerUnary]) for (const [name, use] of Object.entries(uses(c))) expect(`${name}: ${await code(use())}`).toBe(`${name}: OK`);
  });

  it("is enabled and disabled by its owner only", async () => {
    await expectError(shared.disableKey({ keyId: k.aes }), "PERMISSION_DENIED");
    await expectError(other.disableKey({ keyId: k.aes }), "NOT_FOUND");
    await expectError(co.disableKey({ keyId: k.aes }), "PERMISSION_DENIED");
    await expectError(owner.disableKey({ keyId: "no-such-key" }), "NOT_FOUND");
    await expectError(owner.enableKey({ keyId: "bad id!" }), "INVALID_ARGUMENT");
    expect((await owner.getKey({ keyId: k.aes })).state).toBe(KeyState.KEY_STATE_ENABLED);
  });
});

describe("scheduled deletion", () => {
  it("takes a window within lifecycle.deletionWindowDays (0: the max); refuses the rest naming the bounds", async () => {
    const id = (await owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: label("win") })).id;
    for (const days of [1, 6, 31, 1000]) await expectError(owner.scheduleKeyDeletion({ keyId: id, pendingWindowDays: days }), "INVALID_ARGUMENT", "7 to 30");
    expect((await owner.getKey({ keyId: id })).state).toBe(KeyState.KEY_STATE_ENABLED);
    const t0 = Date.now();
    const k = await owner.scheduleKeyDeletion({ keyId: id, pendingWindowDays: 0 });
    expect(k.state).toBe(KeyState.KEY_STATE_PENDING_DELETION);
    const due = Date.parse(k.deletionDate) - t0;
    expect(due).toBeGreaterThanOrEqual(30 * DAY_MS - 1000);
    expect(due).toBeLessThanOrEqual(30 * DAY_MS + 1000);
    await expectError(owner.scheduleKeyDeletion({ keyId: id, pendingWindowDays: 30 }), "FAILED_PRECONDITION", "already PENDING_DELETION", "CancelKeyDeletion");
    await expectError(owner.encrypt({ keyId: id, algorithm: GCM, plaintext: message }), "FAILED_PRECONDITION", "PENDING_DELETION", "CancelKeyDeletion");
    await expectError(owner.enableKey({ keyId: id }), "FAILED_PRECONDITION", "cancel the deletion first");
    await expectError(owner.disableKey({ keyId: id }), "FAILED_PRECONDITION", "PENDING_DELETION");
    await expectError(shared.cancelKeyDeletion({ keyId: id }), "NOT_FOUND");
    expect((await owner.cancelKeyDeletion({ keyId: id })).state).toBe(KeyState.KEY_STATE_ENABLED);
    await expectError(owner.cancelKeyDeletion({ keyId: id }), "FAILED_PRECONDITION", "not PENDING_DELETION");
    await owner.deleteKey({ keyId: id });
  });

  it("cancel restores the state the key had (ENABLED: usable again; DISABLED stays disabled)", async () => {
    const a = (await owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: label("cancel") })).id;
    await owner.scheduleKeyDeletion({ keyId: a, pendingWindowDays: 30 });
    const back = await owner.cancelKeyDeletion({ keyId: a });
    expect(back.state).toBe(KeyState.KEY_STATE_ENABLED);
    expect(back.deletionDate).toBe("");
    expect((await owner.encrypt({ keyId: a, algorithm: GCM, plaintext: message })).ciphertext.length).toBeGreaterThan(0);
    await owner.disableKey({ keyId: a });
    await owner.scheduleKeyDeletion({ keyId: a, pendingWindowDays: 30 });
    expect((await owner.cancelKeyDeletion({ keyId: a })).state).toBe(KeyState.KEY_STATE_DISABLED);
    await owner.deleteKey({ keyId: a });
  });

  it("destroys the key when the window ends: record gone, objects gone from the token, one audit entry", async () => {
    const id = (await owner.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: label("doomed") })).id;
    await owner.sign({ keyId: id, algorithm: ES256, message });
    expect(tokenHolds(id)).toBe(true);
    const k = await owner.scheduleKeyDeletion({ keyId: id, pendingWindowDays: 7 });
    expect(k.state).toBe(KeyState.KEY_STATE_PENDING_DELETION);
    expect((await owner.listKeys({ state: KeyState.KEY_STATE_PENDING_DELETION })).keys.map((x) => x.id)).toEqual([id]);
    await until(async () => (await code(owner.getKey({ keyId: id }))) === "NOT_FOUND", "the scheduled deletion");
    await expectError(owner.sign({ keyId: id, algorithm: ES256, message }), "NOT_FOUND");
    await td.daemon.applier.applied();
    await until(() => !tokenHolds(id), "the objects to be destroyed");
    const audit = (await co.queryAuditLog({ operation: "ScheduledKeyDeletion", limit: 100 })).entries.filter((e) => e.keyId === id);
    expect(audit).toHaveLength(1);
    expect(audit[0]!.detail).toContain("deletion date");
  });
});

describe("description and tags", () => {
  it("are set at GenerateKey, updated, removed and bounded; ListKeys filters by tag", async () => {
    const k = await owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: label("meta"), description: "first", tags: { team: "red", env: "prod" } });
    expect(k.description).toBe("first");
    expect(k.tags).toEqual({ team: "red", env: "prod" });
    expect((await owner.updateKeyDescription({ keyId: k.id, description: "second\nline" })).description).toBe("second\nline");
    expect((await owner.updateKeyDescription({ keyId: k.id, description: "" })).description).toBe("");
    expect((await owner.tagKey({ keyId: k.id, tags: { team: "blue", tier: "" } })).tags).toEqual({ env: "prod", team: "blue", tier: "" });
    expect((await owner.untagKey({ keyId: k.id, tagKeys: ["tier", "unknown"] })).tags).toEqual({ env: "prod", team: "blue" });
    expect((await shared.listKeys({})).keys.map((x) => x.id)).not.toContain(k.id);
    await owner.shareKey({ keyId: k.id, username: "shared" });
    expect((await shared.getKey({ keyId: k.id })).tags).toEqual({ env: "prod", team: "blue" });
    await expectError(shared.tagKey({ keyId: k.id, tags: { a: "b" } }), "PERMISSION_DENIED");
    await expectError(shared.updateKeyDescription({ keyId: k.id, description: "x" }), "PERMISSION_DENIED");
    await expectError(other.untagKey({ keyId: k.id, tagKeys: ["env"] }), "NOT_FOUND");
    // Bounds.
    await expectError(owner.updateKeyDescription({ keyId: k.id, description: "x".repeat(8193) }), "INVALID_ARGUMENT", "8192");
    expect((await owner.updateKeyDescription({ keyId: k.id, description: "y".repeat(8192) })).description.length).toBe(8192);
    await expectError(owner.updateKeyDescription({ keyId: k.id, description: "bell\u0007" }), "INVALID_ARGUMENT", "control");
    await expectError(owner.tagKey({ keyId: k.id, tags: { ["k".repeat(129)]: "v" } }), "INVALID_ARGUMENT", "128");
    await expectError(owner.tagKey({ keyId: k.id, tags: { "": "v" } }), "INVALID_ARGUMENT", "empty");
    await expectError(owner.tagKey({ keyId: k.id, tags: { "a\nb": "v" } }), "INVALID_ARGUMENT", "printable");
    await expectError(owner.tagKey({ keyId: k.id, tags: { v: "v".repeat(257) } }), "INVALID_ARGUMENT", "256");
    await expectError(owner.tagKey({ keyId: k.id, tags: {} }), "INVALID_ARGUMENT", "empty");
    const many = Object.fromEntries(Array.from({ length: 48 }, (_, i) => [`t${i}`, "x"]));
    expect(Object.keys((await owner.tagKey({ keyId: k.id, tags: many })).tags)).toHaveLength(50);
    await expectError(owner.tagKey({ keyId: k.id, tags: { one: "more" } }), "INVALID_ARGUMENT", "50");
    await expectError(
      owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: label("meta"), tags: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`t${i}`, "x"])) }),
      "INVALID_ARGUMENT",
      "50",
    );
    await expectError(owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: label("meta"), description: "z".repeat(8193) }), "INVALID_ARGUMENT", "8192");
    // ListKeys by tag (and value) and by state.
    const other1 = await owner.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: label("meta"), tags: { team: "green" } });
    const ids = async (q: object) => (await owner.listKeys(q)).keys.map((x) => x.id).sort();
    expect(await ids({ tagKey: "team" })).toEqual([k.id, other1.id].sort());
    expect(await ids({ tagKey: "team", tagValue: "blue" })).toEqual([k.id]);
    expect(await ids({ tagKey: "team", tagValue: "green", state: KeyState.KEY_STATE_ENABLED })).toEqual([other1.id]);
    await owner.disableKey({ keyId: other1.id });
    expect(await ids({ tagKey: "team", state: KeyState.KEY_STATE_ENABLED })).toEqual([k.id]);
    expect(await ids({ tagKey: "team", state: KeyState.KEY_STATE_DISABLED })).toEqual([other1.id]);
    expect(await ids({ tagKey: "nobody-has-this" })).toEqual([]);
    await expectError(owner.listKeys({ tagValue: "blue" }), "INVALID_ARGUMENT", "tag_key");
    await expectError(owner.listKeys({ state: 99 as KeyState }), "INVALID_ARGUMENT", "KeyState");
    expect(await (async () => (await shared.listKeys({ tagKey: "team" })).keys.map((x) => x.id))()).toEqual([k.id]);
  });
});
