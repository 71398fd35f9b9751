import { describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import { GrpcStatus, KeySpec, PublicKeyFormat, SignatureFormat, SigningAlgorithm, WrapAlgorithm, wrapForImport, type Key } from "../../src/sdk";
import {
  aes,
  aesEncOnly,
  c,
  count,
  ec,
  ecDerive,
  ecExportable,
  ECDSA256,
  ed,
  expectError,
  expectNoNewKey,
  expectTokenHoldsOnlyListedKeys,
  GCM,
  hmac256,
  importKeyId,
  importSpki,
  kek,
  rsa,
  UNKNOWN_ID,
  useBadInputDaemon,
  wrappingAlgorithm,
} from "../helpers/bad-input";

// Bad input of every kind, through real gRPC to a real daemon on a fresh SoftHSM2 token with small
// limits. Each refusal must carry the exact status and a message that names what to fix; none may
// leave a key behind (checked through the API and, independently, with pkcs11-tool).
// Here: malformed import blobs and public keys, signatures, wraps, batches, idempotency. Ids, usages,
// mechanisms, enums, limits and fields: bad-input.test.ts.
useBadInputDaemon();

describe("malformed import blobs and public keys", () => {
  const ecPair = () => crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  const base = () => ({ spec: KeySpec.KEY_SPEC_AES_256, label: "byok", importKeyId });

  it("importKey with random bytes too short for the RSA-OAEP part", async () => {
    await expectNoNewKey(() => c.importKey({ ...base(), wrappedKeyMaterial: crypto.randomBytes(100) }), "INVALID_ARGUMENT", "wrapped key material", "384 bytes");
  });

  it("importKey with garbage of the right length", async () => {
    await expectNoNewKey(() => c.importKey({ ...base(), wrappedKeyMaterial: crypto.randomBytes(384 + 40) }), "INVALID_ARGUMENT", "integrity check");
  });

  it("importKey with a sound RSA-OAEP part and a corrupted AES-KWP part", async () => {
    const blob = wrapForImport(importSpki, crypto.randomBytes(32), wrappingAlgorithm);
    blob[blob.length - 1]! ^= 0x01;
    await expectNoNewKey(() => c.importKey({ ...base(), wrappedKeyMaterial: blob }), "INVALID_ARGUMENT", "integrity check");
  });

  it("secret material of a length the spec or the device cannot hold is refused, and leaves nothing", async () => {
    const imp = (spec: KeySpec, len: number) => () => c.importKey({ ...base(), spec, wrappedKeyMaterial: wrapForImport(importSpki, crypto.randomBytes(len), wrappingAlgorithm) });
    await expectNoNewKey(imp(KeySpec.KEY_SPEC_AES_256, 16), "INVALID_ARGUMENT", "AES-256 key is 32 bytes", "16");
    await expectNoNewKey(imp(KeySpec.KEY_SPEC_HMAC_SHA256, 24), "INVALID_ARGUMENT", "at least 32 bytes");
    // 36 bytes: the device zero-pads it when wrapping, which leaves HMAC unchanged (RFC 2104 pads the
    // key to the block size): the service proves the record's copy computes the same MAC, and keeps it.
    const material = crypto.randomBytes(36);
    const ok = await c.importKey({ ...base(), spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "hmac-36", wrappedKeyMaterial: wrapForImport(importSpki, material, wrappingAlgorithm) });
    const mac = await c.sign({ keyId: ok.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: Buffer.from("m") });
    expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac("sha256", material).update("m").digest());
  });

  it("importKey under a wrong import_key_id is NOT_FOUND and points at GetImportParameters", async () => {
    const blob = wrapForImport(importSpki, crypto.randomBytes(32), wrappingAlgorithm);
    await expectNoNewKey(() => c.importKey({ ...base(), importKeyId: "no-such-import-key", wrappedKeyMaterial: blob }), "NOT_FOUND", "no-such-import-key", "GetImportParameters");
    await expectNoNewKey(() => c.importKey({ ...base(), importKeyId: "", wrappedKeyMaterial: blob }), "NOT_FOUND", "GetImportParameters");
  });

  it("an asymmetric import without public_key_spki", async () => {
    const kp = ecPair();
    const blob = wrapForImport(importSpki, kp.privateKey.export({ type: "pkcs8", format: "der" }), wrappingAlgorithm);
    await expectNoNewKey(() => c.importKey({ ...base(), spec: KeySpec.KEY_SPEC_EC_P256, wrappedKeyMaterial: blob }), "INVALID_ARGUMENT", "public_key_spki is required");
    // and with a public key of another kind
    const rsaPub = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ type: "spki", format: "der" });
    await expectNoNewKey(() => c.importKey({ ...base(), spec: KeySpec.KEY_SPEC_EC_P256, wrappedKeyMaterial: blob, publicKeySpki: rsaPub }), "INVALID_ARGUMENT", "public_key_spki", "spec says");
  });

  // Refused after the device has already made the key: the create must undo it (checked at the end with pkcs11-tool).
  it("an EC import whose public_key_spki is another P-256 key is refused after the device imported it", async () => {
    const kp = ecPair();
    const blob = wrapForImport(importSpki, kp.privateKey.export({ type: "pkcs8", format: "der" }), wrappingAlgorithm);
    const other = ecPair().publicKey.export({ type: "spki", format: "der" });
    await expectNoNewKey(() => c.importKey({ ...base(), spec: KeySpec.KEY_SPEC_EC_P256, wrappedKeyMaterial: blob, publicKeySpki: other }), "INVALID_ARGUMENT", "public_key_spki does not match");
  });

  it("importPublicKey with garbage DER", async () => {
    await expectNoNewKey(
      () => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: crypto.randomBytes(91), label: "pub" }),
      "INVALID_ARGUMENT",
      "public_key",
      "SPKI_DER",
    );
  });

  it("importPublicKey with a PEM body without its header", async () => {
    const body = (ecPair().publicKey.export({ type: "spki", format: "pem" }) as string)
      .split("\n")
      .filter((l) => l && !l.startsWith("-----"))
      .join("\n");
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM, publicKey: Buffer.from(body), label: "pub" }), "INVALID_ARGUMENT", "public_key", "PEM");
  });

  it('importPublicKey with a private JWK (has "d") says so', async () => {
    const jwk = ecPair().privateKey.export({ format: "jwk" });
    expect(jwk.d).toBeDefined();
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK, publicKey: Buffer.from(JSON.stringify(jwk)), label: "pub" }), "INVALID_ARGUMENT", "private", '"d"');
  });

  it("importPublicKey with JSON that is not a JWK, and with format UNSPECIFIED", async () => {
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK, publicKey: Buffer.from("{not json"), label: "pub" }), "INVALID_ARGUMENT", "public_key", "JWK");
    const der = ecPair().publicKey.export({ type: "spki", format: "der" });
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_UNSPECIFIED, publicKey: der, label: "pub" }), "INVALID_ARGUMENT", "format must be");
  });

  it("importPublicKey of an RSA-1024 key names the supported sizes", async () => {
    const der = crypto.generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ type: "spki", format: "der" });
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: der, label: "rsa1024" }), "INVALID_ARGUMENT", "1024 bits", "2048");
  });

  it("unwrapKey with a garbage AES_KW blob, and one of an impossible length", async () => {
    const req = { unwrappingKeyId: kek.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KW, spec: KeySpec.KEY_SPEC_AES_128, label: "unwrapped" };
    await expectNoNewKey(() => c.unwrapKey({ ...req, wrappedKey: crypto.randomBytes(24) }), "INVALID_ARGUMENT", "integrity check");
    await expectNoNewKey(() => c.unwrapKey({ ...req, wrappedKey: crypto.randomBytes(20) }), "INVALID_ARGUMENT", "AES_KW blob", "multiple of 8");
  });
});

