import { beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, KeySpec, KeyUsage, MessageType, SignatureFormat, SigningAlgorithm, WrapAlgorithm } from "../../src/sdk";
import { aes, aesEncOnly, c, CBC, ec, ecDerive, ecExportable, ECDSA256, ed, expectError, expectNoNewKey, GCM, hmac256, kek, rsa, UNKNOWN_ID, useBadInputDaemon } from "../helpers/bad-input";

// Bad input of every kind, through real gRPC to a real daemon on a fresh SoftHSM2 token with small
// limits. Each refusal must carry the exact status and a message that names what to fix; none may
// leave a key behind (checked through the API and, independently, with pkcs11-tool).
// Here: key ids, usages, mechanisms, enum values, limits, IV/tag/AAD, empty and malformed fields.
// Import blobs, public keys, signatures, wraps, batches and idempotency: bad-input-blobs.test.ts.
useBadInputDaemon();

describe("key ids", () => {
  it("an unknown (well-formed) key id is NOT_FOUND and names the id", async () => {
    await expectError(c.getKey({ keyId: UNKNOWN_ID }), "NOT_FOUND", UNKNOWN_ID);
    await expectError(c.sign({ keyId: UNKNOWN_ID, algorithm: ECDSA256, message: Buffer.from("m") }), "NOT_FOUND", UNKNOWN_ID);
    await expectError(c.deleteKey({ keyId: UNKNOWN_ID }), "NOT_FOUND", UNKNOWN_ID);
  });

  it.each([
    ["../etc", "../etc", "is not a key id"],
    ["empty", "", "key_id is required"],
    ["500 characters", "a".repeat(500), "is not a key id"],
  ])("a malformed key id (%s) is INVALID_ARGUMENT", async (_name, keyId, phrase) => {
    const e = await expectError(c.getKey({ keyId }), "INVALID_ARGUMENT", "key_id", phrase);
    expect(e.details.length).toBeLessThan(200); // the 500-character id is not echoed whole
    await expectError(c.encrypt({ keyId, algorithm: GCM, plaintext: Buffer.from("x") }), "INVALID_ARGUMENT", "key_id");
  });

  it("a malformed wrapping key id names its own field", async () => {
    await expectError(c.wrapKey({ wrappingKeyId: "../etc", keyId: aes.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KW }), "INVALID_ARGUMENT", "wrapping_key_id");
  });
});

describe("a key used against its usages", () => {
  it("an AES key with only ENCRYPT cannot decrypt: FAILED_PRECONDITION", async () => {
    const e = await c.encrypt({ keyId: aesEncOnly.id, algorithm: GCM, plaintext: Buffer.from("x") });
    await expectError(c.decrypt({ keyId: aesEncOnly.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv }), "FAILED_PRECONDITION", "does not allow decrypt", "encrypt");
  });

  it("an EC key generated with [DERIVE] cannot sign: FAILED_PRECONDITION", async () => {
    await expectError(c.sign({ keyId: ecDerive.id, algorithm: ECDSA256, message: Buffer.from("m") }), "FAILED_PRECONDITION", "does not allow sign", "derive");
  });

  it("a usage the kind of key cannot have is refused at creation", async () => {
    await expectNoNewKey(() => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "aes-derive", usages: [KeyUsage.KEY_USAGE_DERIVE] }), "INVALID_ARGUMENT", "usages", "derive");
  });
});

describe("a mechanism that does not fit the key", () => {
  it("AES_GCM on an RSA key", async () => {
    await expectError(c.encrypt({ keyId: rsa.id, algorithm: GCM, plaintext: Buffer.from("x") }), "INVALID_ARGUMENT", "AES_GCM", "AES key");
  });

  it("ECDSA on an RSA key", async () => {
    await expectError(c.sign({ keyId: rsa.id, algorithm: ECDSA256, message: Buffer.from("m") }), "INVALID_ARGUMENT", "ECDSA_SHA256", "an EC key", "RSA");
  });

  it("HMAC_SHA384 on an HMAC_SHA256 key", async () => {
    await expectError(c.sign({ keyId: hmac256.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA384, message: Buffer.from("m") }), "INVALID_ARGUMENT", "HMAC_SHA256");
  });

  it("Ed25519 with message_type DIGEST", async () => {
    await expectError(
      c.sign({ keyId: ed.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: Buffer.alloc(32, 1), messageType: MessageType.MESSAGE_TYPE_DIGEST }),
      "INVALID_ARGUMENT",
      "DIGEST",
    );
  });
});

