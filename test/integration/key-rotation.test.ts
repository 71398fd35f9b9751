import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPublicKey, generateKeyPairSync, verify as nodeVerify } from "node:crypto";
import { EncryptionAlgorithm, HsmClient, KeyOrigin, KeySpec, KeyUsage, PublicKeyFormat, SigningAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { pkcs11Tool } from "../helpers/softhsm";
import { officerClient, userClient } from "../helpers/users";
import { KeyLoader } from "../helpers/wycheproof";

// Key versions on one node, through real gRPC to a daemon on a fresh SoftHSM2 token: RotateKey for
// each key family, old signatures verifying with their version and new ones made with the new one
// (checked with Node's crypto against GetPublicKey(version)), ListKeyVersions, request-id
// idempotence, the refusals, the min decryption version floor, trim (token and store read back) and
// a restart (reconcile keeps `K.vN` objects).

const SV = [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY];
const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const RSA = SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256;
const HMAC = SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256;
const CMAC = SigningAlgorithm.SIGNING_ALGORITHM_AES_CMAC;
const msg = Buffer.from("rotate me");

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
});
afterAll(async () => {
  alice?.close();
  bob?.close();
  await td?.cleanup();
});

/** The token's hsmd labels (pkcs11-tool, an independent view), one per object. */
const labels = (): string[] => [...pkcs11Tool(td.token, ["--list-objects"]).matchAll(/label:\s+(\S+)/g)].map((m) => m[1]!);
const count = (l: string[], label: string) => l.filter((x) => x === label).length;
/** The record as the store holds it (material included), parsed. */
const rawRecord = async (id: string) => JSON.parse((await td.daemon.store.get(`keys/${id}`))!.value.toString("utf8"));
const nodeOk = (spki: Uint8Array, sig: Uint8Array) => nodeVerify("sha256", msg, createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" }), Buffer.from(sig));

describe("RotateKey, asymmetric keys: each version its own pair", () => {
  for (const [name, spec, algorithm] of [
    ["EC P-256", KeySpec.KEY_SPEC_EC_P256, ECDSA],
    ["RSA-2048", KeySpec.KEY_SPEC_RSA_2048, RSA],
  ] as const) {
    it(`${name}: old signatures verify with their version, new ones are v2's (Node's crypto), the token holds K.v2`, async () => {
      const k = await alice.generateKey({ spec, label: `rot-${name}`, usages: SV });
      const s1 = await alice.sign({ keyId: k.id, algorithm, message: msg });
      expect(s1.keyVersion).toBe(1);
      const pub1 = await alice.getPublicKey({ keyId: k.id });
      expect(pub1.version).toBe(1);

      const r = await alice.rotateKey({ keyId: k.id });
      expect(r).toMatchObject({ id: k.id, version: 2, versionCount: 2 });
      expect(Buffer.from(r.publicKeySpki)).not.toEqual(Buffer.from(k.publicKeySpki));
      const s2 = await alice.sign({ keyId: k.id, algorithm, message: msg });
      expect(s2.keyVersion).toBe(2);
      const pub2 = await alice.getPublicKey({ keyId: k.id, version: 2 });
      const pubV1 = await alice.getPublicKey({ keyId: k.id, version: 1 });
      expect(pub2.version).toBe(2);
      expect(Buffer.from(pubV1.spkiDer)).toEqual(Buffer.from(pub1.spkiDer));
      expect(Buffer.from(pub2.spkiDer)).toEqual(Buffer.from(r.publicKeySpki));
      expect(Buffer.from((await alice.getPublicKey({ keyId: k.id })).spkiDer)).toEqual(Buffer.from(pub2.spkiDer));
      expect(JSON.parse(pub2.jwk).kid).toBe(`${k.id}:v2`);
      expect(JSON.parse(pubV1.jwk).kid).toBe(k.id);

      // Node's crypto: each signature under its own version's public key, and not the other's.
      expect(nodeOk(pub1.spkiDer, s1.signature)).toBe(true);
      expect(nodeOk(pub2.spkiDer, s2.signature)).toBe(true);
      expect(nodeOk(pub2.spkiDer, s1.signature)).toBe(false);
      // The service: key_version picks the version (0: the primary).
      expect((await alice.verify({ keyId: k.id, algorithm, message: msg, signature: s1.signature, keyVersion: 1 })).valid).toBe(true);
      expect((await alice.verify({ keyId: k.id, algorithm, message: msg, signature: s1.signature })).valid).toBe(false);
      const v2 = await alice.verify({ keyId: k.id, algorithm, message: msg, signature: s2.signature });
      expect(v2).toMatchObject({ valid: true, keyVersion: 2 });

      const l = labels();
      expect(count(l, `hsmd:${k.id}`)).toBe(2);
      expect(count(l, `hsmd:${k.id}.v2`)).toBe(2);
    });
  }

  it("Ed25519 (the device cannot wrap it: residency device) rotates into a device-local K.v2", async () => {
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_ED25519, label: "rot-ed", usages: SV });
    const algorithm = SigningAlgorithm.SIGNING_ALGORITHM_ED25519;
    const s1 = await alice.sign({ keyId: k.id, algorithm, message: msg });
    await alice.rotateKey({ keyId: k.id });
    const s2 = await alice.sign({ keyId: k.id, algorithm, message: msg });
    expect(s2.keyVersion).toBe(2);
    const pub2 = createPublicKey({ key: Buffer.from((await alice.getPublicKey({ keyId: k.id, version: 2 })).spkiDer), format: "der", type: "spki" });
    const pub1 = createPublicKey({ key: Buffer.from((await alice.getPublicKey({ keyId: k.id, version: 1 })).spkiDer), format: "der", type: "spki" });
    expect(nodeVerify(null, msg, pub2, Buffer.from(s2.signature))).toBe(true);
    expect(nodeVerify(null, msg, pub1, Buffer.from(s1.signature))).toBe(true);
    expect(nodeVerify(null, msg, pub2, Buffer.from(s1.signature))).toBe(false);
    expect(count(labels(), `hsmd:${k.id}.v2`)).toBe(2);
  });
});

