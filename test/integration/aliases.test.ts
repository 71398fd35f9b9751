/**
 * Aliases (issue 13) against a real daemon on a SoftHSM2 token, over real gRPC: CreateAlias,
 * UpdateAlias, DeleteAlias, ListAliases and their bad paths; "alias/NAME" in place of a key id in
 * every key-taking call (unary, batch items, the crypto stream), checked with Node's crypto; who may
 * see an alias (its owner, the users its key is shared with, nobody else); ListKeys' alias filter
 * and Key.aliases.
 */
import * as crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, SigningAlgorithm, WrapAlgorithm, wrapForImport } from "../../src/sdk";
import type { CryptoServiceClient } from "../../src/gen/hsm/v1/crypto";
import { TestStream, cryptoClient, outcome } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { officerClient, userClient } from "../helpers/users";

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;
let carol: HsmClient;
let stream: CryptoServiceClient;
const k = {} as Record<"aes" | "aes2" | "aes128" | "aesMac" | "p256" | "p384" | "rsa" | "hmac" | "wrap" | "exportable" | "bobAes", string>;
const hmacKey = crypto.randomBytes(32);
const msg = Buffer.from("aliased message");
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
let seq = 0;
const fresh = (p: string) => `alias/${p}-${++seq}`;

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
  carol = await userClient(td, "carol");
  const gen = async (spec: KeySpec, usages: KeyUsage[] = [], exportable = false, c = alice) => (await c.generateKey({ spec, label: "aliased", usages, exportable })).id;
  k.aes = await gen(KeySpec.KEY_SPEC_AES_256);
  k.aes2 = await gen(KeySpec.KEY_SPEC_AES_256);
  k.aes128 = await gen(KeySpec.KEY_SPEC_AES_128);
  k.aesMac = await gen(KeySpec.KEY_SPEC_AES_256, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY]);
  k.p256 = await gen(KeySpec.KEY_SPEC_EC_P256);
  k.p384 = await gen(KeySpec.KEY_SPEC_EC_P384);
  k.rsa = await gen(KeySpec.KEY_SPEC_RSA_2048);
  k.wrap = await gen(KeySpec.KEY_SPEC_AES_256, [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]);
  k.exportable = await gen(KeySpec.KEY_SPEC_AES_256, [], true);
  k.bobAes = await gen(KeySpec.KEY_SPEC_AES_256, [], false, bob);
  const p = await alice.getImportParameters({});
  const blob = wrapForImport(Buffer.from(p.publicKeySpki), hmacKey, p.wrappingAlgorithm);
  k.hmac = (await alice.importKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "hmac", importKeyId: p.importKeyId, wrappedKeyMaterial: blob })).id;
  for (const id of [k.aes, k.p256, k.hmac]) await alice.shareKey({ keyId: id, username: "bob" });
  stream = cryptoClient(td.grpc);
}, 120_000);

afterAll(async () => {
  stream?.close();
  for (const c of [alice, bob, carol]) c?.close();
  await td?.cleanup();
});

