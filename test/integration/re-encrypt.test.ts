/**
 * ReEncrypt and BatchReEncrypt through real gRPC to a real daemon on SoftHSM2: across keys (checked
 * with Node's crypto under imported material), with an AAD change, CBC-PAD and CTR, data keys,
 * across versions after a rotation, the access model (source and destination), a batch of mixed
 * items, and the SDK's envelope rewrap (frames byte for byte untouched).
 */
import { createDecipheriv, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decryptEnvelope, EncryptionAlgorithm, encryptEnvelope, HsmClientError, KeySpec, KeyUsage, readEnvelopeHeader, rewrapEnvelope, type HsmClient } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { importAes, keyServiceCall, knownGeneratedAes } from "../helpers/key-versions";
import { userClient } from "../helpers/users";

const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;
const matA = randomBytes(32);
const matB = randomBytes(32);
let A: string;
let B: string;
let rotation = false;

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
  A = await importAes(alice, matA, "A");
  B = await importAes(alice, matB, "B");
  const probe = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "probe" })).id;
  rotation = await keyServiceCall(td.grpc, alice, "rotateKey", { keyId: probe, requestId: "" }).then(
    () => true,
    (e: HsmClientError) => !/not built yet/.test(e.details),
  );
}, 120_000);

afterAll(async () => {
  alice?.close();
  bob?.close();
  await td?.cleanup();
});

/** The IV and body of a blob (docs/CIPHERTEXT.md). */
function parts(blob: Uint8Array) {
  const b = Buffer.from(blob);
  const idLen = b[10]!;
  const ivLen = b[11 + idLen]!;
  return { kind: b[5], version: b.readUInt32BE(6), keyId: b.subarray(11, 11 + idLen).toString(), iv: b.subarray(12 + idLen, 12 + idLen + ivLen), body: b.subarray(12 + idLen + ivLen) };
}

function nodeGcm(key: Buffer, blob: Uint8Array, aad: Buffer): Buffer {
  const p = parts(blob);
  const d = createDecipheriv("aes-256-gcm", key, p.iv);
  d.setAAD(aad);
  d.setAuthTag(p.body.subarray(p.body.length - 16));
  return Buffer.concat([d.update(p.body.subarray(0, p.body.length - 16)), d.final()]);
}