describe("RotateKey, secret keys", () => {
  it("HMAC: tags of v1 verify with key_version 1 only; v2 makes other tags", async () => {
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "rot-hmac", usages: SV });
    const t1 = await alice.sign({ keyId: k.id, algorithm: HMAC, message: msg });
    await alice.rotateKey({ keyId: k.id });
    const t2 = await alice.sign({ keyId: k.id, algorithm: HMAC, message: msg });
    expect(t2.keyVersion).toBe(2);
    expect(Buffer.from(t2.signature)).not.toEqual(Buffer.from(t1.signature));
    expect((await alice.verify({ keyId: k.id, algorithm: HMAC, message: msg, signature: t1.signature, keyVersion: 1 })).valid).toBe(true);
    expect((await alice.verify({ keyId: k.id, algorithm: HMAC, message: msg, signature: t1.signature, keyVersion: 2 })).valid).toBe(false);
    expect((await alice.verify({ keyId: k.id, algorithm: HMAC, message: msg, signature: t2.signature })).valid).toBe(true);
    // Truncated tags go through the same version.
    const short = Buffer.from(t1.signature).subarray(0, 16);
    expect((await alice.verify({ keyId: k.id, algorithm: HMAC, message: msg, signature: short, macLength: 16, keyVersion: 1 })).valid).toBe(true);
    expect(count(labels(), `hsmd:${k.id}.v2`)).toBe(1);
  });

  it("AES-256: encryption uses v2 after rotation; CMAC tags of v1 verify with key_version 1 only", async () => {
    const cipher = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "rot-aes-gcm" });
    expect((await alice.rotateKey({ keyId: cipher.id })).version).toBe(2);
    const e = await alice.encrypt({ keyId: cipher.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: msg });
    expect(e.keyVersion).toBe(2);
    expect(count(labels(), `hsmd:${cipher.id}.v2`)).toBe(1);
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "rot-aes-cmac", usages: SV });
    const t1 = await alice.sign({ keyId: k.id, algorithm: CMAC, message: msg });
    const rotated = await alice.rotateKey({ keyId: k.id });
    expect(rotated.version).toBe(2);
    const t2 = await alice.sign({ keyId: k.id, algorithm: CMAC, message: msg });
    expect(Buffer.from(t2.signature)).not.toEqual(Buffer.from(t1.signature));
    expect((await alice.verify({ keyId: k.id, algorithm: CMAC, message: msg, signature: t1.signature, keyVersion: 1 })).valid).toBe(true);
    expect((await alice.verify({ keyId: k.id, algorithm: CMAC, message: msg, signature: t1.signature })).valid).toBe(false);
    await expectError(alice.getPublicKey({ keyId: k.id }), "FAILED_PRECONDITION", "secret key");
    const l = labels();
    expect(count(l, `hsmd:${k.id}`)).toBe(1);
    expect(count(l, `hsmd:${k.id}.v2`)).toBe(1);
  });
});