describe("unspecified and unknown enum values", () => {
  it.each([
    [0, "KEY_SPEC_UNSPECIFIED"],
    [99, "got 99"],
  ])("spec %i is INVALID_ARGUMENT naming the valid specs", async (spec, got) => {
    await expectNoNewKey(() => c.generateKey({ spec: spec as KeySpec, label: "bad-spec" }), "INVALID_ARGUMENT", "spec must be one of", "KEY_SPEC_AES_256", got);
  });

  it("signing algorithm 0 and encryption algorithm 0", async () => {
    await expectError(c.sign({ keyId: ec.id, algorithm: 0 as SigningAlgorithm, message: Buffer.from("m") }), "INVALID_ARGUMENT", "algorithm", "UNSPECIFIED");
    await expectError(c.encrypt({ keyId: aes.id, algorithm: 0 as EncryptionAlgorithm, plaintext: Buffer.from("m") }), "INVALID_ARGUMENT", "algorithm must be one of", "AES_GCM");
  });

  it("usage 42", async () => {
    await expectNoNewKey(() => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "bad-usage", usages: [42 as KeyUsage] }), "INVALID_ARGUMENT", "usages", "42");
    await expectError(c.listKeys({ usage: 42 as KeyUsage }), "INVALID_ARGUMENT", "usage", "42");
  });

  it("wrap algorithm 0, message_type 7 and signature_format 9", async () => {
    await expectError(c.wrapKey({ wrappingKeyId: kek.id, keyId: ecExportable.id, algorithm: 0 as WrapAlgorithm }), "INVALID_ARGUMENT", "algorithm must be AES_KW");
    await expectError(c.sign({ keyId: ec.id, algorithm: ECDSA256, message: Buffer.from("m"), messageType: 7 as MessageType }), "INVALID_ARGUMENT", "message_type");
    await expectError(c.sign({ keyId: ec.id, algorithm: ECDSA256, message: Buffer.from("m"), signatureFormat: 9 as SignatureFormat }), "INVALID_ARGUMENT", "signature_format");
  });
});

describe("limits", () => {
  it("a 1025-byte plaintext is RESOURCE_EXHAUSTED naming the limit; 1024 bytes pass", async () => {
    await expectError(c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: Buffer.alloc(1025) }), "RESOURCE_EXHAUSTED", "plaintext", "1025", "limits.maxPayloadBytes");
    const ok = await c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: Buffer.alloc(1024) });
    expect(ok.ciphertext).toHaveLength(1024 + 16);
  });

  it("a batch of 5 items is RESOURCE_EXHAUSTED; an empty batch is INVALID_ARGUMENT", async () => {
    const item = { keyId: ec.id, algorithm: ECDSA256, message: Buffer.from("m") };
    await expectError(c.batchSign({ items: Array.from({ length: 5 }, () => item) }), "RESOURCE_EXHAUSTED", "5 items", "limits.maxBatchItems");
    await expectError(c.batchSign({ items: [] }), "INVALID_ARGUMENT", "items is empty");
    await expectError(c.batchEncrypt({ items: [] }), "INVALID_ARGUMENT", "items is empty");
    expect((await c.batchSign({ items: Array.from({ length: 4 }, () => item) })).results).toHaveLength(4);
  });

  it("random of length 0 is INVALID_ARGUMENT, over the limit RESOURCE_EXHAUSTED", async () => {
    await expectError(c.generateRandom({ length: 0 }), "INVALID_ARGUMENT", "length");
    await expectError(c.generateRandom({ length: 65 }), "RESOURCE_EXHAUSTED", "65", "limits.maxRandomBytes");
    expect((await c.generateRandom({ length: 64 })).random).toHaveLength(64);
  });
});

