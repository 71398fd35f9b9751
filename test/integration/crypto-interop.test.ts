import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, MessageType, PublicKeyFormat, SignatureFormat, SigningAlgorithm, WrapAlgorithm, wrapForImport } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";
import { openssl } from "../helpers/openssl";
import { pkcs11Tool } from "../helpers/softhsm";

// Every key kind and mechanism through real gRPC to a real daemon on a real SoftHSM2 token, each
// result checked by an independent implementation: Node's crypto and the openssl CLI, both ways.
let td: TestDaemon;
let c: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td);
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

const pem = async (id: string) => (await c.getPublicKey({ keyId: id })).pem;

/** Imports raw secret bytes (AES, HMAC) through BYOK. */
async function importSecret(spec: KeySpec, material: Buffer, usages: KeyUsage[], exportable = false): Promise<string> {
  const p = await c.getImportParameters({});
  const blob = wrapForImport(Buffer.from(p.publicKeySpki), material, p.wrappingAlgorithm);
  const k = await c.importKey({ spec, label: "imported", usages, importKeyId: p.importKeyId, wrappedKeyMaterial: blob, exportable });
  return k.id;
}

describe("key lifecycle", () => {
  it.each([
    KeySpec.KEY_SPEC_AES_128,
    KeySpec.KEY_SPEC_AES_256,
    KeySpec.KEY_SPEC_HMAC_SHA256,
    KeySpec.KEY_SPEC_HMAC_SHA384,
    KeySpec.KEY_SPEC_HMAC_SHA512,
    KeySpec.KEY_SPEC_RSA_2048,
    KeySpec.KEY_SPEC_RSA_3072,
    KeySpec.KEY_SPEC_RSA_4096,
    KeySpec.KEY_SPEC_EC_P256,
    KeySpec.KEY_SPEC_EC_P384,
    KeySpec.KEY_SPEC_EC_P521,
    KeySpec.KEY_SPEC_EC_SECP256K1,
    KeySpec.KEY_SPEC_ED25519,
  ])("generates, gets and deletes spec %s", async (spec) => {
    const k = await c.generateKey({ spec, label: `lifecycle-${spec}` });
    expect(k.spec).toBe(spec);
    expect((await c.getKey({ keyId: k.id })).label).toBe(`lifecycle-${spec}`);
    if (k.publicKeySpki.length) {
      // OpenSSL reads the public key the daemon hands out.
      const p = await c.getPublicKey({ keyId: k.id });
      const out = openssl((d) => ["pkey", "-pubin", "-in", `${d}/pub.pem`, "-noout", "-text"], { "pub.pem": p.pem });
      expect(out.ok).toBe(true);
      expect(Buffer.from(p.spkiDer)).toEqual(crypto.createPublicKey(p.pem).export({ type: "spki", format: "der" }));
      const jwk = JSON.parse(p.jwk);
      expect(crypto.createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "der" })).toEqual(Buffer.from(p.spkiDer));
    }
    await c.deleteKey({ keyId: k.id });
    await expect(c.getKey({ keyId: k.id })).rejects.toMatchObject({ codeName: "NOT_FOUND" });
  });

  it("lists with filters and pages", async () => {
    for (let i = 0; i < 5; i++) await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: `page-${i}` });
    await c.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "page-hmac" });
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const r = await c.listKeys({ labelPrefix: "page-", spec: KeySpec.KEY_SPEC_AES_128, pageSize: 2, pageToken: token });
      seen.push(...r.keys.map((k) => k.label));
      token = r.nextPageToken;
      pages++;
    } while (token);
    expect(seen.sort()).toEqual(["page-0", "page-1", "page-2", "page-3", "page-4"]);
    expect(pages).toBe(3);
    const byUsage = await c.listKeys({ labelPrefix: "page-", usage: KeyUsage.KEY_USAGE_SIGN });
    expect(byUsage.keys.map((k) => k.label)).toEqual(["page-hmac"]);
  });

  it("a retried create with the same request id returns the same key", async () => {
    const a = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "idem", requestId: "req-1" });
    const [b, d] = await Promise.all([
      c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "idem", requestId: "req-1" }),
      c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "idem", requestId: "req-1" }),
    ]);
    expect(b.id).toBe(a.id);
    expect(d.id).toBe(a.id);
    expect((await c.listKeys({ labelPrefix: "idem" })).keys).toHaveLength(1);
  });
});