describe("ListKeyVersions, request ids and refusals", () => {
  it("lists every version oldest first with its SPKI and flags; a retried request id makes no second version", async () => {
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "rot-list", usages: SV });
    const a = await alice.rotateKey({ keyId: k.id, requestId: "rot-1" });
    const again = await alice.rotateKey({ keyId: k.id, requestId: "rot-1" });
    expect([a.version, again.version]).toEqual([2, 2]);
    // Concurrent retries of one request: still one version.
    const racing = await Promise.all([alice.rotateKey({ keyId: k.id, requestId: "rot-2" }), alice.rotateKey({ keyId: k.id, requestId: "rot-2" })]);
    expect(racing.map((x) => x.version)).toEqual([3, 3]);
    const l = await alice.listKeyVersions({ keyId: k.id });
    expect(l.primaryVersion).toBe(3);
    for (const keyVersion of [2, 3]) {
      const s = await alice.sign({ keyId: k.id, algorithm: ECDSA, message: msg });
      expect((await alice.verify({ keyId: k.id, algorithm: ECDSA, message: msg, signature: s.signature, keyVersion })).valid).toBe(keyVersion === 3);
    }
    expect(l.minDecryptionVersion).toBe(1);
    expect(l.versions.map((v) => [v.version, v.primary, v.decryptable])).toEqual([
      [1, false, true],
      [2, false, true],
      [3, true, true],
    ]);
    const spkis = l.versions.map((v) => Buffer.from(v.publicKeySpki).toString("hex"));
    expect(new Set(spkis).size).toBe(3);
    expect(spkis[0]).toBe(Buffer.from(k.publicKeySpki).toString("hex"));
    for (const v of l.versions) expect(Number.isNaN(Date.parse(v.createdAt))).toBe(false);
    // No transient object left behind by the losing racer: exactly v1..v3's pairs.
    const mine = labels().filter((x) => x.startsWith(`hsmd:${k.id}`));
    expect(mine.sort()).toEqual([`hsmd:${k.id}`, `hsmd:${k.id}`, `hsmd:${k.id}.v2`, `hsmd:${k.id}.v2`, `hsmd:${k.id}.v3`, `hsmd:${k.id}.v3`]);
    // Every key object in the token belongs to a key alice has (no transient id survives).
    const ids = new Set((await alice.listKeys({ pageSize: 1000 })).keys.map((x) => x.id));
    const stray = labels().filter((x) => /^hsmd:[0-9a-f-]{36}/.test(x) && !ids.has(x.slice(5, 41)));
    expect(stray).toEqual([]);
  });

  it("refuses loaded (IMPORTED or UNWRAPPED) and PUBLIC keys with FAILED_PRECONDITION naming the origin", async () => {
    const loader = await new KeyLoader(alice).init();
    const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const loaded = await loader.load(KeySpec.KEY_SPEC_EC_P256, pair.privateKey.export({ type: "pkcs8", format: "der" }), SV, { publicKeySpki: pair.publicKey.export({ type: "spki", format: "der" }) });
    const origin = (await alice.getKey({ keyId: loaded })).origin;
    expect([KeyOrigin.KEY_ORIGIN_IMPORTED, KeyOrigin.KEY_ORIGIN_UNWRAPPED]).toContain(origin);
    await expectError(alice.rotateKey({ keyId: loaded }), "FAILED_PRECONDITION", "only keys the HSM generated can rotate");
    await expectError(alice.updateRotationPolicy({ keyId: loaded, rotationPeriodDays: 90 }), "FAILED_PRECONDITION", "only keys the HSM generated");
    const pub = await alice.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: pair.publicKey.export({ type: "spki", format: "der" }), label: "pub" });
    await expectError(alice.rotateKey({ keyId: pub.id }), "FAILED_PRECONDITION", "PUBLIC");
    await expectError(alice.rotateKey({ keyId: "00000000-0000-4000-8000-000000000000" }), "NOT_FOUND");
    await expectError(alice.rotateKey({ keyId: "not a key" }), "INVALID_ARGUMENT", "key_id");
    const mine = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "rot-bad" });
    await expectError(alice.rotateKey({ keyId: mine.id, requestId: "r".repeat(129) }), "INVALID_ARGUMENT", "request_id is longer than 128");
    await expectError(alice.listKeyVersions({ keyId: "not a key" }), "INVALID_ARGUMENT", "key_id");
    await expectError(alice.updateRotationPolicy({ keyId: "00000000-0000-4000-8000-000000000000", rotationPeriodDays: 90 }), "NOT_FOUND");
    expect((await alice.getKey({ keyId: mine.id })).version).toBe(1);
  });

  it("only the owner rotates or changes versions; a user the key is shared with may list them; an officer may not", async () => {
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "rot-owner", usages: SV });
    // A key bob cannot see is not found for him (as every key call answers).
    await expectError(bob.rotateKey({ keyId: k.id }), "NOT_FOUND");
    await expectError(bob.listKeyVersions({ keyId: k.id }), "NOT_FOUND");
    await alice.shareKey({ keyId: k.id, username: "bob" });
    expect((await bob.listKeyVersions({ keyId: k.id })).versions).toHaveLength(1);
    await expectError(bob.rotateKey({ keyId: k.id }), "PERMISSION_DENIED");
    await expectError(bob.setMinDecryptionVersion({ keyId: k.id, minDecryptionVersion: 1 }), "PERMISSION_DENIED");
    await expectError(bob.trimKeyVersions({ keyId: k.id }), "PERMISSION_DENIED");
    await expectError(bob.updateRotationPolicy({ keyId: k.id, rotationPeriodDays: 90 }), "PERMISSION_DENIED");
    const co = await officerClient(td);
    try {
      await expectError(co.rotateKey({ keyId: k.id }), "PERMISSION_DENIED");
    } finally {
      co.close();
    }
    expect((await alice.getKey({ keyId: k.id })).version).toBe(1);
  });
});

