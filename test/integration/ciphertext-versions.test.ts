/**
 * Self-describing ciphertexts (docs/CIPHERTEXT.md) through real gRPC to a real daemon on SoftHSM2:
 * Encrypt's blob decrypts with nothing but itself (unary and over the crypto stream), the raw output
 * and the blob are one encryption checked with Node's crypto under known (imported) key material,
 * key versions after rotation and the minimum decryption version, header tampering answered
 * cleanly (never INTERNAL), and data keys in the format before headers (HDK1) still open.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encryptionContextAad } from "../../src/keys";
import { EncryptionAlgorithm, HsmClientError, KeySpec, KeyUsage, type HsmClient } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { importAes, keyServiceCall, knownGeneratedAes } from "../helpers/key-versions";
import { userClient } from "../helpers/users";

const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const CBC = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD;
const CTR = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CTR;

let td: TestDaemon;
let c: HsmClient;
/** The same user without the crypto stream: every call unary. */
let unary: HsmClient;
let other: HsmClient;
const material = randomBytes(32);
let known: string;
/** Whether RotateKey is built on this branch (lane V); the rotation cases skip otherwise. */
let rotation = false;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td, "alice");
  unary = await userClient(td, "alice", { cryptoStream: false });
  other = await userClient(td, "bob");
  known = await importAes(c, material);
  const probe = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "probe" })).id;
  rotation = await keyServiceCall(td.grpc, c, "rotateKey", { keyId: probe, requestId: "" }).then(
    () => true,
    (e: HsmClientError) => !/not built yet/.test(e.details),
  );
}, 120_000);

afterAll(async () => {
  for (const x of [c, unary, other]) x?.close();
  await td?.cleanup();
});

const rotate = (id: string) => keyServiceCall<{ version?: number }>(td.grpc, c, "rotateKey", { keyId: id, requestId: "" });
const setMin = (id: string, v: number) => keyServiceCall(td.grpc, c, "setMinDecryptionVersion", { keyId: id, minDecryptionVersion: v });

/** Reads a blob's header by hand, as docs/CIPHERTEXT.md lays it out. */
function readBlob(b: Buffer) {
  const idLen = b[10]!;
  const keyId = b.subarray(11, 11 + idLen).toString("ascii");
  const ivLen = b[11 + idLen]!;
  const iv = b.subarray(12 + idLen, 12 + idLen + ivLen);
  return { magic: b.subarray(0, 4).toString("ascii"), headerVersion: b[4], kind: b[5], keyVersion: b.readUInt32BE(6), keyId, iv, body: b.subarray(12 + idLen + ivLen), idAt: 11, ivAt: 12 + idLen };
}