describe("verify with a malformed signature answers valid: false", () => {
  const msg = Buffer.from("message");

  it.each<[string, () => Key, SigningAlgorithm, SignatureFormat, () => Buffer]>([
    ["ECDSA DER garbage", () => ec, ECDSA256, SignatureFormat.SIGNATURE_FORMAT_DER, () => crypto.randomBytes(70)],
    ["ECDSA DER truncated", () => ec, ECDSA256, SignatureFormat.SIGNATURE_FORMAT_DER, () => Buffer.from([0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01])],
    ["ECDSA RAW of 63 bytes", () => ec, ECDSA256, SignatureFormat.SIGNATURE_FORMAT_RAW, () => crypto.randomBytes(63)],
    ["ECDSA RAW of 64 random bytes", () => ec, ECDSA256, SignatureFormat.SIGNATURE_FORMAT_RAW, () => crypto.randomBytes(64)],
    ["RSA PKCS#1 of 100 bytes", () => rsa, SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256, SignatureFormat.SIGNATURE_FORMAT_DER, () => crypto.randomBytes(100)],
    ["RSA PSS of 257 bytes", () => rsa, SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256, SignatureFormat.SIGNATURE_FORMAT_DER, () => crypto.randomBytes(257)],
    ["Ed25519 of 63 bytes", () => ed, SigningAlgorithm.SIGNING_ALGORITHM_ED25519, SignatureFormat.SIGNATURE_FORMAT_DER, () => crypto.randomBytes(63)],
    ["HMAC of 31 bytes", () => hmac256, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, SignatureFormat.SIGNATURE_FORMAT_DER, () => crypto.randomBytes(31)],
  ])("%s", async (_name, key, algorithm, signatureFormat, sig) => {
    const k = key();
    // the key does verify its own signature: the false below is the signature's
    const good = await c.sign({ keyId: k.id, algorithm, message: msg, signatureFormat });
    expect((await c.verify({ keyId: k.id, algorithm, message: msg, signatureFormat, signature: good.signature })).valid).toBe(true);
    const r = await c.verify({ keyId: k.id, algorithm, message: msg, signatureFormat, signature: sig() });
    expect(r).toEqual({ keyId: k.id, valid: false, keyVersion: 1 });
  });
});

