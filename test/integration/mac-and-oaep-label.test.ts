import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { constants, createHmac, generateKeyPairSync, privateDecrypt, publicEncrypt, randomBytes } from "node:crypto";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, MessageType, SigningAlgorithm, WrapAlgorithm, type Key } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { openssl } from "../helpers/openssl";
import { userClient } from "../helpers/users";
import { KeyLoader } from "../helpers/wycheproof";
import { expectError } from "../helpers/expect-error";

// The options Wycheproof found missing, through real gRPC to a daemon on a fresh SoftHSM2 token:
// RSA-OAEP labels (oaep_label), truncated HMAC tags (mac_length) and AES-CMAC. Every result is
// checked against an independent implementation (Node's crypto, the openssl CLI), and every misuse
// answers its exact status with a message that names the field. SoftHSM2 2.6.1 refuses an OAEP label
// on encrypt and ignores one on decrypt, so here labels take the host-side OAEP encoding.

const LABEL_LIMIT = 32;
const OAEP = { sha1: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA1, sha256: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA256 } as const;
const HMAC256 = SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256;
const CMAC = SigningAlgorithm.SIGNING_ALGORITHM_AES_CMAC;
const SIGN_VERIFY = [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY];

let td: TestDaemon;
let c: HsmClient;
let loader: KeyLoader;