describe("signatures, both ways with OpenSSL", () => {
  const msg = Buffer.from("the quick brown fox jumps over the lazy dog");

  it.each([
    [KeySpec.KEY_SPEC_EC_P256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, "sha256", "prime256v1"],
    [KeySpec.KEY_SPEC_EC_P384, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA384, "sha384", "secp384r1"],
    [KeySpec.KEY_SPEC_EC_P521, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA512, "sha512", "secp521r1"],
    [KeySpec.KEY_SPEC_EC_SECP256K1, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, "sha256", "secp256k1"],
  ] as const)("ECDSA spec %s", async (spec, alg, hash, curve) => {
    const k = await c.generateKey({ spec, label: "ecdsa" });
    const der = await c.sign({ keyId: k.id, algorithm: alg, message: msg });
    const v = openssl((d) => ["dgst", `-${hash}`, "-verify", `${d}/pub.pem`, "-signature", `${d}/sig`, `${d}/msg`], { "pub.pem": await pem(k.id), sig: Buffer.from(der.signature), msg });
    expect(v.ok).toBe(true);
    // raw r||s and digest input
    const digest = crypto.createHash(hash).update(msg).digest();
    const raw = await c.sign({ keyId: k.id, algorithm: alg, message: digest, messageType: MessageType.MESSAGE_TYPE_DIGEST, signatureFormat: SignatureFormat.SIGNATURE_FORMAT_RAW });
    expect(crypto.verify(hash, msg, { key: await pem(k.id), dsaEncoding: "ieee-p1363" }, Buffer.from(raw.signature))).toBe(true);
    expect((await c.verify({ keyId: k.id, algorithm: alg, message: msg, signature: raw.signature, signatureFormat: SignatureFormat.SIGNATURE_FORMAT_RAW })).valid).toBe(true);

    // OpenSSL signs, the daemon verifies (public key imported as PEM).
    const gen = openssl((d) => ["genpkey", "-algorithm", "EC", "-pkeyopt", `ec_paramgen_curve:${curve}`, "-out", `${d}/k.pem`]);
    const priv = gen.read("k.pem");
    const s = openssl((d) => ["dgst", `-${hash}`, "-sign", `${d}/k.pem`, "-out", `${d}/sig`, `${d}/msg`], { "k.pem": priv, msg });
    const pub = crypto.createPublicKey(priv).export({ type: "spki", format: "pem" });
    const imp = await c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM, publicKey: Buffer.from(pub), label: "openssl-pub" });
    expect((await c.verify({ keyId: imp.id, algorithm: alg, message: msg, signature: s.read("sig") })).valid).toBe(true);
    expect((await c.verify({ keyId: imp.id, algorithm: alg, message: Buffer.from("other"), signature: s.read("sig") })).valid).toBe(false);
  });

  it.each([
    [SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256, "sha256", false],
    [SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA512, "sha512", false],
    [SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256, "sha256", true],
    [SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA384, "sha384", true],
  ] as const)("RSA %s", async (alg, hash, pss) => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa" });
    const pssOpts = pss ? ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"] : [];
    const sig = await c.sign({ keyId: k.id, algorithm: alg, message: msg });
    expect(
      openssl((d) => ["dgst", `-${hash}`, ...pssOpts, "-verify", `${d}/pub.pem`, "-signature", `${d}/sig`, `${d}/msg`], { "pub.pem": await pem(k.id), sig: Buffer.from(sig.signature), msg }).ok,
    ).toBe(true);
    const digestSig = await c.sign({ keyId: k.id, algorithm: alg, message: crypto.createHash(hash).update(msg).digest(), messageType: MessageType.MESSAGE_TYPE_DIGEST });
    expect(
      openssl((d) => ["dgst", `-${hash}`, ...pssOpts, "-verify", `${d}/pub.pem`, "-signature", `${d}/sig`, `${d}/msg`], { "pub.pem": await pem(k.id), sig: Buffer.from(digestSig.signature), msg }).ok,
    ).toBe(true);

    const gen = openssl((d) => ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", `${d}/k.pem`]);
    const s = openssl((d) => ["dgst", `-${hash}`, ...pssOpts, "-sign", `${d}/k.pem`, "-out", `${d}/sig`, `${d}/msg`], { "k.pem": gen.read("k.pem"), msg });
    const spki = crypto.createPublicKey(gen.read("k.pem")).export({ type: "spki", format: "der" });
    const imp = await c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: spki, label: "openssl-rsa" });
    expect((await c.verify({ keyId: imp.id, algorithm: alg, message: msg, signature: s.read("sig") })).valid).toBe(true);
  });

  it("Ed25519", async () => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_ED25519, label: "ed" });
    const sig = await c.sign({ keyId: k.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: msg });
    expect(
      openssl((d) => ["pkeyutl", "-verify", "-pubin", "-inkey", `${d}/pub.pem`, "-rawin", "-in", `${d}/msg`, "-sigfile", `${d}/sig`], {
        "pub.pem": await pem(k.id),
        sig: Buffer.from(sig.signature),
        msg,
      }).ok,
    ).toBe(true);
    const gen = openssl((d) => ["genpkey", "-algorithm", "ED25519", "-out", `${d}/k.pem`]);
    const s = openssl((d) => ["pkeyutl", "-sign", "-inkey", `${d}/k.pem`, "-rawin", "-in", `${d}/msg`, "-out", `${d}/sig`], { "k.pem": gen.read("k.pem"), msg });
    const jwk = crypto.createPublicKey(gen.read("k.pem")).export({ format: "jwk" });
    const imp = await c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK, publicKey: Buffer.from(JSON.stringify(jwk)), label: "openssl-ed" });
    expect((await c.verify({ keyId: imp.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: msg, signature: s.read("sig") })).valid).toBe(true);
  });

  it("HMAC equals Node's HMAC over an imported key", async () => {
    for (const [spec, alg, hash, len] of [
      [KeySpec.KEY_SPEC_HMAC_SHA256, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, "sha256", 32],
      [KeySpec.KEY_SPEC_HMAC_SHA384, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA384, "sha384", 48],
      [KeySpec.KEY_SPEC_HMAC_SHA512, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA512, "sha512", 64],
    ] as const) {
      const key = crypto.randomBytes(len);
      const id = await importSecret(spec, key, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY]);
      const mac = await c.sign({ keyId: id, algorithm: alg, message: msg });
      expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac(hash, key).update(msg).digest());
      expect((await c.verify({ keyId: id, algorithm: alg, message: msg, signature: mac.signature })).valid).toBe(true);
    }
  });
});