describe("rotation policy", () => {
  it("GenerateKey and UpdateRotationPolicy set the period within 90..2560 days; 0 turns it off", async () => {
    await expectError(alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "p", rotationPeriodDays: 30 }), "INVALID_ARGUMENT", "rotation_period_days", "90 to 2560");
    const before = Date.now();
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "p", rotationPeriodDays: 90 });
    expect(k.rotationPeriodDays).toBe(90);
    const next = Date.parse(k.nextRotationAt);
    expect(next).toBeGreaterThanOrEqual(before + 90 * 86_400_000);
    expect(next).toBeLessThanOrEqual(Date.now() + 90 * 86_400_000);
    const u = await alice.updateRotationPolicy({ keyId: k.id, rotationPeriodDays: 365 });
    expect(u.rotationPeriodDays).toBe(365);
    await expectError(alice.updateRotationPolicy({ keyId: k.id, rotationPeriodDays: 2561 }), "INVALID_ARGUMENT", "rotation_period_days");
    const off = await alice.updateRotationPolicy({ keyId: k.id, rotationPeriodDays: 0 });
    expect([off.rotationPeriodDays, off.nextRotationAt]).toEqual([0, ""]);
  });
});

describe("min decryption version, trim, restart", () => {
  let keyId: string;
  let s1: Uint8Array;
  let s2: Uint8Array;
  let s3: Uint8Array;
  let v1Blob: string;

  it("SetMinDecryptionVersion: 1 to the primary; versions below refuse to verify", async () => {
    const k = await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "rot-trim", usages: SV });
    keyId = k.id;
    s1 = (await alice.sign({ keyId, algorithm: ECDSA, message: msg })).signature;
    await alice.rotateKey({ keyId });
    s2 = (await alice.sign({ keyId, algorithm: ECDSA, message: msg })).signature;
    await alice.rotateKey({ keyId });
    s3 = (await alice.sign({ keyId, algorithm: ECDSA, message: msg })).signature;
    v1Blob = (await rawRecord(keyId)).versions.find((v: { version: number }) => v.version === 1).material.blob.$b64;
    expect(typeof v1Blob).toBe("string");

    await expectError(alice.trimKeyVersions({ keyId }), "FAILED_PRECONDITION", "nothing to trim");
    await expectError(alice.setMinDecryptionVersion({ keyId, minDecryptionVersion: 0 }), "INVALID_ARGUMENT", "min_decryption_version", "1 to the primary version 3");
    await expectError(alice.setMinDecryptionVersion({ keyId, minDecryptionVersion: 4 }), "INVALID_ARGUMENT", "min_decryption_version");
    const set = await alice.setMinDecryptionVersion({ keyId, minDecryptionVersion: 3 });
    expect(set.minDecryptionVersion).toBe(3);
    await expectError(alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 1 }), "FAILED_PRECONDITION", "version 1", "min_decryption_version 3");
    await expectError(alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 9 }), "NOT_FOUND", "no version 9");
    await expectError(alice.getPublicKey({ keyId, version: 9 }), "NOT_FOUND", "no version 9");
    // The public key of a version below the floor is still readable (it is public).
    expect((await alice.getPublicKey({ keyId, version: 1 })).version).toBe(1);
    // Lowering it again while the versions exist.
    expect((await alice.setMinDecryptionVersion({ keyId, minDecryptionVersion: 2 })).minDecryptionVersion).toBe(2);
    expect((await alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s2, keyVersion: 2 })).valid).toBe(true);
    const l = await alice.listKeyVersions({ keyId });
    expect(l.versions.map((v) => v.decryptable)).toEqual([false, true, true]);
  });

  it("TrimKeyVersions destroys the versions below the floor in the token and the store", async () => {
    expect(count(labels(), `hsmd:${keyId}`)).toBe(2);
    const t = await alice.trimKeyVersions({ keyId });
    expect([t.versionCount, t.version, t.minDecryptionVersion]).toEqual([2, 3, 2]);
    const l = labels();
    expect(count(l, `hsmd:${keyId}`)).toBe(0);
    expect(count(l, `hsmd:${keyId}.v2`)).toBe(2);
    expect(count(l, `hsmd:${keyId}.v3`)).toBe(2);
    const raw = await rawRecord(keyId);
    expect(raw.versions.map((v: { version: number }) => v.version)).toEqual([2, 3]);
    expect(JSON.stringify(raw)).not.toContain(v1Blob);
    await expectError(alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 1 }), "NOT_FOUND", "no version 1");
    await expectError(alice.setMinDecryptionVersion({ keyId, minDecryptionVersion: 1 }), "FAILED_PRECONDITION", "trimmed");
    await expectError(alice.trimKeyVersions({ keyId }), "FAILED_PRECONDITION", "nothing to trim");
  });

  it("after a restart the versions are there (reconcile keeps K.vN, quarantines versions no record has) and verify as before", async () => {
    alice.close();
    bob.close();
    await td.stop();
    // Leftovers of a trim or rotation a crash cut short: objects of versions the record does not have
    // (version 1, trimmed; version 9, never committed), made in the token with pkcs11-tool.
    const hex = (s: string) => Buffer.from(s).toString("hex");
    for (const orphan of [keyId, `${keyId}.v9`]) pkcs11Tool(td.token, ["--keypairgen", "--key-type", "EC:prime256v1", "--label", `hsmd:${orphan}`, "--id", hex(orphan)]);
    td = await td.restart();
    alice = await userClient(td, "alice");
    bob = await userClient(td, "bob");
    const l = labels();
    expect(l.filter((x) => x.startsWith("hsmd-quarantine")).sort()).toEqual([`hsmd-quarantine:${keyId}`, `hsmd-quarantine:${keyId}`, `hsmd-quarantine:${keyId}.v9`, `hsmd-quarantine:${keyId}.v9`]);
    expect(count(l, `hsmd:${keyId}`)).toBe(0);
    expect(count(l, `hsmd:${keyId}.v2`)).toBe(2);
    expect(count(l, `hsmd:${keyId}.v3`)).toBe(2);
    const v = await alice.listKeyVersions({ keyId });
    expect(v.versions.map((x) => x.version)).toEqual([2, 3]);
    expect((await alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s2, keyVersion: 2 })).valid).toBe(true);
    expect((await alice.verify({ keyId, algorithm: ECDSA, message: msg, signature: s3 })).valid).toBe(true);
    const s = await alice.sign({ keyId, algorithm: ECDSA, message: msg });
    expect(s.keyVersion).toBe(3);
    // Deleting the key destroys every version's objects.
    await alice.deleteKey({ keyId });
    expect(labels().filter((x) => x.startsWith(`hsmd:${keyId}`))).toEqual([]);
  });
});