beforeAll(async () => {
  td = await startTestDaemon({ limits: { maxOaepLabelBytes: LABEL_LIMIT } });
  c = await userClient(td);
  loader = await new KeyLoader(c).init();
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

const keyCount = async () => (await c.listKeys({ pageSize: 1000 })).keys.length;
const flip = (b: Uint8Array, i: number) => {
  const out = Buffer.from(b);
  out[i]! ^= 0x01;
  return out;
};

describe("RSA-OAEP with a label (oaep_label), against Node's crypto", () => {
  const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
  let keyId: string;
  beforeAll(async () => {
    const der = pair.privateKey.export({ type: "pkcs8", format: "der" });
    const spki = pair.publicKey.export({ type: "spki", format: "der" });
    keyId = await loader.load(KeySpec.KEY_SPEC_RSA_2048, der, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], { publicKeySpki: spki, label: "oaep-label" });
  });

  for (const hash of ["sha1", "sha256"] as const) {
    it(`RSA_OAEP_${hash.toUpperCase()}: labelled ciphertexts open both ways, and never without their label`, async () => {
      const algorithm = OAEP[hash];
      const label = randomBytes(20);
      const node = { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash };
      const pt = Buffer.from(`a secret under ${hash}`);

      const { ciphertext } = await c.encrypt({ keyId, algorithm, plaintext: pt, oaepLabel: label });
      expect(privateDecrypt({ key: pair.privateKey, ...node, oaepLabel: label }, ciphertext)).toEqual(pt);
      expect(() => privateDecrypt({ key: pair.privateKey, ...node }, ciphertext)).toThrow();

      const fromNode = publicEncrypt({ key: pair.publicKey, ...node, oaepLabel: label }, pt);
      expect(Buffer.from((await c.decrypt({ keyId, algorithm, ciphertext: fromNode, oaepLabel: label })).plaintext)).toEqual(pt);
      // Without the label, with another one, or a label on an unlabelled ciphertext: the one OAEP failure.
      await expectError(c.decrypt({ keyId, algorithm, ciphertext: fromNode }), "INVALID_ARGUMENT", "RSA-OAEP decryption failed");
      await expectError(c.decrypt({ keyId, algorithm, ciphertext: fromNode, oaepLabel: flip(label, 0) }), "INVALID_ARGUMENT", "RSA-OAEP decryption failed");
      const unlabelled = publicEncrypt({ key: pair.publicKey, ...node }, pt);
      await expectError(c.decrypt({ keyId, algorithm, ciphertext: unlabelled, oaepLabel: label }), "INVALID_ARGUMENT", "RSA-OAEP decryption failed");
      expect(Buffer.from((await c.decrypt({ keyId, algorithm, ciphertext: unlabelled })).plaintext)).toEqual(pt);

      // A label of exactly limits.maxOaepLabelBytes.
      const longest = randomBytes(LABEL_LIMIT);
      const ct2 = await c.encrypt({ keyId, algorithm, plaintext: pt, oaepLabel: longest });
      expect(privateDecrypt({ key: pair.privateKey, ...node, oaepLabel: longest }, ct2.ciphertext)).toEqual(pt);
    });
  }

  it("a label over limits.maxOaepLabelBytes, or on an algorithm other than RSA-OAEP, is INVALID_ARGUMENT naming oaep_label", async () => {
    const tooLong = randomBytes(LABEL_LIMIT + 1);
    await expectError(c.encrypt({ keyId, algorithm: OAEP.sha256, plaintext: Buffer.from("x"), oaepLabel: tooLong }), "INVALID_ARGUMENT", "oaep_label", "33 bytes", "limits.maxOaepLabelBytes");
    await expectError(c.decrypt({ keyId, algorithm: OAEP.sha256, ciphertext: Buffer.alloc(256, 1), oaepLabel: tooLong }), "INVALID_ARGUMENT", "oaep_label", "limits.maxOaepLabelBytes");
    const aes = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "oaep-label-aes" });
    await expectError(
      c.encrypt({ keyId: aes.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("x"), oaepLabel: Buffer.from("l") }),
      "INVALID_ARGUMENT",
      "oaep_label",
      "RSA_OAEP",
      "AES_GCM",
    );
    await expectError(
      c.decrypt({ keyId: aes.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD, ciphertext: Buffer.alloc(16), iv: Buffer.alloc(16), oaepLabel: Buffer.from("l") }),
      "INVALID_ARGUMENT",
      "oaep_label",
      "AES_CBC_PAD",
    );
    // In a batch the bad item fails alone.
    const { results } = await c.batchEncrypt({
      items: [
        { keyId, algorithm: OAEP.sha256, plaintext: Buffer.from("ok"), oaepLabel: Buffer.from("batch label") },
        { keyId, algorithm: OAEP.sha256, plaintext: Buffer.from("bad"), oaepLabel: tooLong },
      ],
    });
    expect(results.map((r) => r.result?.$case)).toEqual(["ok", "error"]);
    const ok = results[0]!.result as { $case: "ok"; value: { ciphertext: Uint8Array } };
    expect(privateDecrypt({ key: pair.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("batch label") }, ok.value.ciphertext).toString()).toBe("ok");
    expect((results[1]!.result as { $case: "error"; value: { message: string } }).value.message).toContain("limits.maxOaepLabelBytes");
  });

  it("WrapKey/UnwrapKey: a label the device would ignore is FAILED_PRECONDITION (no host fallback for keys), on AES_KWP INVALID_ARGUMENT; nothing is left behind", async () => {
    const [rsa, secret, kek] = await Promise.all([
      c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "oaep-wrap-rsa", usages: [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP] }),
      c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "oaep-wrap-secret", exportable: true }),
      c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "oaep-wrap-kek", usages: [KeyUsage.KEY_USAGE_WRAP] }),
    ]);
    const sha1 = WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA1;
    await expectError(
      c.wrapKey({ wrappingKeyId: rsa.id, keyId: secret.id, algorithm: sha1, oaepLabel: Buffer.from("l") }),
      "FAILED_PRECONDITION",
      "does not honour an OAEP label",
      "without oaep_label",
    );
    await expectError(
      c.wrapKey({ wrappingKeyId: kek.id, keyId: secret.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP, oaepLabel: Buffer.from("l") }),
      "INVALID_ARGUMENT",
      "oaep_label",
      "AES_KWP",
    );
    // Without a label the same wrap works, and so does the unwrap; with one, the unwrap is refused and makes no key.
    const { wrappedKey } = await c.wrapKey({ wrappingKeyId: rsa.id, keyId: secret.id, algorithm: sha1 });
    const before = await keyCount();
    const unwrap = { unwrappingKeyId: rsa.id, algorithm: sha1, wrappedKey, spec: KeySpec.KEY_SPEC_AES_128, label: "oaep-unwrapped" };
    await expectError(c.unwrapKey({ ...unwrap, oaepLabel: Buffer.from("l") }), "FAILED_PRECONDITION", "does not honour an OAEP label");
    await expectError(c.unwrapKey({ ...unwrap, oaepLabel: randomBytes(LABEL_LIMIT + 1) }), "INVALID_ARGUMENT", "limits.maxOaepLabelBytes");
    expect(await keyCount()).toBe(before);
    await c.unwrapKey(unwrap);
    expect(await keyCount()).toBe(before + 1);
  });
});

