import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import { Device, type KeyAlgorithm } from "../../src/pkcs11";
import { createTempToken, pkcs11Tool, SOFTHSM_MODULE, type TempToken } from "../helpers/softhsm";

// The device layer against a real SoftHSM2 token, results checked with Node's crypto.
let token: TempToken;
let dev: Device;
const DOMAIN = "domain-test";

beforeAll(async () => {
  token = createTempToken();
  dev = await Device.open({ module: SOFTHSM_MODULE, tokenLabel: token.label, pin: token.pin, poolSize: 4, tokenObjects: true, sessionCopies: true });
  await dev.ensureDomainKey(DOMAIN, true);
});
afterAll(async () => {
  await dev?.close();
  token?.cleanup();
});

const pub = (spki: Buffer) => crypto.createPublicKey({ key: spki, format: "der", type: "spki" });

describe("device", () => {
  it("reads the token and its mechanisms", () => {
    expect(dev.token.label).toBe(token.label);
    expect(dev.mechanisms().length).toBeGreaterThan(20);
  });

  it.each<[string, KeyAlgorithm, string]>([
    ["p256", { type: "ec", curve: "P-256" }, "sha256"],
    ["p384", { type: "ec", curve: "P-384" }, "sha384"],
    ["p521", { type: "ec", curve: "P-521" }, "sha512"],
    ["k1", { type: "ec", curve: "secp256k1" }, "sha256"],
  ])("ECDSA %s signs what Node verifies (IEEE P1363)", async (id, alg, hash) => {
    const { spki } = await dev.generate(id, alg, ["sign", "verify"]);
    const msg = Buffer.from("hello " + id);
    const sig = await dev.sign(id, { name: "ECDSA", hash: hash as "sha256", input: "message" }, msg);
    expect(crypto.verify(hash, msg, { key: pub(spki!), dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
    expect(await dev.verify(id, { name: "ECDSA", hash: hash as "sha256", input: "message" }, msg, sig)).toBe(true);
    sig[5] ^= 1;
    expect(await dev.verify(id, { name: "ECDSA", hash: hash as "sha256", input: "message" }, msg, sig)).toBe(false);
  });

  it("RSA PKCS#1 and PSS, message and digest", async () => {
    const { spki } = await dev.generate("rsa", { type: "rsa", bits: 2048 }, ["sign", "verify"]);
    const msg = Buffer.from("rsa message");
    const s1 = await dev.sign("rsa", { name: "RSA_PKCS1", hash: "sha384", input: "message" }, msg);
    expect(crypto.verify("sha384", msg, pub(spki!), s1)).toBe(true);
    const d = crypto.createHash("sha256").update(msg).digest();
    const s2 = await dev.sign("rsa", { name: "RSA_PKCS1", hash: "sha256", input: "digest" }, d);
    expect(crypto.verify("sha256", msg, pub(spki!), s2)).toBe(true);
    const s3 = await dev.sign("rsa", { name: "RSA_PSS", hash: "sha256", input: "digest" }, d);
    expect(crypto.verify("sha256", msg, { key: pub(spki!), padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, s3)).toBe(true);
    const s4 = await dev.sign("rsa", { name: "RSA_PSS", hash: "sha512", input: "message" }, msg);
    expect(crypto.verify("sha512", msg, { key: pub(spki!), padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 64 }, s4)).toBe(true);
  });

  it("Ed25519 signs; the device cannot wrap it (SoftHSM2 2.6)", async () => {
    const { spki } = await dev.generate("ed", { type: "ed25519" }, ["sign", "verify"]);
    const msg = Buffer.from("ed message");
    const sig = await dev.sign("ed", { name: "EDDSA" }, msg);
    expect(crypto.verify(null, msg, pub(spki!), sig)).toBe(true);
    expect(await dev.sealForRecord("ed", { type: "ed25519" }, ["sign", "verify"], DOMAIN)).toBeUndefined();
  });

  it("AES-GCM, CBC, CTR interoperate with Node", async () => {
    await dev.generate("aes", { type: "aes", bits: 256 }, ["encrypt", "decrypt"]);
    const wrapped = await dev.sealForRecord("aes", { type: "aes", bits: 256 }, ["encrypt", "decrypt"], DOMAIN);
    expect(wrapped!.blob.length).toBe(40);
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from("aad");
    const pt = crypto.randomBytes(100);
    const ct = await dev.encrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, pt, 200);
    expect(await dev.decrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, ct, 200)).toEqual(pt);
    ct[0] ^= 1;
    await expect(dev.decrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, ct, 200)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    const iv16 = crypto.randomBytes(16);
    const cbc = await dev.encrypt("aes", "secret", { name: "AES_CBC_PAD", iv: iv16 }, pt, 200);
    expect(cbc.length).toBe(112);
    const ctr = await dev.encrypt("aes", "secret", { name: "AES_CTR", iv: iv16 }, pt, 200);
    expect(await dev.decrypt("aes", "secret", { name: "AES_CTR", iv: iv16 }, ctr, 200)).toEqual(pt);
  });

  it("materializes a destroyed key from its wrapped record", async () => {
    await dev.generate("hm", { type: "hmac", hash: "sha256" }, ["sign", "verify"]);
    const mac = await dev.sign("hm", { name: "HMAC", hash: "sha256" }, Buffer.from("m"));
    const w = await dev.sealForRecord("hm", { type: "hmac", hash: "sha256" }, ["sign", "verify"], DOMAIN);
    await dev.destroy("hm");
    expect(await dev.has("hm", "secret")).toBe(false);
    await dev.materialize("hm", { type: "hmac", hash: "sha256" }, ["sign", "verify"], w!);
    expect(await dev.sign("hm", { name: "HMAC", hash: "sha256" }, Buffer.from("m"))).toEqual(mac);
  });

  it("materializes a destroyed EC private key from its wrapped PKCS#8 record", async () => {
    const { spki } = await dev.generate("ecm", { type: "ec", curve: "P-384" }, ["sign", "verify"]);
    const w = await dev.sealForRecord("ecm", { type: "ec", curve: "P-384" }, ["sign", "verify"], DOMAIN);
    await dev.destroy("ecm");
    await dev.materialize("ecm", { type: "ec", curve: "P-384" }, ["sign", "verify"], w!, spki);
    const msg = Buffer.from("after materialize");
    const sig = await dev.sign("ecm", { name: "ECDSA", hash: "sha384", input: "message" }, msg);
    expect(crypto.verify("sha384", msg, { key: pub(spki!), dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
  });

  it("an empty message signs (no NULL pointer) and a failed call does not poison the session", async () => {
    await dev.generate("hm0", { type: "hmac", hash: "sha256" }, ["sign", "verify"]);
    for (let i = 0; i < 10; i++) {
      const mac = await dev.sign("hm0", { name: "HMAC", hash: "sha256" }, Buffer.alloc(0));
      expect(await dev.verify("hm0", { name: "HMAC", hash: "sha256" }, Buffer.alloc(0), mac)).toBe(true);
    }
  });

  it("ECDH derives the key Node derives (rightmost bytes of the shared secret, as SoftHSM2 truncates)", async () => {
    const { spki } = await dev.generate("ecdh", { type: "ec", curve: "P-256" }, ["derive"]);
    const peer = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    const peerJwk = peer.publicKey.export({ format: "jwk" });
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(peerJwk.x!, "base64url"), Buffer.from(peerJwk.y!, "base64url")]);
    await dev.deriveEcdh("ecdh", point, "derived", { type: "aes", bits: 128 }, ["encrypt", "decrypt"]);
    expect((await dev.listObjectIds()).get("derived")).toEqual(new Set(["secret"]));
    const iv = Buffer.alloc(16, 3);
    const pt = Buffer.from("x".repeat(20));
    const ct = await dev.encrypt("derived", "secret", { name: "AES_CTR", iv }, pt, 64);
    const shared = crypto.diffieHellman({ privateKey: peer.privateKey, publicKey: pub(spki!) });
    const d = crypto.createDecipheriv("aes-128-ctr", shared.subarray(shared.length - 16), iv);
    expect(Buffer.concat([d.update(ct), d.final()])).toEqual(pt);
  });

  it("recovers after its sessions are closed behind its back", async () => {
    await dev.generate("rec", { type: "aes", bits: 128 }, ["encrypt", "decrypt"]);
    await dev.sealForRecord("rec", { type: "aes", bits: 128 }, ["encrypt", "decrypt"], DOMAIN);
    dev.simulateSessionLoss();
    const ct = await dev.encrypt("rec", "secret", { name: "AES_CBC_PAD", iv: Buffer.alloc(16) }, Buffer.from("abc"), 64);
    expect(ct.length).toBe(16);
  });

  it("crypto on token keys runs on session copies: a deleted key leaves no copy behind, and a copy lost with its session is made again", async () => {
    const { spki } = await dev.generate("copied", { type: "ec", curve: "P-256" }, ["sign", "verify"]);
    await dev.sealForRecord("copied", { type: "ec", curve: "P-256" }, ["sign", "verify"], DOMAIN);
    const msg = Buffer.from("signed on the session copy");
    const sig = await dev.sign("copied", { name: "ECDSA", hash: "sha256", input: "message" }, msg);
    expect(crypto.verify("sha256", msg, { key: pub(spki!), dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
    // The copy is a session object of this process: the token itself holds the key once.
    expect(pkcs11Tool(token, ["--list-objects", "--type", "privkey"]).match(/label:\s+hsmd:copied\n/g)).toHaveLength(1);

    dev.simulateSessionLoss(); // the copy dies with the session that made it
    const again = await dev.sign("copied", { name: "ECDSA", hash: "sha256", input: "message" }, msg);
    expect(crypto.verify("sha256", msg, { key: pub(spki!), dsaEncoding: "ieee-p1363" }, again)).toBe(true);

    await dev.destroy("copied"); // finds every object with the id, the copy included
    expect((await dev.listObjectIds()).has("copied")).toBe(false);
    await expect(dev.sign("copied", { name: "ECDSA", hash: "sha256", input: "message" }, msg)).rejects.toThrow(/not materialized/);
  });

  it("keys are sensitive in the token (pkcs11-tool)", () => {
    const out = pkcs11Tool(token, ["--list-objects", "--type", "secrkey"]);
    expect(out).toContain("hsmd:aes");
    expect(out).toMatch(/sensitive/);
  });

  it("the domain key can only wrap and unwrap (pkcs11-tool)", () => {
    const out = pkcs11Tool(token, ["--list-objects", "--type", "secrkey"]);
    const block = out.split(/\n(?=Secret Key Object)/).find((b) => b.includes(`label:      hsmd:${DOMAIN}`));
    expect(block, out).toBeDefined();
    expect(block).toMatch(/Usage:\s+wrap, unwrap\s*\n/);
    expect(block).toMatch(/Access:\s+.*sensitive/);
  });
});