describe("alias lifecycle", () => {
  it("creates, resolves, re-points, lists and deletes an alias", async () => {
    const name = fresh("life");
    const a = await alice.createAlias({ aliasName: name, targetKeyId: k.aes });
    expect(a).toMatchObject({ name, targetKeyId: k.aes, owner: "alice" });
    expect(a.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect((await alice.getKey({ keyId: name })).id).toBe(k.aes);
    const moved = await alice.updateAlias({ aliasName: name, targetKeyId: k.aes2 });
    expect(moved).toMatchObject({ name, targetKeyId: k.aes2, createdAt: a.createdAt });
    expect((await alice.getKey({ keyId: name })).id).toBe(k.aes2);
    // Same family: AES-256 → AES-128 with the same usages is allowed.
    expect((await alice.updateAlias({ aliasName: name, targetKeyId: k.aes128 })).targetKeyId).toBe(k.aes128);
    // Re-pointing where it already points changes nothing.
    expect((await alice.updateAlias({ aliasName: name, targetKeyId: k.aes128 })).targetKeyId).toBe(k.aes128);
    // target_key_id may itself be an alias.
    const second = fresh("second");
    expect((await alice.createAlias({ aliasName: second, targetKeyId: name })).targetKeyId).toBe(k.aes128);
    const mine = (await alice.listAliases({ keyId: k.aes128 })).aliases.map((x) => x.name);
    expect(mine).toEqual([name, second].sort());
    expect((await alice.listAliases({ keyId: second })).aliases.map((x) => x.name)).toEqual(mine);
    await alice.deleteAlias({ aliasName: name });
    await expectError(alice.getKey({ keyId: name }), "NOT_FOUND", `${name} not found`);
    await expectError(alice.deleteAlias({ aliasName: name }), "NOT_FOUND");
    // The key stays.
    expect((await alice.getKey({ keyId: k.aes128 })).id).toBe(k.aes128);
  });

  it("refuses bad names with the rule", async () => {
    const bad: Array<[string, RegExp]> = [
      ["", /alias_name is required/],
      ["payments", /does not start with "alias\/"/],
      ["alias/", /nothing after "alias\/"/],
      ["alias/has space", /character outside/],
      ["alias/dot.name", /character outside/],
      [`alias/${"x".repeat(251)}`, /251 characters .* more than 250/],
      ["alias/hsmd/mine", /reserved for hsmd/],
    ];
    for (const [aliasName, why] of bad) await expectError(alice.createAlias({ aliasName, targetKeyId: k.aes }), "INVALID_ARGUMENT", why);
    // 250 characters and every allowed character are fine.
    await alice.createAlias({ aliasName: `alias/${"y".repeat(250)}`, targetKeyId: k.aes });
    await alice.createAlias({ aliasName: `alias/A-z_0/9-${++seq}`, targetKeyId: k.aes });
    // A malformed alias where a key id goes is INVALID_ARGUMENT naming the field.
    await expectError(alice.encrypt({ keyId: "alias/no spaces", algorithm: GCM, plaintext: msg }), "INVALID_ARGUMENT", "key_id");
  });

  it("a taken name is FAILED_PRECONDITION (UpdateAlias re-points it), for its owner and for anyone else", async () => {
    const name = fresh("dup");
    await alice.createAlias({ aliasName: name, targetKeyId: k.aes });
    await expectError(alice.createAlias({ aliasName: name, targetKeyId: k.aes2 }), "FAILED_PRECONDITION", `${name} already exists: UpdateAlias re-points it`);
    await expectError(bob.createAlias({ aliasName: name, targetKeyId: k.bobAes }), "FAILED_PRECONDITION", "already exists");
    expect((await alice.getKey({ keyId: name })).id).toBe(k.aes);
  });

  it("re-points only to a key of the same type and usages, naming both keys", async () => {
    const name = fresh("repoint");
    await alice.createAlias({ aliasName: name, targetKeyId: k.aes });
    await expectError(alice.updateAlias({ aliasName: name, targetKeyId: k.p256 }), "FAILED_PRECONDITION", k.aes, k.p256, "same type");
    await expectError(alice.updateAlias({ aliasName: name, targetKeyId: k.aesMac }), "FAILED_PRECONDITION", k.aes, k.aesMac, "same usages");
    const ec = fresh("ec");
    await alice.createAlias({ aliasName: ec, targetKeyId: k.p256 });
    await expectError(alice.updateAlias({ aliasName: ec, targetKeyId: k.rsa }), "FAILED_PRECONDITION", "same type");
    expect((await alice.updateAlias({ aliasName: ec, targetKeyId: k.p384 })).targetKeyId).toBe(k.p384);
    expect((await alice.getKey({ keyId: name })).id).toBe(k.aes);
  });

  it("only the alias's owner re-points or deletes it; the key's owner must own the target", async () => {
    const name = fresh("owned");
    await alice.createAlias({ aliasName: name, targetKeyId: k.aes });
    // bob may use k.aes (shared) and so sees the alias, but does not own it.
    await expectError(bob.updateAlias({ aliasName: name, targetKeyId: k.bobAes }), "PERMISSION_DENIED", "belongs to alice");
    await expectError(bob.deleteAlias({ aliasName: name }), "PERMISSION_DENIED", "belongs to alice");
    // carol cannot see it at all: as an unknown alias.
    await expectError(carol.deleteAlias({ aliasName: name }), "NOT_FOUND", `${name} not found`);
    // Making an alias of a key needs its ownership (bob only uses k.aes).
    await expectError(bob.createAlias({ aliasName: fresh("bobs"), targetKeyId: k.aes }), "PERMISSION_DENIED");
    await expectError(carol.createAlias({ aliasName: fresh("carols"), targetKeyId: k.aes }), "NOT_FOUND");
    // Re-pointing to a key the caller does not own is refused by the key check.
    await expectError(alice.updateAlias({ aliasName: name, targetKeyId: k.bobAes }), "NOT_FOUND");
    await expectError(alice.updateAlias({ aliasName: fresh("unknown"), targetKeyId: k.aes2 }), "NOT_FOUND", "not found");
    expect((await alice.getKey({ keyId: name })).id).toBe(k.aes);
  });
});

describe("alias/NAME in place of a key id", () => {
  let aes: string;
  let p256: string;
  let hmac: string;
  let wrap: string;
  let exportable: string;

  beforeAll(async () => {
    [aes, p256, hmac, wrap, exportable] = ["use-aes", "use-p256", "use-hmac", "use-wrap", "use-exportable"].map(fresh) as [string, string, string, string, string];
    await alice.createAlias({ aliasName: aes, targetKeyId: k.aes });
    await alice.createAlias({ aliasName: p256, targetKeyId: k.p256 });
    await alice.createAlias({ aliasName: hmac, targetKeyId: k.hmac });
    await alice.createAlias({ aliasName: wrap, targetKeyId: k.wrap });
    await alice.createAlias({ aliasName: exportable, targetKeyId: k.exportable });
  });

  it("encrypt and decrypt through the alias, interchangeably with the key id; the answers name the key", async () => {
    const e = await alice.encrypt({ keyId: aes, algorithm: GCM, plaintext: msg });
    expect(e.keyId).toBe(k.aes);
    const d = await alice.decrypt({ keyId: k.aes, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv, ciphertextBlob: e.ciphertextBlob });
    expect(Buffer.from(d.plaintext)).toEqual(msg);
    const e2 = await alice.encrypt({ keyId: k.aes, algorithm: GCM, plaintext: msg });
    expect(Buffer.from((await alice.decrypt({ keyId: aes, algorithm: GCM, ciphertext: e2.ciphertext, iv: e2.iv, ciphertextBlob: e2.ciphertextBlob })).plaintext)).toEqual(msg);
  });

  it("the audit entry names the key the alias resolved to, and the alias (unary calls; the stream's counts name the key)", async () => {
    expect((await alice.getKey({ keyId: aes })).id).toBe(k.aes);
    await alice.batchEncrypt({ items: [{ keyId: aes, algorithm: GCM, plaintext: msg }] });
    await expectError(alice.getKey({ keyId: "alias/audit-missing" }), "NOT_FOUND");
    const co = await officerClient(td);
    try {
      const got = (await co.queryAuditLog({ operation: "GetKey", keyId: k.aes, limit: 1000 })).entries;
      expect(got.some((x) => x.user === "alice" && x.status === "OK" && x.detail === `key named by ${aes}`)).toBe(true);
      const batch = (await co.queryAuditLog({ operation: "BatchEncrypt", keyId: k.aes, limit: 1000 })).entries;
      expect(batch.map((x) => x.status)).toContain("OK");
      const refused = (await co.queryAuditLog({ operation: "GetKey", keyId: "alias/audit-missing", limit: 10 })).entries;
      expect(refused.map((x) => x.status)).toEqual(["NOT_FOUND"]);
    } finally {
      co.close();
    }
  });

  it("sign, verify and GetPublicKey through the alias, checked with Node", async () => {
    const pub = await alice.getPublicKey({ keyId: p256 });
    expect(pub.keyId).toBe(k.p256);
    const s = await alice.sign({ keyId: p256, algorithm: ECDSA, message: msg });
    expect(s.keyId).toBe(k.p256);
    const node = crypto.createPublicKey({ key: Buffer.from(pub.spkiDer), format: "der", type: "spki" });
    expect(crypto.verify("sha256", msg, { key: node, dsaEncoding: "der" }, Buffer.from(s.signature))).toBe(true);
    expect((await alice.verify({ keyId: p256, algorithm: ECDSA, message: msg, signature: s.signature })).valid).toBe(true);
    const mac = await alice.sign({ keyId: hmac, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: msg });
    expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac("sha256", hmacKey).update(msg).digest());
  });

  it("GenerateDataKey and DecryptDataKey through the alias: the data key works with Node", async () => {
    const dk = await alice.generateDataKey({ keyId: aes, encryptionContext: { t: "1" } });
    expect(dk.keyId).toBe(k.aes);
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv("aes-256-gcm", dk.plaintextDataKey, iv);
    const ct = Buffer.concat([c.update(msg), c.final()]);
    const tag = c.getAuthTag();
    const back = await alice.decryptDataKey({ keyId: aes, wrappedDataKey: dk.wrappedDataKey, encryptionContext: { t: "1" } });
    const d = crypto.createDecipheriv("aes-256-gcm", back.plaintextDataKey, iv).setAuthTag(tag);
    expect(Buffer.concat([d.update(ct), d.final()])).toEqual(msg);
    expect((await alice.generateDataKeyWithoutPlaintext({ keyId: aes })).plaintextDataKey.length).toBe(0);
  });

  it("WrapKey and UnwrapKey through aliases wrap exactly as the key ids do (AES-KWP is deterministic)", async () => {
    const kwp = WrapAlgorithm.WRAP_ALGORITHM_AES_KWP;
    const byAlias = await alice.wrapKey({ wrappingKeyId: wrap, keyId: exportable, algorithm: kwp });
    const byId = await alice.wrapKey({ wrappingKeyId: k.wrap, keyId: k.exportable, algorithm: kwp });
    expect(Buffer.from(byAlias.wrappedKey)).toEqual(Buffer.from(byId.wrappedKey));
    const u = await alice.unwrapKey({ unwrappingKeyId: wrap, algorithm: kwp, wrappedKey: byAlias.wrappedKey, spec: KeySpec.KEY_SPEC_AES_256, label: "unwrapped", exportable: true });
    expect(Buffer.from((await alice.wrapKey({ wrappingKeyId: wrap, keyId: u.id, algorithm: kwp })).wrappedKey)).toEqual(Buffer.from(byId.wrappedKey));
  });

  it("batch items take aliases; an item whose alias the caller cannot see fails alone with NOT_FOUND", async () => {
    const res = await alice.batchSign({
      items: [
        { keyId: p256, algorithm: ECDSA, message: msg },
        { keyId: "alias/nobody-has-this", algorithm: ECDSA, message: msg },
        { keyId: k.p256, algorithm: ECDSA, message: msg },
      ],
    });
    expect(res.results.map((r) => r.result?.$case === "error")).toEqual([false, true, false]);
    const err = res.results[1]!.result!.value as { code: number; message: string };
    expect(err.code).toBe(5);
    expect(err.message).toContain("alias/nobody-has-this not found");
    const enc = await alice.batchEncrypt({ items: [{ keyId: aes, algorithm: GCM, plaintext: msg }] });
    expect(enc.results[0]!.result!.$case).not.toBe("error");
  });

  it("the crypto stream resolves aliases per message, as unary does", async () => {
    const s = new TestStream(stream, alice.exportSession()!.token);
    const signed = await s.request(1, { $case: "sign", value: { keyId: p256, algorithm: ECDSA, message: msg, messageType: 0, signatureFormat: 0, macLength: 0 } });
    expect(outcome(signed)).toEqual({ code: "OK", case: "sign" });
    const sig = (signed.result as { value: { signature: Buffer; keyId: string } }).value;
    expect(sig.keyId).toBe(k.p256);
    const pub = await alice.getPublicKey({ keyId: k.p256 });
    expect(crypto.verify("sha256", msg, crypto.createPublicKey({ key: Buffer.from(pub.spkiDer), format: "der", type: "spki" }), Buffer.from(sig.signature))).toBe(true);
    const missing = await s.request(2, { $case: "sign", value: { keyId: "alias/not-there", algorithm: ECDSA, message: msg, messageType: 0, signatureFormat: 0, macLength: 0 } });
    expect(outcome(missing)).toMatchObject({ code: "NOT_FOUND", message: "alias/not-there not found" });
    const dk = await s.request(3, { $case: "generateDataKey", value: { keyId: aes, spec: 0, encryptionContext: {} } as never });
    expect(outcome(dk).code).toBe("OK");
    s.close();
    expect((await s.ended).codeName).toBe("OK");
  });
});