describe("wrong IV, tag or AAD", () => {
  const aad = Buffer.from("context");
  let enc: { ciphertext: Buffer; iv: Buffer };
  beforeAll(async () => {
    const e = await c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: Buffer.from("attack at dawn"), aad });
    enc = { ciphertext: Buffer.from(e.ciphertext), iv: Buffer.from(e.iv) };
    // the untouched ciphertext does decrypt: the failures below are the tampering's
    expect(Buffer.from((await c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv: enc.iv, aad })).plaintext).toString()).toBe("attack at dawn");
  });

  it("GCM decrypt with a flipped tag byte", async () => {
    const ct = Buffer.from(enc.ciphertext);
    ct[ct.length - 1]! ^= 0x01;
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: ct, iv: enc.iv, aad }), "INVALID_ARGUMENT", "AES_GCM", "authentication");
  });

  it("GCM decrypt with a wrong iv", async () => {
    const iv = Buffer.from(enc.iv);
    iv[0]! ^= 0x80;
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv, aad }), "INVALID_ARGUMENT", "IV");
  });

  it("GCM decrypt with a wrong or missing aad", async () => {
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv: enc.iv, aad: Buffer.from("Context") }), "INVALID_ARGUMENT", "AAD");
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv: enc.iv }), "INVALID_ARGUMENT", "AAD");
  });

  it("GCM decrypt without an iv", async () => {
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, aad }), "INVALID_ARGUMENT", "iv is required");
  });

  it("GCM decrypt with tag_length 8", async () => {
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv: enc.iv, aad, tagLength: 8 }), "INVALID_ARGUMENT", "tag_length", "12 to 16");
  });

  it("CBC decrypt with a 15-byte iv", async () => {
    await expectError(c.decrypt({ keyId: aes.id, algorithm: CBC, ciphertext: Buffer.alloc(32), iv: Buffer.alloc(15) }), "INVALID_ARGUMENT", "iv must be 16 bytes", "got 15");
  });

  it("a client-supplied iv on GCM encrypt", async () => {
    await expectError(c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: Buffer.from("x"), iv: Buffer.alloc(12) }), "INVALID_ARGUMENT", "iv must be empty for AES_GCM");
  });

  it("aad with a cipher other than GCM", async () => {
    await expectError(c.encrypt({ keyId: aes.id, algorithm: CBC, plaintext: Buffer.from("x"), aad }), "INVALID_ARGUMENT", "aad is only for AES_GCM");
  });
});

describe("empty and malformed fields", () => {
  it.each([
    ["", "label is required"],
    ["a".repeat(17), "longer than 16"],
    ["bad\nlabel", "label may hold"],
    ["tab\there", "label may hold"],
    ["nul\u0000", "label may hold"],
  ])("label %j is INVALID_ARGUMENT and creates nothing", async (label, phrase) => {
    await expectNoNewKey(() => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label }), "INVALID_ARGUMENT", phrase);
  });

  it("a label of exactly 16 characters is accepted", async () => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "b".repeat(16) });
    expect(k.label).toBe("b".repeat(16));
  });

  it("an empty plaintext is allowed for AES_GCM (the ciphertext is the tag alone) and round-trips", async () => {
    const e = await c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: Buffer.alloc(0) });
    expect(e.ciphertext).toHaveLength(16);
    const d = await c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv });
    expect(d.plaintext).toHaveLength(0);
  });

  it("an empty plaintext is refused for RSA-OAEP, and an empty ciphertext for GCM", async () => {
    const oaep = await c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "oaep", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] });
    await expectError(c.encrypt({ keyId: oaep.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA1, plaintext: Buffer.alloc(0) }), "INVALID_ARGUMENT", "plaintext is empty");
    await expectError(c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: Buffer.alloc(0), iv: Buffer.alloc(12) }), "INVALID_ARGUMENT", "ciphertext is empty");
  });

  it("a digest of the wrong length for ECDSA_SHA256 DIGEST", async () => {
    await expectError(c.sign({ keyId: ec.id, algorithm: ECDSA256, message: Buffer.alloc(31), messageType: MessageType.MESSAGE_TYPE_DIGEST }), "INVALID_ARGUMENT", "32 bytes", "got 31");
    await expectError(c.sign({ keyId: ec.id, algorithm: ECDSA256, message: Buffer.alloc(48), messageType: MessageType.MESSAGE_TYPE_DIGEST }), "INVALID_ARGUMENT", "32 bytes", "got 48");
  });

  it.each(["not-a-token", Buffer.from("k:../etc").toString("base64url"), Buffer.from("x:" + UNKNOWN_ID).toString("base64url")])("page_token %j is INVALID_ARGUMENT", async (pageToken) => {
    await expectError(c.listKeys({ pageToken }), "INVALID_ARGUMENT", "page_token");
  });

  it("page_size 5000 is INVALID_ARGUMENT naming the maximum", async () => {
    await expectError(c.listKeys({ pageSize: 5000 }), "INVALID_ARGUMENT", "page_size", "1000");
  });

  it("a request_id over 128 characters", async () => {
    await expectNoNewKey(() => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "rid", requestId: "r".repeat(129) }), "INVALID_ARGUMENT", "request_id");
  });
});