describe("Encrypt's ciphertext_blob", () => {
  it("decrypts with nothing but the blob (and the AAD), unary and over the stream", async () => {
    const aad = Buffer.from("row 42");
    const e = await c.encrypt({ keyId: known, algorithm: GCM, plaintext: Buffer.from("hello versions"), aad });
    expect(e.keyVersion).toBe(1);
    for (const client of [c, unary]) {
      const d = await client.decrypt({ ciphertextBlob: e.ciphertextBlob, aad });
      expect(Buffer.from(d.plaintext).toString()).toBe("hello versions");
      expect(d).toMatchObject({ keyId: known, keyVersion: 1 });
      // key_id may also name the same key.
      expect(Buffer.from((await client.decrypt({ keyId: known, ciphertextBlob: e.ciphertextBlob, aad })).plaintext).toString()).toBe("hello versions");
    }
  });

  it("is the documented header over the raw output, which Node's crypto decrypts with the caller's AAD alone", async () => {
    const aad = Buffer.from("context");
    const pt = randomBytes(100);
    const e = await c.encrypt({ keyId: known, algorithm: GCM, plaintext: pt, aad });
    const h = readBlob(Buffer.from(e.ciphertextBlob));
    expect(h).toMatchObject({ magic: "hsm1", headerVersion: 1, kind: 1, keyVersion: 1, keyId: known });
    expect(Buffer.from(h.iv).equals(Buffer.from(e.iv))).toBe(true);
    expect(Buffer.from(h.body).equals(Buffer.from(e.ciphertext))).toBe(true);
    const d = createDecipheriv("aes-256-gcm", material, h.iv);
    d.setAAD(aad);
    d.setAuthTag(h.body.subarray(h.body.length - 16));
    expect(Buffer.concat([d.update(h.body.subarray(0, h.body.length - 16)), d.final()]).equals(pt)).toBe(true);
    // The raw form still decrypts as before.
    expect(Buffer.from((await c.decrypt({ keyId: known, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv, aad })).plaintext).equals(pt)).toBe(true);
  });

  it("CBC-PAD and CTR blobs name their kind and decrypt by header; Node's crypto agrees", async () => {
    const pt = Buffer.from("seventeen bytes!!");
    for (const [alg, kind, node] of [
      [CBC, 2, "aes-256-cbc"],
      [CTR, 3, "aes-256-ctr"],
    ] as const) {
      const e = await c.encrypt({ keyId: known, algorithm: alg, plaintext: pt });
      const h = readBlob(Buffer.from(e.ciphertextBlob));
      expect([h.kind, h.iv.length]).toEqual([kind, 16]);
      const d = createDecipheriv(node, material, h.iv);
      expect(Buffer.concat([d.update(h.body), d.final()]).equals(pt)).toBe(true);
      expect(Buffer.from((await c.decrypt({ ciphertextBlob: e.ciphertextBlob })).plaintext).equals(pt)).toBe(true);
    }
  });

  it("RSA-OAEP answers no blob", async () => {
    const rsa = (await c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] })).id;
    const e = await c.encrypt({ keyId: rsa, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA256, plaintext: Buffer.from("x") });
    expect(e.ciphertextBlob.length).toBe(0);
  });

  it("refuses raw fields beside a blob, another key_id, and a data key, each saying so", async () => {
    const e = await c.encrypt({ keyId: known, algorithm: GCM, plaintext: Buffer.from("x") });
    const b = e.ciphertextBlob;
    const another = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "another" })).id;
    for (const client of [c, unary]) {
      // The whole EncryptResponse passed back decrypts (its raw fields are the blob's own) ...
      expect(Buffer.from((await client.decrypt({ ...e, ciphertextBlob: b, algorithm: GCM, keyVersion: e.keyVersion })).plaintext)).toEqual(Buffer.from("x"));
      // ... any other value beside a blob is refused.
      await expectError(client.decrypt({ ciphertextBlob: b, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CTR }), "INVALID_ARGUMENT", "is not the ciphertext_blob's");
      await expectError(client.decrypt({ ciphertextBlob: b, iv: Buffer.alloc(12, 7) }), "INVALID_ARGUMENT", "must be empty with ciphertext_blob");
      await expectError(client.decrypt({ ciphertextBlob: b, ciphertext: Buffer.from("other") }), "INVALID_ARGUMENT", "must be empty with ciphertext_blob");
      await expectError(client.decrypt({ ciphertextBlob: b, keyVersion: 2 }), "INVALID_ARGUMENT", "its header names version 1");
      await expectError(client.decrypt({ keyId: another, ciphertextBlob: b }), "INVALID_ARGUMENT", another, known);
      const dk = await client.generateDataKeyWithoutPlaintext({ keyId: known });
      await expectError(client.decrypt({ ciphertextBlob: dk.wrappedDataKey }), "INVALID_ARGUMENT", "DecryptDataKey");
    }
  });

  it("another user cannot decrypt a blob naming a key it may not use: NOT_FOUND, as for the key id", async () => {
    const e = await c.encrypt({ keyId: known, algorithm: GCM, plaintext: Buffer.from("mine") });
    await expectError(other.decrypt({ ciphertextBlob: e.ciphertextBlob }), "NOT_FOUND", known);
  });
});