describe("who sees an alias", () => {
  it("resolves for the users its key is shared with, NOT_FOUND for others, and after unsharing", async () => {
    const name = fresh("shared");
    const key = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "to-share" })).id;
    await alice.createAlias({ aliasName: name, targetKeyId: key });
    await expectError(bob.sign({ keyId: name, algorithm: ECDSA, message: msg }), "NOT_FOUND", `${name} not found`);
    await alice.shareKey({ keyId: key, username: "bob" });
    expect((await bob.sign({ keyId: name, algorithm: ECDSA, message: msg })).keyId).toBe(key);
    expect((await bob.getKey({ keyId: name })).aliases).toContain(name);
    expect((await bob.listAliases({})).aliases.map((a) => a.name)).toContain(name);
    // A shared user may use, not own: owner-only calls through the alias answer as with the id.
    await expectError(bob.deleteKey({ keyId: name }), "PERMISSION_DENIED");
    // carol: exactly as an unknown alias, everywhere.
    const unknown = fresh("never-made");
    for (const n of [name, unknown]) {
      await expectError(carol.sign({ keyId: n, algorithm: ECDSA, message: msg }), "NOT_FOUND", `${n} not found`);
      await expectError(carol.getKey({ keyId: n }), "NOT_FOUND", `${n} not found`);
      await expectError(carol.listAliases({ keyId: n }), "NOT_FOUND", `${n} not found`);
      expect((await carol.listKeys({ alias: n })).keys).toEqual([]);
    }
    expect((await carol.listAliases({})).aliases.map((a) => a.name)).not.toContain(name);
    await alice.unshareKey({ keyId: key, username: "bob" });
    await expectError(bob.sign({ keyId: name, algorithm: ECDSA, message: msg }), "NOT_FOUND", `${name} not found`);
    expect((await bob.listAliases({})).aliases.map((a) => a.name)).not.toContain(name);
  });

  it("DeleteKey deletes the key's aliases with it", async () => {
    const key = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "doomed" })).id;
    const [a1, a2] = [fresh("doomed"), fresh("doomed")];
    await alice.createAlias({ aliasName: a1, targetKeyId: key });
    await alice.createAlias({ aliasName: a2, targetKeyId: key });
    await alice.deleteKey({ keyId: a1 });
    for (const n of [a1, a2]) await expectError(alice.encrypt({ keyId: n, algorithm: GCM, plaintext: msg }), "NOT_FOUND", `${n} not found`);
    expect((await alice.listAliases({})).aliases.map((a) => a.name)).not.toContain(a1);
    expect(await td.daemon.store.get(`aliases/${a2.slice("alias/".length)}`)).toBeUndefined();
    // The name is free again.
    await alice.createAlias({ aliasName: a1, targetKeyId: k.aes });
  });

  it("an alias whose key is gone (a row written past the key's deletion) answers NOT_FOUND naming the key", async () => {
    const key = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "gone" })).id;
    await alice.deleteKey({ keyId: key });
    const name = fresh("dangling");
    const at = new Date().toISOString();
    const { userId } = await td.daemon.users.authenticate(alice.exportSession()!.token);
    const row = { name, targetKeyId: key, owner: { user: "alice", userId }, createdAt: at, updatedAt: at };
    await td.daemon.store.put(`aliases/${name.slice("alias/".length)}`, Buffer.from(JSON.stringify(row)));
    await expectError(alice.encrypt({ keyId: name, algorithm: GCM, plaintext: msg }), "NOT_FOUND", `${name} points at key ${key}, which no longer exists`);
    await expectError(bob.encrypt({ keyId: name, algorithm: GCM, plaintext: msg }), "NOT_FOUND", `${name} not found`);
    // Its owner repairs it by re-pointing (to any key: there is no current key to match).
    expect((await alice.updateAlias({ aliasName: name, targetKeyId: k.p256 })).targetKeyId).toBe(k.p256);
  });
});

