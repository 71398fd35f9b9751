/**
 * CryptoService.CryptoStream against a real daemon on a SoftHSM2 token, through the generated
 * client over 127.0.0.1: every operation round trip checked with Node's crypto, many operations in
 * flight at once (each id answered once), and each message authorized exactly as its unary call
 * (own key, shared key, another user's key, a crypto officer, no or a bad session), with the unary
 * call's status and message side by side.
 */
import * as crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CryptoServiceClient } from "../../src/gen/hsm/v1/crypto";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, KeyUsage, Role, SigningAlgorithm, wrapForImport } from "../../src/sdk";
import { TestStream, cryptoClient, outcome, type StreamOp } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { USER_PASSWORD, officerClient, userClient } from "../helpers/users";

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;
let carol: HsmClient;
let co: HsmClient;
let client: CryptoServiceClient;
const k = {} as Record<"p256" | "rsa" | "aes" | "hmac", string>;
const aesKey = crypto.randomBytes(32);
const hmacKey = crypto.randomBytes(32);
const msg = Buffer.from("streamed message");
const tokenOf = (c: HsmClient) => c.exportSession()!.token;

async function importSecret(spec: KeySpec, material: Buffer, usages: KeyUsage[]): Promise<string> {
  const p = await alice.getImportParameters({});
  const blob = wrapForImport(Buffer.from(p.publicKeySpki), material, p.wrappingAlgorithm);
  return (await alice.importKey({ spec, label: "stream-imported", usages, importKeyId: p.importKeyId, wrappedKeyMaterial: blob })).id;
}

beforeAll(async () => {
  td = await startTestDaemon();
  co = await officerClient(td);
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
  carol = await userClient(td, "carol");
  k.p256 = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "p256" })).id;
  k.rsa = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "rsa" })).id;
  k.aes = await importSecret(KeySpec.KEY_SPEC_AES_256, aesKey, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT]);
  k.hmac = await importSecret(KeySpec.KEY_SPEC_HMAC_SHA256, hmacKey, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY]);
  await alice.shareKey({ keyId: k.p256, username: "bob" });
  client = cryptoClient(td.grpc);
}, 120_000);

afterAll(async () => {
  client?.close();
  for (const c of [alice, bob, carol, co]) c?.close();
  await td?.cleanup();
});

const sign = (keyId: string, algorithm: SigningAlgorithm, message = msg): StreamOp => ({
  $case: "sign",
  value: { keyId, algorithm, message, messageType: 0, signatureFormat: 0, macLength: 0 },
});
const pem = async (id: string) => (await alice.getPublicKey({ keyId: id })).pem;
const resultOf = <C extends string>(r: { result?: { $case: string; value: unknown } }, c: C) => {
  expect(outcome(r as never)).toEqual({ code: "OK", case: c });
  return r.result!.value as never;
};

async function unaryCode(p: Promise<unknown>): Promise<{ code: string; message?: string }> {
  try {
    await p;
    return { code: "OK" };
  } catch (e) {
    return { code: (e as HsmClientError).codeName, message: (e as HsmClientError).details };
  }
}