describe("ReEncrypt", () => {
  it("moves an AES-GCM ciphertext from key A to key B; Node's crypto opens the result with B's material", async () => {
    const aad = Buffer.from("row 7");
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("move me"), aad });
    const r = await alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: B, sourceAad: aad });
    expect(r).toMatchObject({ sourceKeyId: A, sourceKeyVersion: 1, keyId: B, keyVersion: 1 });
    expect(parts(r.ciphertextBlob)).toMatchObject({ kind: 1, version: 1, keyId: B });
    // The default destination AAD is the source's.
    expect(nodeGcm(matB, r.ciphertextBlob, aad).toString()).toBe("move me");
    expect(() => nodeGcm(matA, r.ciphertextBlob, aad)).toThrow();
    expect(Buffer.from((await alice.decrypt({ ciphertextBlob: r.ciphertextBlob, aad })).plaintext).toString()).toBe("move me");
    // The plaintext is nowhere in the answer.
    expect(Buffer.from(r.ciphertextBlob).includes(Buffer.from("move me"))).toBe(false);
  });

  it("changes the AAD; without destination_key_id stays on the same key's primary version", async () => {
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("aad"), aad: Buffer.from("old") });
    const r = await alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, sourceAad: Buffer.from("old"), destinationAad: Buffer.from("new") });
    expect(r).toMatchObject({ sourceKeyId: A, keyId: A, keyVersion: 1 });
    expect(nodeGcm(matA, r.ciphertextBlob, Buffer.from("new")).toString()).toBe("aad");
    await expectError(alice.decrypt({ ciphertextBlob: r.ciphertextBlob, aad: Buffer.from("old") }), "INVALID_ARGUMENT");
    await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, sourceAad: Buffer.from("wrong") }), "INVALID_ARGUMENT");
  });

  it("keeps CBC-PAD and CTR ciphertexts of their kind, with a fresh IV", async () => {
    for (const [alg, kind, node] of [
      [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD, 2, "aes-256-cbc"],
      [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CTR, 3, "aes-256-ctr"],
    ] as const) {
      const e = await alice.encrypt({ keyId: A, algorithm: alg, plaintext: Buffer.from("block modes too") });
      const r = await alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: B });
      const p = parts(r.ciphertextBlob);
      expect(p.kind).toBe(kind);
      expect(p.iv.equals(Buffer.from(e.iv))).toBe(false);
      const d = createDecipheriv(node, matB, p.iv);
      expect(Buffer.concat([d.update(p.body), d.final()]).toString()).toBe("block modes too");
      await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, sourceAad: Buffer.from("x") }), "INVALID_ARGUMENT", "only for AES-GCM");
    }
  });

  it("re-wraps a data key under another key: still a data key, same context, opens without a key id", async () => {
    const ctx = { tenant: "acme" };
    const dk = await alice.generateDataKey({ keyId: A, encryptionContext: ctx });
    const r = await alice.reEncrypt({ ciphertextBlob: dk.wrappedDataKey, destinationKeyId: B, encryptionContext: ctx });
    expect(parts(r.ciphertextBlob)).toMatchObject({ kind: 4, keyId: B });
    const back = await alice.decryptDataKey({ wrappedDataKey: r.ciphertextBlob, encryptionContext: ctx });
    expect(Buffer.from(back.plaintextDataKey).equals(Buffer.from(dk.plaintextDataKey))).toBe(true);
    expect(back.keyId).toBe(B);
    await expectError(alice.reEncrypt({ ciphertextBlob: dk.wrappedDataKey, destinationKeyId: B, encryptionContext: { tenant: "other" } }), "INVALID_ARGUMENT", "does not open");
    await expectError(alice.reEncrypt({ ciphertextBlob: dk.wrappedDataKey, sourceAad: Buffer.from("x"), encryptionContext: ctx }), "INVALID_ARGUMENT", "encryption_context");
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("x") });
    await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, encryptionContext: ctx }), "INVALID_ARGUMENT", "encryption_context is for wrapped data keys");
  });

  it("refuses malformed input, a non-AES destination and missing usages, each saying why", async () => {
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("x") });
    await expectError(alice.reEncrypt({}), "INVALID_ARGUMENT", "ciphertext_blob is required");
    await expectError(alice.reEncrypt({ ciphertextBlob: Buffer.from("garbage!") }), "INVALID_ARGUMENT", 'does not start with "hsm1"');
    await expectError(alice.reEncrypt({ ciphertextBlob: Buffer.from(e.ciphertextBlob).subarray(0, 30) }), "INVALID_ARGUMENT", "truncated");
    await expectError(alice.reEncrypt({ ciphertextBlob: Buffer.concat([Buffer.from("HDK1"), Buffer.alloc(60)]) }), "INVALID_ARGUMENT", "source_key_id");
    await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: "not a key" }), "INVALID_ARGUMENT", "destination_key_id");
    const rsa = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] })).id;
    await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: rsa }), "INVALID_ARGUMENT", "needs an AES key");
    const decryptOnly = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "dec-only", usages: [KeyUsage.KEY_USAGE_DECRYPT] })).id;
    await expectError(alice.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: decryptOnly }), "FAILED_PRECONDITION", "does not allow encrypt");
    const encOnly = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "enc-only", usages: [KeyUsage.KEY_USAGE_ENCRYPT] })).id;
    const fromEncOnly = await alice.encrypt({ keyId: encOnly, algorithm: GCM, plaintext: Buffer.from("x") });
    await expectError(alice.reEncrypt({ ciphertextBlob: fromEncOnly.ciphertextBlob, destinationKeyId: A }), "FAILED_PRECONDITION", "does not allow decrypt");
  });

  it("needs use of both keys: a source or destination the caller may not use is NOT_FOUND; shared keys work", async () => {
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("shared?") });
    const bobs = (await bob.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "bobs" })).id;
    // Bob may use neither A nor B yet.
    await expectError(bob.reEncrypt({ ciphertextBlob: e.ciphertextBlob, destinationKeyId: bobs }), "NOT_FOUND", A);
    const fresh = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "src" })).id;
    await alice.shareKey({ keyId: fresh, username: "bob" });
    const s = await alice.encrypt({ keyId: fresh, algorithm: GCM, plaintext: Buffer.from("shared source") });
    // Source shared with bob, destination alice's unshared B: refused, as if B did not exist.
    await expectError(bob.reEncrypt({ ciphertextBlob: s.ciphertextBlob, destinationKeyId: B }), "NOT_FOUND", B);
    // Alice cannot move her ciphertext to bob's key either.
    await expectError(alice.reEncrypt({ ciphertextBlob: s.ciphertextBlob, destinationKeyId: bobs }), "NOT_FOUND", bobs);
    // Both usable: the shared source to bob's own key.
    const r = await bob.reEncrypt({ ciphertextBlob: s.ciphertextBlob, destinationKeyId: bobs });
    expect(Buffer.from((await bob.decrypt({ ciphertextBlob: r.ciphertextBlob })).plaintext).toString()).toBe("shared source");
  });

  it("after a rotation, rewraps old ciphertexts and data keys to the primary version", async (ctx) => {
    if (!rotation) ctx.skip(); // RotateKey comes with the versions lane (V)
    const k = await knownGeneratedAes(alice, "rotating");
    const v1 = await k.material();
    const old = await alice.encrypt({ keyId: k.id, algorithm: GCM, plaintext: Buffer.from("v1 data"), aad: Buffer.from("a") });
    const dk = await alice.generateDataKey({ keyId: k.id });
    await keyServiceCall(td.grpc, alice, "rotateKey", { keyId: k.id, requestId: "" });
    const v2 = await k.material();
    const r = await alice.reEncrypt({ ciphertextBlob: old.ciphertextBlob, sourceAad: Buffer.from("a") });
    expect(r).toMatchObject({ sourceKeyId: k.id, sourceKeyVersion: 1, keyId: k.id, keyVersion: 2 });
    expect(parts(r.ciphertextBlob).version).toBe(2);
    expect(nodeGcm(v2, r.ciphertextBlob, Buffer.from("a")).toString()).toBe("v1 data");
    expect(() => nodeGcm(v1, r.ciphertextBlob, Buffer.from("a"))).toThrow();
    expect(await alice.decrypt({ ciphertextBlob: r.ciphertextBlob, aad: Buffer.from("a") })).toMatchObject({ keyVersion: 2, plaintext: Buffer.from("v1 data") });
    // Data keys too; the data key itself is unchanged.
    const rdk = await alice.reEncrypt({ ciphertextBlob: dk.wrappedDataKey });
    expect(rdk).toMatchObject({ sourceKeyVersion: 1, keyVersion: 2 });
    expect(Buffer.from((await alice.decryptDataKey({ wrappedDataKey: rdk.ciphertextBlob })).plaintextDataKey).equals(Buffer.from(dk.plaintextDataKey))).toBe(true);
    // Once the floor is raised, the old blob cannot be re-encrypted any more; its rewrap can.
    await keyServiceCall(td.grpc, alice, "setMinDecryptionVersion", { keyId: k.id, minDecryptionVersion: 2 });
    await expectError(alice.reEncrypt({ ciphertextBlob: old.ciphertextBlob, sourceAad: Buffer.from("a") }), "FAILED_PRECONDITION", "min_decryption_version 2");
    expect((await alice.reEncrypt({ ciphertextBlob: r.ciphertextBlob, sourceAad: Buffer.from("a") })).sourceKeyVersion).toBe(2);
  });
});