describe("ListKeys and GetKey", () => {
  it("the alias filter lists only that key, Key.aliases names every alias of the key", async () => {
    const key = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "listed" })).id;
    const [a1, a2] = [fresh("listed-b"), fresh("listed-a")];
    await alice.createAlias({ aliasName: a1, targetKeyId: key });
    await alice.createAlias({ aliasName: a2, targetKeyId: key });
    const page = await alice.listKeys({ alias: a1 });
    expect(page.keys.map((x) => x.id)).toEqual([key]);
    expect(page.nextPageToken).toBe("");
    expect(page.keys[0]!.aliases).toEqual([a1, a2].sort());
    expect((await alice.getKey({ keyId: key })).aliases).toEqual([a1, a2].sort());
    // The other filters still apply.
    expect((await alice.listKeys({ alias: a1, labelPrefix: "other" })).keys).toEqual([]);
    const all = await alice.listKeys({ pageSize: 1000 });
    expect(all.keys.find((x) => x.id === key)?.aliases).toEqual([a1, a2].sort());
    expect(all.keys.find((x) => x.id === k.rsa)?.aliases).toEqual([]);
    await expectError(alice.listKeys({ alias: "no-prefix" }), "INVALID_ARGUMENT", "alias");
  });

  it("ListAliases pages with an opaque token and validates its input", async () => {
    const key = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "paged" })).id;
    const names = [0, 1, 2, 3, 4].map(() => fresh("paged"));
    for (const n of names) await alice.createAlias({ aliasName: n, targetKeyId: key });
    const seen: string[] = [];
    let pageToken = "";
    do {
      const p = await alice.listAliases({ keyId: key, pageSize: 2, pageToken });
      expect(p.aliases.length).toBeLessThanOrEqual(2);
      seen.push(...p.aliases.map((a) => a.name));
      pageToken = p.nextPageToken;
    } while (pageToken);
    expect(seen).toEqual([...names].sort());
    const walked: string[] = [];
    for await (const a of alice.listAllAliases({ keyId: key, pageSize: 3 })) walked.push(a.name);
    expect(walked).toEqual(seen);
    await expectError(alice.listAliases({ pageSize: 1001 }), "INVALID_ARGUMENT", "page_size");
    await expectError(alice.listAliases({ pageToken: "bm90LW1pbmU" }), "INVALID_ARGUMENT", "page_token");
    await expectError(alice.listAliases({ keyId: "not a key" }), "INVALID_ARGUMENT", "key_id");
  });
});