describe("round trips, checked with Node's crypto", () => {
  let s: TestStream;
  beforeAll(async () => {
    s = new TestStream(client, tokenOf(alice));
    await s.opened;
  });
  afterAll(async () => {
    s.close();
    expect((await s.ended).codeName).toBe("OK");
  });

  it("P-256 ECDSA and RSA-2048 PSS and PKCS#1 v1.5 signatures verify with crypto.verify", async () => {
    const ec: { signature: Buffer } = resultOf(await s.request(1, sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256)), "sign");
    expect(crypto.verify("sha256", msg, await pem(k.p256), ec.signature)).toBe(true);
    const pss: { signature: Buffer } = resultOf(await s.request(2, sign(k.rsa, SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256)), "sign");
    const rsaPub = await pem(k.rsa);
    expect(crypto.verify("sha256", msg, { key: rsaPub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, pss.signature)).toBe(true);
    const pkcs1: { signature: Buffer } = resultOf(await s.request(3, sign(k.rsa, SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256)), "sign");
    expect(crypto.verify("sha256", msg, { key: rsaPub, padding: crypto.constants.RSA_PKCS1_PADDING }, pkcs1.signature)).toBe(true);
  });

  it("verify answers true for a good signature and false for a bad one", async () => {
    const node = crypto.createPrivateKey(crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }));
    const ec: { signature: Buffer } = resultOf(await s.request(4, sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256)), "sign");
    const verify = (signature: Buffer): StreamOp => ({ $case: "verify", value: { ...sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256).value, signature } as never });
    expect(resultOf<"verify">(await s.request(5, verify(ec.signature)), "verify")).toMatchObject({ valid: true });
    expect(resultOf<"verify">(await s.request(6, verify(crypto.sign("sha256", msg, node))), "verify")).toMatchObject({ valid: false });
  });

  it("AES-GCM: the stream's ciphertext decrypts with Node, Node's decrypts on the stream", async () => {
    const pt = crypto.randomBytes(4096);
    const aad = Buffer.from("stream aad");
    const e: { ciphertext: Buffer; iv: Buffer } = resultOf(
      await s.request(7, {
        $case: "encrypt",
        value: { keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: pt, aad, iv: Buffer.alloc(0), oaepLabel: Buffer.alloc(0) },
      }),
      "encrypt",
    );
    const ct = Buffer.from(e.ciphertext);
    const d = crypto.createDecipheriv("aes-256-gcm", aesKey, e.iv).setAAD(aad).setAuthTag(ct.subarray(-16));
    expect(Buffer.concat([d.update(ct.subarray(0, -16)), d.final()])).toEqual(pt);
    const iv = crypto.randomBytes(12);
    const enc = crypto.createCipheriv("aes-256-gcm", aesKey, iv).setAAD(aad);
    const nodeCt = Buffer.concat([enc.update(pt), enc.final(), enc.getAuthTag()]);
    const back: { plaintext: Buffer } = resultOf(
      await s.request(8, {
        $case: "decrypt",
        value: { keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: nodeCt, aad, iv, tagLength: 0, oaepLabel: Buffer.alloc(0) },
      }),
      "decrypt",
    );
    expect(Buffer.from(back.plaintext)).toEqual(pt);
  });

  it("HMAC-SHA256 equals createHmac; random has the length asked", async () => {
    const mac: { signature: Buffer } = resultOf(await s.request(9, sign(k.hmac, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256)), "sign");
    expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac("sha256", hmacKey).update(msg).digest());
    const r: { random: Buffer } = resultOf(await s.request(10, { $case: "generateRandom", value: { length: 48 } }), "generateRandom");
    expect(r.random).toHaveLength(48);
  });

  it("data keys: generated with and without plaintext, decrypted back, usable with Node", async () => {
    const ctx = { tenant: "acme" };
    const dk: { plaintextDataKey: Buffer; wrappedDataKey: Buffer } = resultOf(
      await s.request(11, { $case: "generateDataKey", value: { keyId: k.aes, spec: KeySpec.KEY_SPEC_UNSPECIFIED, encryptionContext: ctx } }),
      "generateDataKey",
    );
    expect(dk.plaintextDataKey).toHaveLength(32);
    const back: { plaintextDataKey: Buffer } = resultOf(
      await s.request(12, { $case: "decryptDataKey", value: { keyId: k.aes, wrappedDataKey: dk.wrappedDataKey, encryptionContext: ctx } }),
      "decryptDataKey",
    );
    expect(Buffer.from(back.plaintextDataKey)).toEqual(Buffer.from(dk.plaintextDataKey));
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv("aes-256-gcm", back.plaintextDataKey, iv);
    const ct = Buffer.concat([c.update("payload"), c.final()]);
    const d = crypto.createDecipheriv("aes-256-gcm", dk.plaintextDataKey, iv).setAuthTag(c.getAuthTag());
    expect(Buffer.concat([d.update(ct), d.final()]).toString()).toBe("payload");
    const np: { plaintextDataKey: Buffer; wrappedDataKey: Buffer } = resultOf(
      await s.request(13, { $case: "generateDataKeyWithoutPlaintext", value: { keyId: k.aes, spec: KeySpec.KEY_SPEC_AES_128, encryptionContext: {} } }),
      "generateDataKeyWithoutPlaintext",
    );
    expect(np.plaintextDataKey).toHaveLength(0);
    const unwrapped: { plaintextDataKey: Buffer } = resultOf(
      await s.request(14, { $case: "decryptDataKey", value: { keyId: k.aes, wrappedDataKey: np.wrappedDataKey, encryptionContext: {} } }),
      "decryptDataKey",
    );
    expect(unwrapped.plaintextDataKey).toHaveLength(16);
  });

  it("many operations in flight at once: every id answered exactly once, with its own result", async () => {
    const n = 300;
    const before = s.answers.length;
    const base = 1000;
    for (let i = 0; i < n; i++) {
      const id = base + i;
      if (i % 3 === 0) s.send(id, sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, Buffer.from(`m${i}`)));
      else if (i % 3 === 1) s.send(id, sign(k.hmac, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, Buffer.from(`m${i}`)));
      else s.send(id, { $case: "generateRandom", value: { length: (i % 64) + 1 } });
    }
    const pub = await pem(k.p256);
    for (let i = 0; i < n; i++) {
      const r = await s.answer(base + i);
      const m = Buffer.from(`m${i}`);
      if (i % 3 === 0) expect(crypto.verify("sha256", m, pub, resultOf<"sign">(r, "sign")["signature"])).toBe(true);
      else if (i % 3 === 1) expect(Buffer.from(resultOf<"sign">(r, "sign")["signature"])).toEqual(crypto.createHmac("sha256", hmacKey).update(m).digest());
      else expect(resultOf<"generateRandom">(r, "generateRandom")["random"]).toHaveLength((i % 64) + 1);
    }
    const ids = s.answers.slice(before).map((a) => a.id);
    expect(ids).toHaveLength(n);
    expect(new Set(ids).size).toBe(n);
    const inOrder = ids.every((id, i) => i === 0 || id > ids[i - 1]!);
    console.log(`crypto stream: ${n} operations in flight at once answered ${inOrder ? "in order" : "out of order"}`);
  });
});