describe("encryption, both ways with Node", () => {
  it("AES-GCM with AAD; the service picks the IV", async () => {
    const key = crypto.randomBytes(32);
    const id = await importSecret(KeySpec.KEY_SPEC_AES_256, key, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT]);
    const pt = crypto.randomBytes(4096);
    const aad = Buffer.from("context");
    const e = await c.encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: pt, aad });
    expect(e.iv).toHaveLength(12);
    const ct = Buffer.from(e.ciphertext);
    const d = crypto.createDecipheriv("aes-256-gcm", key, e.iv).setAAD(aad).setAuthTag(ct.subarray(-16));
    expect(Buffer.concat([d.update(ct.subarray(0, -16)), d.final()])).toEqual(pt);
    const iv = crypto.randomBytes(12);
    const enc = crypto.createCipheriv("aes-256-gcm", key, iv).setAAD(aad);
    const nodeCt = Buffer.concat([enc.update(pt), enc.final(), enc.getAuthTag()]);
    const back = await c.decrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: nodeCt, aad, iv });
    expect(Buffer.from(back.plaintext)).toEqual(pt);
    const e2 = await c.encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: pt, aad });
    expect(Buffer.from(e2.iv)).not.toEqual(Buffer.from(e.iv));
  });

  it("AES-CBC (PKCS#7) and AES-CTR", async () => {
    const key = crypto.randomBytes(16);
    const id = await importSecret(KeySpec.KEY_SPEC_AES_128, key, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT]);
    for (const [alg, name] of [
      [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD, "aes-128-cbc"],
      [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CTR, "aes-128-ctr"],
    ] as const) {
      for (const len of [1, 15, 16, 17, 1000]) {
        const pt = crypto.randomBytes(len);
        const e = await c.encrypt({ keyId: id, algorithm: alg, plaintext: pt });
        const d = crypto.createDecipheriv(name, key, e.iv);
        expect(Buffer.concat([d.update(e.ciphertext), d.final()])).toEqual(pt);
        const iv = crypto.randomBytes(16);
        const enc = crypto.createCipheriv(name, key, iv);
        const ct = Buffer.concat([enc.update(pt), enc.final()]);
        expect(Buffer.from((await c.decrypt({ keyId: id, algorithm: alg, ciphertext: ct, iv })).plaintext)).toEqual(pt);
      }
    }
  });

  it.each([
    [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA1, "sha1"],
    [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA256, "sha256"],
    [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA384, "sha384"],
    [EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA512, "sha512"],
  ] as const)("RSA-OAEP %s: Node and OpenSSL encrypt, the daemon decrypts", async (alg, hash) => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_3072, label: "oaep", usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] });
    const pt = crypto.randomBytes(64);
    const ct = crypto.publicEncrypt({ key: await pem(k.id), oaepHash: hash, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING }, pt);
    expect(Buffer.from((await c.decrypt({ keyId: k.id, algorithm: alg, ciphertext: ct })).plaintext)).toEqual(pt);
    const o = openssl(
      (d) => [
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        `${d}/pub.pem`,
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        `rsa_oaep_md:${hash}`,
        "-pkeyopt",
        `rsa_mgf1_md:${hash}`,
        "-in",
        `${d}/pt`,
        "-out",
        `${d}/ct`,
      ],
      { "pub.pem": await pem(k.id), pt },
    );
    expect(Buffer.from((await c.decrypt({ keyId: k.id, algorithm: alg, ciphertext: o.read("ct") })).plaintext)).toEqual(pt);
    const e = await c.encrypt({ keyId: k.id, algorithm: alg, plaintext: pt });
    expect(Buffer.from((await c.decrypt({ keyId: k.id, algorithm: alg, ciphertext: e.ciphertext })).plaintext)).toEqual(pt);
  });
});