describe("truncated HMAC tags (mac_length), against createHmac", () => {
  const k256 = randomBytes(32);
  const k512 = randomBytes(64);
  let hmac256: string;
  let hmac512: string;
  let verifyOnly: string;
  beforeAll(async () => {
    [hmac256, hmac512, verifyOnly] = await Promise.all([
      loader.load(KeySpec.KEY_SPEC_HMAC_SHA256, k256, SIGN_VERIFY, { label: "mac-256" }),
      loader.load(KeySpec.KEY_SPEC_HMAC_SHA512, k512, SIGN_VERIFY, { label: "mac-512" }),
      loader.load(KeySpec.KEY_SPEC_HMAC_SHA256, k256, [KeyUsage.KEY_USAGE_VERIFY], { label: "mac-256-verify" }),
    ]);
  });

  it("Sign returns the leftmost mac_length bytes; Verify accepts exactly those", async () => {
    const msg = randomBytes(100);
    const cases = [
      { keyId: hmac256, algorithm: HMAC256, full: createHmac("sha256", k256).update(msg).digest(), lengths: [16, 20, 31] },
      { keyId: hmac512, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA512, full: createHmac("sha512", k512).update(msg).digest(), lengths: [16, 32, 63] },
    ];
    for (const { keyId, algorithm, full, lengths } of cases) {
      for (const n of lengths) {
        const { signature } = await c.sign({ keyId, algorithm, message: msg, macLength: n });
        expect(Buffer.from(signature).toString("hex"), `mac_length ${n}`).toBe(full.subarray(0, n).toString("hex"));
        const verify = (signature: Uint8Array, macLength = n) => c.verify({ keyId, algorithm, message: msg, signature, macLength }).then((r) => r.valid);
        expect(await verify(signature)).toBe(true);
        expect(await verify(flip(signature, 0))).toBe(false);
        expect(await verify(flip(signature, n - 1))).toBe(false);
        expect(await verify(full.subarray(0, n + 1))).toBe(false); // longer than mac_length
        expect(await verify(full)).toBe(false);
        expect(await verify(full.subarray(0, n - 1))).toBe(false); // shorter than mac_length
        expect(await c.verify({ keyId, algorithm, message: flip(msg, 50), signature, macLength: n }).then((r) => r.valid)).toBe(false);
      }
      // mac_length equal to the full tag is the full tag; without mac_length a truncated tag does not verify.
      const whole = await c.sign({ keyId, algorithm, message: msg, macLength: full.length });
      expect(Buffer.from(whole.signature)).toEqual(full);
      expect((await c.verify({ keyId, algorithm, message: msg, signature: full, macLength: full.length })).valid).toBe(true);
      expect((await c.verify({ keyId, algorithm, message: msg, signature: full.subarray(0, 16) })).valid).toBe(false);
    }
  });

  it("mac_length under 16, over the hash length, or on a non-HMAC algorithm is INVALID_ARGUMENT naming mac_length", async () => {
    const msg = Buffer.from("m");
    const tag = createHmac("sha256", k256).update(msg).digest();
    for (const n of [1, 8, 12, 15]) {
      await expectError(c.sign({ keyId: hmac256, algorithm: HMAC256, message: msg, macLength: n }), "INVALID_ARGUMENT", "mac_length", "at least 16");
      // A tag shorter than 16 bytes is refused, never compared.
      await expectError(c.verify({ keyId: hmac256, algorithm: HMAC256, message: msg, signature: tag.subarray(0, n), macLength: n }), "INVALID_ARGUMENT", "mac_length", "at least 16", `got ${n}`);
    }
    await expectError(c.sign({ keyId: hmac256, algorithm: HMAC256, message: msg, macLength: 33 }), "INVALID_ARGUMENT", "mac_length", "at most 32", "HMAC-SHA256");
    await expectError(
      c.verify({ keyId: hmac512, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA512, message: msg, signature: Buffer.alloc(65), macLength: 65 }),
      "INVALID_ARGUMENT",
      "at most 64",
    );
    const ec = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "mac-length-ec" });
    await expectError(
      c.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg, macLength: 16 }),
      "INVALID_ARGUMENT",
      "mac_length is only for the HMAC",
      "ECDSA_SHA256",
    );
    const cmacKey = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "mac-length-cmac", usages: SIGN_VERIFY });
    await expectError(c.verify({ keyId: cmacKey.id, algorithm: CMAC, message: msg, signature: Buffer.alloc(16), macLength: 16 }), "INVALID_ARGUMENT", "mac_length is only for the HMAC", "AES_CMAC");
  });

  it("a verify-only key checks full tags, and refuses truncated ones with FAILED_PRECONDITION naming the sign usage", async () => {
    const msg = Buffer.from("verify only");
    const full = createHmac("sha256", k256).update(msg).digest();
    expect((await c.verify({ keyId: verifyOnly, algorithm: HMAC256, message: msg, signature: full })).valid).toBe(true);
    await expectError(c.verify({ keyId: verifyOnly, algorithm: HMAC256, message: msg, signature: full.subarray(0, 16), macLength: 16 }), "FAILED_PRECONDITION", "mac_length", "sign usage", "verify");
  });

  it("BatchSign and BatchVerify take mac_length per item; a bad item fails alone", async () => {
    const msg = Buffer.from("batch");
    const full = createHmac("sha256", k256).update(msg).digest();
    const signed = await c.batchSign({
      items: [
        { keyId: hmac256, algorithm: HMAC256, message: msg, macLength: 16 },
        { keyId: hmac256, algorithm: HMAC256, message: msg, macLength: 8 },
        { keyId: hmac256, algorithm: HMAC256, message: msg },
      ],
    });
    expect(signed.results.map((r) => r.result?.$case)).toEqual(["ok", "error", "ok"]);
    expect(Buffer.from((signed.results[0]!.result as { $case: "ok"; value: { signature: Uint8Array } }).value.signature)).toEqual(full.subarray(0, 16));
    expect((signed.results[1]!.result as { $case: "error"; value: { message: string } }).value.message).toContain("at least 16");
    const verified = await c.batchVerify({
      items: [
        { keyId: hmac256, algorithm: HMAC256, message: msg, signature: full.subarray(0, 24), macLength: 24 },
        { keyId: hmac256, algorithm: HMAC256, message: msg, signature: flip(full.subarray(0, 24), 3), macLength: 24 },
        { keyId: verifyOnly, algorithm: HMAC256, message: msg, signature: full.subarray(0, 24), macLength: 24 },
      ],
    });
    expect(verified.results.map((r) => (r.result?.$case === "ok" ? r.result.value.valid : r.result?.value))).toEqual([
      true,
      false,
      { code: 9 /* FAILED_PRECONDITION */, message: expect.stringContaining("cannot verify a truncated tag") },
    ]);
  });
});