describe("BatchReEncrypt", () => {
  it("answers per item: good items succeed beside malformed, denied and unauthenticated ones", async () => {
    const e = await alice.encrypt({ keyId: A, algorithm: GCM, plaintext: Buffer.from("batch"), aad: Buffer.from("z") });
    const bobs = (await bob.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "bobs-2" })).id;
    const res = await alice.batchReEncrypt({
      items: [
        { ciphertextBlob: e.ciphertextBlob, destinationKeyId: B, sourceAad: Buffer.from("z") },
        { ciphertextBlob: Buffer.from("junk") },
        { ciphertextBlob: e.ciphertextBlob, destinationKeyId: bobs, sourceAad: Buffer.from("z") },
        { ciphertextBlob: e.ciphertextBlob, sourceAad: Buffer.from("wrong") },
        { ciphertextBlob: e.ciphertextBlob, sourceAad: Buffer.from("z") },
      ],
    });
    const outcome = res.results.map((x) =>
      x.result?.$case === "ok" ? "OK" : x.result?.$case === "error" ? HsmClientError.from({ code: x.result.value.code, details: x.result.value.message }).codeName : "?",
    );
    expect(outcome).toEqual(["OK", "INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT", "OK"]);
    const first = res.results[0]!.result!;
    if (first.$case !== "ok") throw new Error("first item failed");
    expect(nodeGcm(matB, first.value.ciphertextBlob, Buffer.from("z")).toString()).toBe("batch");
    await expectError(alice.batchReEncrypt({ items: [] }), "INVALID_ARGUMENT", "items is empty");
  });
});