describe("wrapKey refusals", () => {
  it("a non-exportable key is FAILED_PRECONDITION", async () => {
    await expectError(c.wrapKey({ wrappingKeyId: kek.id, keyId: aes.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KW }), "FAILED_PRECONDITION", "not exportable", "exportable=false");
  });

  it("a private key under AES_KW is INVALID_ARGUMENT pointing at AES_KWP", async () => {
    await expectError(c.wrapKey({ wrappingKeyId: kek.id, keyId: ecExportable.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KW }), "INVALID_ARGUMENT", "secret keys only", "AES_KWP");
    // the same key does wrap under AES_KWP
    const kwp = await c.wrapKey({ wrappingKeyId: kek.id, keyId: ecExportable.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP });
    expect(kwp.wrappedKey.length % 8).toBe(0);
    expect(kwp.wrappedKey.length).toBeGreaterThanOrEqual(72); // a P-256 PKCS#8 is at least 67 bytes
  });

  it("a wrapping key without WRAP is FAILED_PRECONDITION", async () => {
    await expectError(c.wrapKey({ wrappingKeyId: aes.id, keyId: ecExportable.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP }), "FAILED_PRECONDITION", "does not allow wrap");
  });
});

describe("batches with good and bad items", () => {
  it("BatchSign: per-item codes, good items signed", async () => {
    const msg = Buffer.from("batch");
    const r = await c.batchSign({
      items: [
        { keyId: ec.id, algorithm: ECDSA256, message: msg },
        { keyId: UNKNOWN_ID, algorithm: ECDSA256, message: msg },
        { keyId: rsa.id, algorithm: ECDSA256, message: msg },
        { keyId: ecDerive.id, algorithm: ECDSA256, message: msg },
      ],
    });
    expect(r.results.map((x) => x.result?.$case)).toEqual(["ok", "error", "error", "error"]);
    const ok = r.results[0]!.result!.value as { signature: Buffer };
    const pem = (await c.getPublicKey({ keyId: ec.id })).pem;
    expect(crypto.verify("sha256", msg, pem, Buffer.from(ok.signature))).toBe(true);
    expect(r.results.slice(1).map((x) => x.result!.value)).toEqual([
      { code: GrpcStatus.NOT_FOUND, message: expect.stringContaining(UNKNOWN_ID) },
      { code: GrpcStatus.INVALID_ARGUMENT, message: expect.stringContaining("an EC key") },
      { code: GrpcStatus.FAILED_PRECONDITION, message: expect.stringContaining("does not allow sign") },
    ]);
  });

  it("BatchEncrypt and BatchDecrypt: oversized, malformed-id and tampered items fail alone", async () => {
    const enc = await c.batchEncrypt({
      items: [
        { keyId: aes.id, algorithm: GCM, plaintext: Buffer.from("one") },
        { keyId: aes.id, algorithm: GCM, plaintext: Buffer.alloc(1025) },
        { keyId: "../etc", algorithm: GCM, plaintext: Buffer.from("x") },
        { keyId: aes.id, algorithm: GCM, plaintext: Buffer.from("four") },
      ],
    });
    expect(enc.results.map((x) => x.result?.$case)).toEqual(["ok", "error", "error", "ok"]);
    expect(enc.results[1]!.result!.value).toEqual({ code: GrpcStatus.RESOURCE_EXHAUSTED, message: expect.stringContaining("limits.maxPayloadBytes") });
    expect(enc.results[2]!.result!.value).toEqual({ code: GrpcStatus.INVALID_ARGUMENT, message: expect.stringContaining("key_id") });
    const one = enc.results[0]!.result!.value as { ciphertext: Buffer; iv: Buffer };
    const four = enc.results[3]!.result!.value as { ciphertext: Buffer; iv: Buffer };
    const tampered = Buffer.from(four.ciphertext);
    tampered[0]! ^= 0xff;
    const dec = await c.batchDecrypt({
      items: [
        { keyId: aes.id, algorithm: GCM, ciphertext: one.ciphertext, iv: one.iv },
        { keyId: aes.id, algorithm: GCM, ciphertext: tampered, iv: four.iv },
        { keyId: aesEncOnly.id, algorithm: GCM, ciphertext: one.ciphertext, iv: one.iv },
        { keyId: aes.id, algorithm: GCM, ciphertext: four.ciphertext, iv: four.iv },
      ],
    });
    expect(dec.results.map((x) => x.result?.$case)).toEqual(["ok", "error", "error", "ok"]);
    expect(Buffer.from((dec.results[0]!.result!.value as { plaintext: Buffer }).plaintext).toString()).toBe("one");
    expect(Buffer.from((dec.results[3]!.result!.value as { plaintext: Buffer }).plaintext).toString()).toBe("four");
    expect(dec.results[1]!.result!.value).toEqual({ code: GrpcStatus.INVALID_ARGUMENT, message: expect.stringContaining("authentication") });
    expect(dec.results[2]!.result!.value).toEqual({ code: GrpcStatus.FAILED_PRECONDITION, message: expect.stringContaining("does not allow decrypt") });
  });
});

describe("idempotency", () => {
  it("reusing a request_id for a different spec returns the first key unchanged (the id wins, the new spec is ignored)", async () => {
    const before = await count();
    const first = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "dup-first", requestId: "dup-rid" });
    const second = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "dup-second", requestId: "dup-rid" });
    expect(second).toEqual(first);
    expect(second.spec).toBe(KeySpec.KEY_SPEC_AES_128);
    expect(second.label).toBe("dup-first");
    expect(await count()).toBe(before + 1);
  });
});

describe("after all of the above", () => {
  it("the daemon still serves: a sign round trip verifies", async () => {
    const msg = Buffer.from("still alive");
    const s = await c.sign({ keyId: ec.id, algorithm: ECDSA256, message: msg });
    expect((await c.verify({ keyId: ec.id, algorithm: ECDSA256, message: msg, signature: s.signature })).valid).toBe(true);
    const pem = (await c.getPublicKey({ keyId: ec.id })).pem;
    expect(crypto.verify("sha256", msg, pem, Buffer.from(s.signature))).toBe(true);
  });

  it("the token holds hsmd objects only for listed keys, the domain key and the import key", async () => {
    await expectTokenHoldsOnlyListedKeys();
  });
});