describe("each message is authorized as its unary call", () => {
  it("own key and a key shared with the caller: OK; another user's unshared key and an unknown one: NOT_FOUND, as unary", async () => {
    const cases: Array<[HsmClient, string, string]> = [
      [alice, k.p256, "OK"],
      [bob, k.p256, "OK"],
      [carol, k.p256, "NOT_FOUND"],
      [bob, k.rsa, "NOT_FOUND"],
      [alice, "k-0000000000000000000000000000000000", "NOT_FOUND"],
    ];
    let id = 0;
    for (const [who, keyId, want] of cases) {
      const s = new TestStream(client, tokenOf(who));
      const alg = keyId === k.rsa ? SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256 : SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
      const got = outcome(await s.request(++id, sign(keyId, alg)));
      const unary = await unaryCode(who.sign({ keyId, algorithm: alg, message: msg }));
      expect(got.code).toBe(want);
      expect({ code: got.code, message: got.message }).toEqual({ code: unary.code, message: unary.message });
      s.close();
      expect((await s.ended).codeName).toBe("OK");
    }
  });

  it("a bad key id and a bad enum answer the same INVALID_ARGUMENT as unary; the stream goes on", async () => {
    const s = new TestStream(client, tokenOf(alice));
    const badId = outcome(await s.request(1, sign("not a key id!", SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256)));
    const unaryBadId = await unaryCode(alice.sign({ keyId: "not a key id!", algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg }));
    expect(badId).toEqual({ code: "INVALID_ARGUMENT", message: unaryBadId.message });
    const badEnum = outcome(await s.request(2, sign(k.p256, 77 as SigningAlgorithm)));
    const unaryBadEnum = await unaryCode(alice.sign({ keyId: k.p256, algorithm: 77 as SigningAlgorithm, message: msg }));
    expect(badEnum).toEqual({ code: "INVALID_ARGUMENT", message: unaryBadEnum.message });
    expect(outcome(await s.request(3, sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256))).code).toBe("OK");
    s.close();
    expect((await s.ended).codeName).toBe("OK");
  });

  it("a crypto officer is refused at open with PERMISSION_DENIED, as its unary Sign", async () => {
    const s = new TestStream(client, tokenOf(co));
    s.send(1, sign(k.p256, SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256));
    const end = await s.ended;
    const unary = await unaryCode(co.sign({ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg }));
    expect(end.codeName).toBe("PERMISSION_DENIED");
    expect(end.details).toBe(unary.message!.replace("Sign is for", "CryptoStream is for"));
    expect(s.answers).toHaveLength(0);
  });

  it("no session and a bad token are refused at open with UNAUTHENTICATED, as unary", async () => {
    for (const token of [undefined, "not-a-token", `${"a".repeat(43)}`]) {
      const s = new TestStream(client, token);
      s.send(1, { $case: "generateRandom", value: { length: 8 } });
      const end = await s.ended;
      const anon = new HsmClient({ endpoint: td.grpc });
      const unary = await unaryCode(anon.generateRandom({ length: 8 }));
      anon.close();
      expect(end.codeName).toBe("UNAUTHENTICATED");
      // Without a session the message is the unary one; a bad token names what is wrong with it.
      if (!token) expect(end.details).toBe(unary.message);
      else expect(end.details).toMatch(/authorization header|invalid session token/);
      expect(s.answers).toHaveLength(0);
    }
  });

  it("a user that must still change its one-time password is refused at open with FAILED_PRECONDITION", async () => {
    await co.createUser({ username: "otp-user", role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    await co.resetPassword({ username: "otp-user", newPassword: "reset-password-1" });
    const u = new HsmClient({ endpoint: td.grpc });
    await u.login("otp-user", "reset-password-1");
    const s = new TestStream(client, tokenOf(u));
    const end = await s.ended;
    const unary = await unaryCode(u.generateRandom({ length: 8 }));
    expect({ code: end.codeName, message: end.details }).toEqual({ code: "FAILED_PRECONDITION", message: unary.message });
    u.close();
  });
});