describe("AES-CMAC (SIGNING_ALGORITHM_AES_CMAC), against openssl", () => {
  const cmacOf = (key: Buffer, msg: Buffer) =>
    openssl((d) => ["mac", "-cipher", `AES-${key.length * 8}-CBC`, "-macopt", `hexkey:${key.toString("hex")}`, "-in", `${d}/msg`, "CMAC"], { msg })
      .stdout.toString()
      .trim()
      .toLowerCase();

  it("AES-128 and AES-256 keys with sign/verify usages: tags equal openssl's; tampered or short tags do not verify", async () => {
    for (const bytes of [16, 32]) {
      const key = randomBytes(bytes);
      const keyId = await loader.load(bytes === 16 ? KeySpec.KEY_SPEC_AES_128 : KeySpec.KEY_SPEC_AES_256, key, SIGN_VERIFY, { label: `cmac-${bytes * 8}` });
      for (const len of [0, 1, 16, 17, 100]) {
        const msg = randomBytes(len);
        const { signature } = await c.sign({ keyId, algorithm: CMAC, message: msg });
        expect(Buffer.from(signature).toString("hex"), `AES-${bytes * 8}, ${len}-byte message`).toBe(cmacOf(key, msg));
        const verify = (signature: Uint8Array, message = msg) => c.verify({ keyId, algorithm: CMAC, message, signature }).then((r) => r.valid);
        expect(await verify(signature)).toBe(true);
        expect(await verify(flip(signature, 15))).toBe(false);
        expect(await verify(Buffer.from(signature).subarray(0, 8))).toBe(false);
        expect(await verify(signature, Buffer.concat([msg, Buffer.from([0])]))).toBe(false);
      }
    }
    // A key generated in the HSM signs and verifies too (and in a batch).
    const gen = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "cmac-generated", usages: SIGN_VERIFY });
    const { results } = await c.batchSign({
      items: [
        { keyId: gen.id, algorithm: CMAC, message: Buffer.from("a") },
        { keyId: gen.id, algorithm: CMAC, message: Buffer.from("b") },
      ],
    });
    const tags = results.map((r) => Buffer.from((r.result as { $case: "ok"; value: { signature: Uint8Array } }).value.signature));
    expect(tags.map((t) => t.length)).toEqual([16, 16]);
    const { results: checked } = await c.batchVerify({
      items: [
        { keyId: gen.id, algorithm: CMAC, message: Buffer.from("a"), signature: tags[0]! },
        { keyId: gen.id, algorithm: CMAC, message: Buffer.from("a"), signature: tags[1]! },
      ],
    });
    expect(checked.map((r) => (r.result as { $case: "ok"; value: { valid: boolean } }).value.valid)).toEqual([true, false]);
  });

  it("usages and fit: a cipher key cannot CMAC, a CMAC key cannot encrypt, a key cannot be both; CMAC needs an AES key and the message itself", async () => {
    const before = await keyCount();
    await expectError(
      c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "cmac-and-cipher", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_SIGN] }),
      "INVALID_ARGUMENT",
      "usages",
      "either a cipher key",
      "AES-CMAC key",
    );
    expect(await keyCount()).toBe(before);
    const [cipherKey, macKey, hmacKey]: Key[] = await Promise.all([
      c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "cmac-cipher" }),
      c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "cmac-mac", usages: [KeyUsage.KEY_USAGE_SIGN] }),
      c.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "cmac-hmac" }),
    ]);
    const msg = Buffer.from("m");
    await expectError(c.sign({ keyId: cipherKey.id, algorithm: CMAC, message: msg }), "FAILED_PRECONDITION", "does not allow sign", "encrypt, decrypt");
    await expectError(c.verify({ keyId: macKey.id, algorithm: CMAC, message: msg, signature: Buffer.alloc(16) }), "FAILED_PRECONDITION", "does not allow verify");
    await expectError(c.encrypt({ keyId: macKey.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: msg }), "FAILED_PRECONDITION", "does not allow encrypt");
    await expectError(c.sign({ keyId: hmacKey.id, algorithm: CMAC, message: msg }), "INVALID_ARGUMENT", "AES_CMAC", "needs an AES key", "HMAC");
    await expectError(c.sign({ keyId: macKey.id, algorithm: HMAC256, message: msg }), "INVALID_ARGUMENT", "needs an HMAC key", "AES");
    await expectError(c.sign({ keyId: macKey.id, algorithm: CMAC, message: Buffer.alloc(32), messageType: MessageType.MESSAGE_TYPE_DIGEST }), "INVALID_ARGUMENT", "AES-CMAC", "DIGEST");
    // The record keeps the usages asked for, and the key's public-key call says it has none.
    expect((await c.getKey({ keyId: macKey.id })).usages).toEqual([KeyUsage.KEY_USAGE_SIGN]);
    await expectError(c.getPublicKey({ keyId: macKey.id }), "FAILED_PRECONDITION", "secret key");
  });
});

