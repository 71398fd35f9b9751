import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import {
  EncryptionAlgorithm,
  GrpcStatus,
  HsmClient,
  HsmClientError,
  KeySpec,
  KeyUsage,
  MessageType,
  PublicKeyFormat,
  SignatureFormat,
  SigningAlgorithm,
  WrapAlgorithm,
  wrapForImport,
  type Key,
} from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";
import { pkcs11Tool } from "../helpers/softhsm";

// Bad input of every kind, through real gRPC to a real daemon on a fresh SoftHSM2 token with small
// limits. Each refusal must carry the exact status and a message that names what to fix; none may
// leave a key behind (checked through the API and, independently, with pkcs11-tool).
const LIMITS = { maxPayloadBytes: 1024, maxBatchItems: 4, maxLabelLength: 16, maxRandomBytes: 64, maxPageSize: 1000 };

let td: TestDaemon;
let c: HsmClient;

/** Keys shared by the cases below. */
let aes: Key; // AES-256, encrypt+decrypt, not exportable
let aesEncOnly: Key; // AES-256, encrypt only
let kek: Key; // AES-256, wrap+unwrap
let rsa: Key; // RSA-2048, sign+verify
let ec: Key; // P-256, sign+verify
let ecDerive: Key; // P-256, derive only
let ecExportable: Key; // P-256, sign+verify, exportable
let hmac256: Key; // HMAC-SHA256
let ed: Key; // Ed25519
let importKeyId: string;
let importSpki: Buffer;
let wrappingAlgorithm: string;

const UNKNOWN_ID = "00000000-0000-4000-8000-000000000000";
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const CBC = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD;
const ECDSA256 = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;

/** The call must reject with an HsmClientError of exactly `codeName` whose details contain every phrase. */
async function expectError(p: Promise<unknown>, codeName: string, ...phrases: string[]): Promise<HsmClientError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${codeName}, but the call succeeded`).toBeInstanceOf(HsmClientError);
  const e = err as HsmClientError;
  expect({ codeName: e.codeName, details: e.details }).toEqual({ codeName, details: expect.any(String) });
  for (const phrase of phrases) expect(e.details).toContain(phrase);
  // Never a raw PKCS#11 return value in front of a person.
  expect(e.details).not.toMatch(/CKR_|internal error/);
  return e;
}

const listAll = async () => (await c.listKeys({ pageSize: 1000 })).keys;
const count = async () => (await listAll()).length;

/** A failing create must leave the key count where it was. */
async function expectNoNewKey(call: () => Promise<unknown>, codeName: string, ...phrases: string[]): Promise<void> {
  const before = await count();
  await expectError(call(), codeName, ...phrases);
  expect(await count()).toBe(before);
}

beforeAll(async () => {
  td = await startTestDaemon({ limits: LIMITS });
  c = await userClient(td);
  const gen = (spec: KeySpec, label: string, usages: KeyUsage[] = [], exportable = false) => c.generateKey({ spec, label, usages, exportable });
  [aes, aesEncOnly, kek, rsa, ec, ecDerive, ecExportable, hmac256, ed] = await Promise.all([
    gen(KeySpec.KEY_SPEC_AES_256, "aes"),
    gen(KeySpec.KEY_SPEC_AES_256, "aes-enc-only", [KeyUsage.KEY_USAGE_ENCRYPT]),
    gen(KeySpec.KEY_SPEC_AES_256, "kek", [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]),
    gen(KeySpec.KEY_SPEC_RSA_2048, "rsa"),
    gen(KeySpec.KEY_SPEC_EC_P256, "ec"),
    gen(KeySpec.KEY_SPEC_EC_P256, "ec-derive", [KeyUsage.KEY_USAGE_DERIVE]),
    gen(KeySpec.KEY_SPEC_EC_P256, "ec-exportable", [], true),
    gen(KeySpec.KEY_SPEC_HMAC_SHA256, "hmac256"),
    gen(KeySpec.KEY_SPEC_ED25519, "ed"),
  ]);
  const p = await c.getImportParameters({});
  importKeyId = p.importKeyId;
  importSpki = Buffer.from(p.publicKeySpki);
  wrappingAlgorithm = p.wrappingAlgorithm;
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

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
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: crypto.randomBytes(91), label: "pub" }), "INVALID_ARGUMENT", "public_key", "SPKI_DER");
  });

  it("importPublicKey with a PEM body without its header", async () => {
    const body = (ecPair().publicKey.export({ type: "spki", format: "pem" }) as string).split("\n").filter((l) => l && !l.startsWith("-----")).join("\n");
    await expectNoNewKey(() => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM, publicKey: Buffer.from(body), label: "pub" }), "INVALID_ARGUMENT", "public_key", "PEM");
  });

  it("importPublicKey with a private JWK (has \"d\") says so", async () => {
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
    expect(r).toEqual({ keyId: k.id, valid: false });
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
    const keys = await listAll();
    const out = pkcs11Tool(td.token, ["--list-objects"]);
    const onToken = new Set([...out.matchAll(/label:\s+hsmd:(\S+)/g)].map((m) => m[1]!));
    const expected = new Set([...keys.map((k) => k.id), td.daemon.domainKeyId, importKeyId]);
    expect([...onToken].sort()).toEqual([...expected].sort());
    // every listed key's parts are there: a secret key once, a key pair twice, a public key once
    for (const k of keys) {
      const n = out.split("\n").filter((l) => new RegExp(`label:\\s+hsmd:${k.id}$`).test(l.trim())).length;
      expect(n, `objects of ${k.id} (spec ${k.spec})`).toBe(k.publicOnly || k.publicKeySpki.length === 0 ? 1 : 2);
    }
  });
});