describe("wrap, unwrap, derive, random, import", () => {
  it("AES-KW and AES-KWP wrap what Node unwraps, and unwrap what Node wraps", async () => {
    const kek = crypto.randomBytes(32);
    const kekId = await importSecret(KeySpec.KEY_SPEC_AES_256, kek, [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]);
    const target = crypto.randomBytes(16);
    const tId = await importSecret(KeySpec.KEY_SPEC_AES_128, target, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], true);
    const kw = await c.wrapKey({ wrappingKeyId: kekId, keyId: tId, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KW });
    const dkw = crypto.createDecipheriv("id-aes256-wrap", kek, Buffer.from("A6A6A6A6A6A6A6A6", "hex"));
    expect(Buffer.concat([dkw.update(kw.wrappedKey), dkw.final()])).toEqual(target);
    const kwp = await c.wrapKey({ wrappingKeyId: kekId, keyId: tId, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP });
    const dkwp = crypto.createDecipheriv("id-aes256-wrap-pad", kek, Buffer.from("A65959A6", "hex"));
    expect(Buffer.concat([dkwp.update(kwp.wrappedKey), dkwp.final()])).toEqual(target);

    const fresh = crypto.randomBytes(32);
    const w = crypto.createCipheriv("id-aes256-wrap-pad", kek, Buffer.from("A65959A6", "hex"));
    const blob = Buffer.concat([w.update(fresh), w.final()]);
    const u = await c.unwrapKey({ unwrappingKeyId: kekId, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP, wrappedKey: blob, spec: KeySpec.KEY_SPEC_AES_256, label: "unwrapped" });
    const e = await c.encrypt({ keyId: u.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("x") });
    const ct = Buffer.from(e.ciphertext);
    const d = crypto.createDecipheriv("aes-256-gcm", fresh, e.iv).setAuthTag(ct.subarray(-16));
    expect(Buffer.concat([d.update(ct.subarray(0, -16)), d.final()]).toString()).toBe("x");
  });

  it("RSA-OAEP: Node wraps, the daemon unwraps, wraps again and unwraps its own blob", async () => {
    const rsa = await c.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa-wrap", usages: [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP] });
    const secret = crypto.randomBytes(32);
    const blob = crypto.publicEncrypt({ key: await pem(rsa.id), oaepHash: "sha1", padding: crypto.constants.RSA_PKCS1_OAEP_PADDING }, secret);
    // SoftHSM2 2.6 does OAEP with SHA-1 only, and a wrapped key never passes through the host.
    await expect(
      c.unwrapKey({ unwrappingKeyId: rsa.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA256, wrappedKey: blob, spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "x" }),
    ).rejects.toMatchObject({
      codeName: "FAILED_PRECONDITION",
      details: expect.stringContaining("CKM_RSA_PKCS_OAEP with SHA256"),
    });
    const u = await c.unwrapKey({
      unwrappingKeyId: rsa.id,
      algorithm: WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA1,
      wrappedKey: blob,
      spec: KeySpec.KEY_SPEC_HMAC_SHA256,
      label: "via-oaep",
      exportable: true,
    });
    const mac = await c.sign({ keyId: u.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: Buffer.from("m") });
    expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac("sha256", secret).update("m").digest());
    const back = await c.wrapKey({ wrappingKeyId: rsa.id, keyId: u.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA1 });
    const again = await c.unwrapKey({
      unwrappingKeyId: rsa.id,
      algorithm: WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA1,
      wrappedKey: back.wrappedKey,
      spec: KeySpec.KEY_SPEC_HMAC_SHA256,
      label: "round",
    });
    const mac2 = await c.sign({ keyId: again.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: Buffer.from("m") });
    expect(mac2.signature).toEqual(mac.signature);
  });

  it("BYOK imports an EC private key (PKCS#8) that signs for its public key", async () => {
    const kp = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    const p = await c.getImportParameters({});
    expect(p.wrappingAlgorithm).toMatch(/^RSA_OAEP_SHA(1|256)_AES_KWP$/);
    const blob = wrapForImport(Buffer.from(p.publicKeySpki), kp.privateKey.export({ type: "pkcs8", format: "der" }), p.wrappingAlgorithm);
    const k = await c.importKey({
      spec: KeySpec.KEY_SPEC_EC_P256,
      label: "byok-ec",
      importKeyId: p.importKeyId,
      wrappedKeyMaterial: blob,
      publicKeySpki: kp.publicKey.export({ type: "spki", format: "der" }),
    });
    const sig = await c.sign({ keyId: k.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from("byok") });
    expect(crypto.verify("sha256", Buffer.from("byok"), kp.publicKey, Buffer.from(sig.signature))).toBe(true);
    // A public key that does not match is refused, and leaves no key behind.
    const other = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" });
    const before = (await c.listKeys({ pageSize: 1000 })).keys.length;
    await expect(c.importKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "byok-bad", importKeyId: p.importKeyId, wrappedKeyMaterial: blob, publicKeySpki: other })).rejects.toMatchObject({
      codeName: "INVALID_ARGUMENT",
    });
    expect((await c.listKeys({ pageSize: 1000 })).keys.length).toBe(before);
  });

  it("ECDH derives the AES key Node derives", async () => {
    const ec = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "ecdh", usages: [KeyUsage.KEY_USAGE_DERIVE] });
    const peer = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    const k = await c.deriveKey({ privateKeyId: ec.id, peerPublicKeySpki: peer.publicKey.export({ type: "spki", format: "der" }), spec: KeySpec.KEY_SPEC_AES_256, label: "derived" });
    const shared = crypto.diffieHellman({ privateKey: peer.privateKey, publicKey: crypto.createPublicKey(await pem(ec.id)) });
    const e = await c.encrypt({ keyId: k.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CTR, plaintext: Buffer.from("ecdh!") });
    const d = crypto.createDecipheriv("aes-256-ctr", shared, e.iv);
    expect(Buffer.concat([d.update(e.ciphertext), d.final()]).toString()).toBe("ecdh!");
  });

  it("random bytes", async () => {
    const a = await c.generateRandom({ length: 64 });
    const b = await c.generateRandom({ length: 64 });
    expect(a.random).toHaveLength(64);
    expect(Buffer.from(a.random)).not.toEqual(Buffer.from(b.random));
  });

  it("batches return one result or error per item", async () => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "batch" });
    const items = Array.from({ length: 10 }, (_, i) => ({
      keyId: k.id,
      algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256,
      message: Buffer.from(`m${i}`),
      messageType: 0,
      signatureFormat: 0,
    }));
    items.push({ ...items[0]!, keyId: "00000000-0000-0000-0000-000000000000" });
    const r = await c.batchSign({ items });
    expect(r.results).toHaveLength(11);
    for (let i = 0; i < 10; i++) {
      const res = r.results[i]!.result!;
      expect(res.$case).toBe("ok");
      expect(crypto.verify("sha256", Buffer.from(`m${i}`), await pem(k.id), Buffer.from((res.value as { signature: Buffer }).signature))).toBe(true);
    }
    expect(r.results[10]!.result).toMatchObject({ $case: "error", value: { code: 5 } });
    const v = await c.batchVerify({ items: items.slice(0, 10).map((it, i) => ({ ...it, signature: (r.results[i]!.result!.value as { signature: Buffer }).signature })) });
    expect(v.results.every((x) => x.result?.$case === "ok" && (x.result.value as { valid: boolean }).valid)).toBe(true);
    const aes = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "batch-aes" });
    const enc = await c.batchEncrypt({ items: [1, 2, 3].map((n) => ({ keyId: aes.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.alloc(n, n) })) });
    const dec = await c.batchDecrypt({
      items: enc.results.map((x) => {
        const v = x.result!.value as { ciphertext: Buffer; iv: Buffer };
        return { keyId: aes.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: v.ciphertext, iv: v.iv };
      }),
    });
    expect(dec.results.map((x) => Buffer.from((x.result!.value as { plaintext: Buffer }).plaintext))).toEqual([Buffer.alloc(1, 1), Buffer.alloc(2, 2), Buffer.alloc(3, 3)]);
  });
});

describe("what the token really holds", () => {
  it("pkcs11-tool lists the daemon's keys as sensitive", async () => {
    const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "visible" });
    const out = pkcs11Tool(td.token, ["--list-objects", "--type", "secrkey"]);
    const block = out.split(/\n(?=Secret Key Object)/).find((b) => b.includes(`hsmd:${k.id}`));
    expect(block).toBeDefined();
    expect(block).toMatch(/Access:\s+.*sensitive/);
    const priv = pkcs11Tool(td.token, ["--list-objects", "--type", "privkey"]);
    for (const b of priv.split(/\n(?=Private Key Object)/).filter((x) => x.includes("hsmd:"))) expect(b).toMatch(/Access:\s+.*sensitive/);
  });
});