describe("a device without CKM_AES_CMAC (device.disabledMechanisms)", () => {
  it("AES-CMAC answers FAILED_PRECONDITION naming the mechanism, the rest works, and an unknown name stops the start", async () => {
    const { token, dataDir } = td;
    c.close();
    await td.stop();
    await expect(startTestDaemon({ token, dataDir, config: { device: { disabledMechanisms: ["CKM_NO_SUCH_THING"] } } })).rejects.toThrow(
      "device.disabledMechanisms: CKM_NO_SUCH_THING is not a mechanism",
    );
    td = await startTestDaemon({ token, dataDir, limits: { maxOaepLabelBytes: LABEL_LIMIT }, config: { device: { disabledMechanisms: ["CKM_AES_CMAC"] } } });
    c = await userClient(td);
    const status = (await (await fetch(`${td.admin}/v1/status`)).json()) as { mechanisms: string[] };
    expect(status.mechanisms).toContain("CKM_SHA256_HMAC");
    expect(status.mechanisms).not.toContain("CKM_AES_CMAC");
    const mac = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "no-cmac", usages: SIGN_VERIFY });
    await expectError(c.sign({ keyId: mac.id, algorithm: CMAC, message: Buffer.from("m") }), "FAILED_PRECONDITION", "does not support CKM_AES_CMAC");
    await expectError(c.verify({ keyId: mac.id, algorithm: CMAC, message: Buffer.from("m"), signature: Buffer.alloc(16) }), "FAILED_PRECONDITION", "CKM_AES_CMAC");
    const hmac = await c.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "still-hmac" });
    expect((await c.sign({ keyId: hmac.id, algorithm: HMAC256, message: Buffer.from("m"), macLength: 16 })).signature.length).toBe(16);
  });
});