describe("envelope rewrap (SDK)", () => {
  it("re-wraps the data key under another key and leaves the frames byte for byte untouched", async () => {
    const ctx = { file: "backup-1" };
    const pt = randomBytes(10_000);
    const m = await encryptEnvelope(alice, { keyId: A, encryptionContext: ctx, frameSize: 1024 }, pt);
    const before = readEnvelopeHeader(m);
    const r = await rewrapEnvelope(alice, m, { destinationKeyId: B });
    expect(r).toMatchObject({ keyId: B, keyVersion: 1, previousKeyId: A, previousKeyVersion: 1 });
    const after = readEnvelopeHeader(r.message);
    expect(after).toMatchObject({ keyId: B, keyVersion: 1, encryptionContext: ctx, frameSize: 1024 });
    expect(r.message.subarray(after.headerLength).equals(m.subarray(before.headerLength))).toBe(true);
    const d = await decryptEnvelope(alice, r.message, { expectedContext: ctx });
    expect(d.plaintext.equals(pt)).toBe(true);
    expect(d.keyId).toBe(B);
    // Only the header: what follows it is copied as is.
    const headOnly = await rewrapEnvelope(alice, m.subarray(0, before.headerLength + 10));
    expect(headOnly.message.subarray(headOnly.message.length - 10).equals(m.subarray(before.headerLength, before.headerLength + 10))).toBe(true);
  });

  it("refuses a forged header (its tag does not verify) and a message that is no envelope", async () => {
    const m = await encryptEnvelope(alice, { keyId: A, encryptionContext: { a: "1" } }, Buffer.from("x"));
    const h = readEnvelopeHeader(m);
    const forged = Buffer.from(m);
    forged.writeUInt32BE(4096, 38); // the frame size, covered by the header tag
    await expect(rewrapEnvelope(alice, forged)).rejects.toMatchObject({ codeName: "INVALID_ARGUMENT", details: expect.stringContaining("failed authentication") });
    await expect(rewrapEnvelope(alice, Buffer.from("nope"))).rejects.toMatchObject({ codeName: "INVALID_ARGUMENT" });
    await expect(rewrapEnvelope(bob, m)).rejects.toMatchObject({ codeName: "NOT_FOUND" });
    expect(h.keyId).toBe(A);
  });
});