describe("header tampering fails cleanly (never INTERNAL)", () => {
  let blob: Buffer;
  let h: ReturnType<typeof readBlob>;
  beforeAll(async () => {
    blob = Buffer.from((await c.encrypt({ keyId: known, algorithm: GCM, plaintext: Buffer.from("tamper"), aad: Buffer.from("a") })).ciphertextBlob);
    h = readBlob(blob);
  });
  const edited = (fn: (b: Buffer) => void) => {
    const b = Buffer.from(blob);
    fn(b);
    return b;
  };

  it("the version: a version the key does not have is NOT_FOUND naming it", async () => {
    for (const client of [c, unary]) await expectError(client.decrypt({ ciphertextBlob: edited((b) => b.writeUInt32BE(7, 6)), aad: Buffer.from("a") }), "NOT_FOUND", "no version 7");
  });

  it("the key id: another key of the caller's fails authentication; an unknown one is NOT_FOUND", async () => {
    const mine = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "swap" })).id;
    expect(mine.length).toBe(known.length);
    const swapped = edited((b) => b.write(mine, h.idAt, "ascii"));
    for (const client of [c, unary]) await expectError(client.decrypt({ ciphertextBlob: swapped, aad: Buffer.from("a") }), "INVALID_ARGUMENT");
    const unknown = edited((b) => b.write("f".repeat(known.length), h.idAt, "ascii"));
    for (const client of [c, unary]) await expectError(client.decrypt({ ciphertextBlob: unknown, aad: Buffer.from("a") }), "NOT_FOUND");
  });

  it("the IV, the tag, the AAD: authentication fails (INVALID_ARGUMENT)", async () => {
    await expectError(c.decrypt({ ciphertextBlob: edited((b) => void (b[h.ivAt]! ^= 1)), aad: Buffer.from("a") }), "INVALID_ARGUMENT");
    await expectError(c.decrypt({ ciphertextBlob: edited((b) => void (b[b.length - 1]! ^= 1)), aad: Buffer.from("a") }), "INVALID_ARGUMENT");
    await expectError(c.decrypt({ ciphertextBlob: blob, aad: Buffer.from("b") }), "INVALID_ARGUMENT");
  });

  it("malformed headers: INVALID_ARGUMENT naming what is wrong, unary and over the stream", async () => {
    const cases: Array<[Buffer, string]> = [
      [edited((b) => void (b[4] = 9)), "header version 9 is unknown"],
      [edited((b) => void (b[5] = 0)), "kind 0 is unknown"],
      [blob.subarray(0, 20), "truncated"],
      [Buffer.from("not a ciphertext at all"), 'does not start with "hsm1"'],
      [edited((b) => void (b[h.idAt] = 0x2e)), "not a key id"],
      [edited((b) => b.writeUInt32BE(0, 6)), "key version 0"],
    ];
    for (const [bytes, says] of cases) {
      for (const client of [c, unary]) await expectError(client.decrypt({ ciphertextBlob: bytes }), "INVALID_ARGUMENT", says);
      await expectError(
        unary.batchDecrypt({ items: [{ ciphertextBlob: bytes }] }).then((r) => {
          const x = r.results[0]!.result!;
          if (x.$case === "error") throw new HsmClientError(x.value.code, x.value.message);
        }),
        "INVALID_ARGUMENT",
      );
    }
  });
});

describe("versions", () => {
  it("after RotateKey old blobs decrypt with the old version, new ones carry the new version; Node's crypto checks both", async (ctx) => {
    if (!rotation) ctx.skip(); // RotateKey comes with the versions lane (V)
    // Imported keys cannot rotate: a generated, exportable key whose versions' material is read with WrapKey.
    const k = await knownGeneratedAes(c, "rotating");
    const v1 = await k.material();
    const old = await c.encrypt({ keyId: k.id, algorithm: GCM, plaintext: Buffer.from("before") });
    await rotate(k.id);
    const v2 = await k.material();
    expect(v2.equals(v1)).toBe(false);
    const now = await c.encrypt({ keyId: k.id, algorithm: GCM, plaintext: Buffer.from("after") });
    expect([old.keyVersion, now.keyVersion]).toEqual([1, 2]);
    expect(readBlob(Buffer.from(now.ciphertextBlob)).keyVersion).toBe(2);
    expect(await c.decrypt({ ciphertextBlob: old.ciphertextBlob })).toMatchObject({ keyVersion: 1, plaintext: Buffer.from("before") });
    expect(await c.decrypt({ ciphertextBlob: now.ciphertextBlob })).toMatchObject({ keyVersion: 2, plaintext: Buffer.from("after") });
    const open = (key: Buffer, e: typeof old) => {
      const d = createDecipheriv("aes-256-gcm", key, e.iv);
      d.setAuthTag(e.ciphertext.subarray(e.ciphertext.length - 16));
      return Buffer.concat([d.update(e.ciphertext.subarray(0, e.ciphertext.length - 16)), d.final()]).toString();
    };
    expect([open(v1, old), open(v2, now)]).toEqual(["before", "after"]);
    expect(() => open(v1, now)).toThrow();
    // Raw ciphertexts name their version.
    expect(Buffer.from((await c.decrypt({ keyId: k.id, algorithm: GCM, ciphertext: old.ciphertext, iv: old.iv, keyVersion: 1 })).plaintext).toString()).toBe("before");
    await expectError(c.decrypt({ keyId: k.id, algorithm: GCM, ciphertext: old.ciphertext, iv: old.iv }), "INVALID_ARGUMENT");
    // The header names version 2 for a blob of version 1: authentication fails.
    const lying = Buffer.from(old.ciphertextBlob);
    lying.writeUInt32BE(2, 6);
    await expectError(c.decrypt({ ciphertextBlob: lying }), "INVALID_ARGUMENT");
  });

  it("the minimum decryption version refuses older blobs with FAILED_PRECONDITION naming it", async (ctx) => {
    if (!rotation) ctx.skip(); // RotateKey and SetMinDecryptionVersion come with the versions lane (V)
    const id = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "floor" })).id;
    const old = await c.encrypt({ keyId: id, algorithm: GCM, plaintext: Buffer.from("old") });
    await rotate(id);
    await setMin(id, 2);
    await expectError(c.decrypt({ ciphertextBlob: old.ciphertextBlob }), "FAILED_PRECONDITION", "min_decryption_version 2");
    const now = await c.encrypt({ keyId: id, algorithm: GCM, plaintext: Buffer.from("new") });
    expect(Buffer.from((await c.decrypt({ ciphertextBlob: now.ciphertextBlob })).plaintext).toString()).toBe("new");
  });
});

describe("data keys with a header", () => {
  it("DecryptDataKey needs no key_id for a header data key; key_id naming another key is refused", async () => {
    const dk = await c.generateDataKey({ keyId: known, encryptionContext: { t: "1" } });
    expect(readBlob(Buffer.from(dk.wrappedDataKey))).toMatchObject({ kind: 4, keyId: known, keyVersion: 1 });
    for (const client of [c, unary]) {
      const back = await client.decryptDataKey({ wrappedDataKey: dk.wrappedDataKey, encryptionContext: { t: "1" } });
      expect(Buffer.from(back.plaintextDataKey).equals(Buffer.from(dk.plaintextDataKey))).toBe(true);
      expect(back).toMatchObject({ keyId: known, keyVersion: 1 });
    }
    const another = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "kek-b" })).id;
    await expectError(c.decryptDataKey({ keyId: another, wrappedDataKey: dk.wrappedDataKey, encryptionContext: { t: "1" } }), "INVALID_ARGUMENT", another);
    const e = await c.encrypt({ keyId: known, algorithm: GCM, plaintext: Buffer.alloc(32) });
    await expectError(c.decryptDataKey({ wrappedDataKey: e.ciphertextBlob }), "INVALID_ARGUMENT", "not a wrapped data key");
  });

  it("a data key wrapped the old way (HDK1, built here with Node's crypto) still opens with its key_id, version 1", async () => {
    const ctx = { tenant: "acme" };
    const dk = randomBytes(32);
    const iv = randomBytes(12);
    const enc = createCipheriv("aes-256-gcm", material, iv);
    enc.setAAD(encryptionContextAad(ctx));
    const hdk1 = Buffer.concat([Buffer.from("HDK1"), iv, enc.update(dk), enc.final(), enc.getAuthTag()]);
    for (const client of [c, unary]) {
      const back = await client.decryptDataKey({ keyId: known, wrappedDataKey: hdk1, encryptionContext: ctx });
      expect(Buffer.from(back.plaintextDataKey).equals(dk)).toBe(true);
      expect(back.keyVersion).toBe(1);
      await expectError(client.decryptDataKey({ wrappedDataKey: hdk1, encryptionContext: ctx }), "INVALID_ARGUMENT", "key_id is required");
      await expectError(client.decryptDataKey({ keyId: known, wrappedDataKey: hdk1, encryptionContext: { tenant: "other" } }), "INVALID_ARGUMENT", "does not open");
    }
    // ReEncrypt turns it into a header data key (source_key_id names its key).
    const re = await c.reEncrypt({ ciphertextBlob: hdk1, sourceKeyId: known, encryptionContext: ctx });
    expect(re).toMatchObject({ sourceKeyId: known, sourceKeyVersion: 1, keyId: known, keyVersion: 1 });
    expect(Buffer.from((await c.decryptDataKey({ wrappedDataKey: re.ciphertextBlob, encryptionContext: ctx })).plaintextDataKey).equals(dk)).toBe(true);
  });
});
