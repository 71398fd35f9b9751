/**
 * Data keys through gRPC against a real daemon: GenerateDataKey, GenerateDataKeyWithoutPlaintext and
 * DecryptDataKey, checked with Node's crypto (a data key encrypts locally and the unwrapped copy
 * decrypts it) and on their bad paths.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, HsmClientError, KeySpec, KeyUsage } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

let td: TestDaemon;
let c: HsmClient;
let other: HsmClient;
let kek: string;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td, "alice");
  other = await userClient(td, "bob");
  kek = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "kek" })).id;
}, 120_000);

afterAll(async () => {
  c?.close();
  other?.close();
  await td?.cleanup();
});

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    return (e as HsmClientError).codeName;
  }
}

describe("data keys", () => {
  it("a data key encrypts locally and its wrapped copy unwraps to the same key (AES-256 default, AES-128)", async () => {
    for (const [spec, len] of [
      [KeySpec.KEY_SPEC_UNSPECIFIED, 32],
      [KeySpec.KEY_SPEC_AES_128, 16],
    ] as const) {
      const ctx = { tenant: "acme", object: "42" };
      const dk = await c.generateDataKey({ keyId: kek, spec, encryptionContext: ctx });
      expect(dk.plaintextDataKey.length).toBe(len);
      expect(dk.keyVersion).toBe(1);
      // Self-describing (docs/CIPHERTEXT.md): "hsm1", kind 4 (wrapped data key), version 1.
      expect(dk.wrappedDataKey.subarray(0, 4).toString()).toBe("hsm1");
      expect([dk.wrappedDataKey[5], dk.wrappedDataKey.readUInt32BE(6)]).toEqual([4, 1]);
      expect(dk.wrappedDataKey.includes(Buffer.from(dk.plaintextDataKey))).toBe(false);
      const iv = randomBytes(12);
      const alg = len === 32 ? "aes-256-gcm" : "aes-128-gcm";
      const e = createCipheriv(alg, dk.plaintextDataKey, iv);
      const ct = Buffer.concat([e.update("payload"), e.final()]);
      const tag = e.getAuthTag();
      // The context is a map: order does not matter.
      const back = await c.decryptDataKey({ keyId: kek, wrappedDataKey: dk.wrappedDataKey, encryptionContext: { object: "42", tenant: "acme" } });
      expect(Buffer.from(back.plaintextDataKey).equals(Buffer.from(dk.plaintextDataKey))).toBe(true);
      const d = createDecipheriv(alg, back.plaintextDataKey, iv);
      d.setAuthTag(tag);
      expect(Buffer.concat([d.update(ct), d.final()]).toString()).toBe("payload");
    }
  });

  it("without plaintext answers only the wrapped key, which unwraps later", async () => {
    const dk = await c.generateDataKeyWithoutPlaintext({ keyId: kek });
    expect(dk.plaintextDataKey.length).toBe(0);
    expect((await c.decryptDataKey({ keyId: kek, wrappedDataKey: dk.wrappedDataKey })).plaintextDataKey.length).toBe(32);
  });

  it("each data key is fresh", async () => {
    const a = await c.generateDataKey({ keyId: kek });
    const b = await c.generateDataKey({ keyId: kek });
    expect(Buffer.from(a.plaintextDataKey).equals(Buffer.from(b.plaintextDataKey))).toBe(false);
  });

  it("refuses a different context, a flipped bit, a truncated blob, another KEK, a wrong spec, a non-AES KEK", async () => {
    const dk = await c.generateDataKeyWithoutPlaintext({ keyId: kek, encryptionContext: { a: "1" } });
    expect(await code(c.decryptDataKey({ keyId: kek, wrappedDataKey: dk.wrappedDataKey, encryptionContext: { a: "2" } }))).toBe("INVALID_ARGUMENT");
    expect(await code(c.decryptDataKey({ keyId: kek, wrappedDataKey: dk.wrappedDataKey }))).toBe("INVALID_ARGUMENT");
    const flipped = Buffer.from(dk.wrappedDataKey);
    flipped[flipped.length - 20]! ^= 1;
    expect(await code(c.decryptDataKey({ keyId: kek, wrappedDataKey: flipped, encryptionContext: { a: "1" } }))).toBe("INVALID_ARGUMENT");
    expect(await code(c.decryptDataKey({ keyId: kek, wrappedDataKey: dk.wrappedDataKey.subarray(0, 40), encryptionContext: { a: "1" } }))).toBe("INVALID_ARGUMENT");
    const kek2 = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "kek2" })).id;
    expect(await code(c.decryptDataKey({ keyId: kek2, wrappedDataKey: dk.wrappedDataKey, encryptionContext: { a: "1" } }))).toBe("INVALID_ARGUMENT");
    expect(await code(c.generateDataKey({ keyId: kek, spec: KeySpec.KEY_SPEC_RSA_2048 }))).toBe("INVALID_ARGUMENT");
    const ec = (await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "ec" })).id;
    expect(await code(c.generateDataKey({ keyId: ec }))).toBe("INVALID_ARGUMENT");
    expect(await code(c.decryptDataKey({ keyId: kek, wrappedDataKey: Buffer.alloc(0) }))).toBe("INVALID_ARGUMENT");
    expect(await code(c.generateDataKey({ keyId: kek, encryptionContext: { "": "x" } }))).toBe("INVALID_ARGUMENT");
  });

  it("needs the KEK's usages and access: encrypt to generate, decrypt to unwrap; others' keys are not found", async () => {
    const encOnly = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "enc-only", usages: [KeyUsage.KEY_USAGE_ENCRYPT] })).id;
    const dk = await c.generateDataKeyWithoutPlaintext({ keyId: encOnly });
    expect(await code(c.decryptDataKey({ keyId: encOnly, wrappedDataKey: dk.wrappedDataKey }))).toBe("FAILED_PRECONDITION");
    const wrapOnly = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "wrap-only", usages: [KeyUsage.KEY_USAGE_WRAP] })).id;
    expect(await code(c.generateDataKey({ keyId: wrapOnly }))).toBe("FAILED_PRECONDITION");
    expect(await code(other.generateDataKey({ keyId: kek }))).toBe("NOT_FOUND");
    const mine = await c.generateDataKeyWithoutPlaintext({ keyId: kek });
    expect(await code(other.decryptDataKey({ keyId: kek, wrappedDataKey: mine.wrappedDataKey }))).toBe("NOT_FOUND");
    await c.shareKey({ keyId: kek, username: "bob" });
    expect((await other.decryptDataKey({ keyId: kek, wrappedDataKey: mine.wrappedDataKey })).plaintextDataKey.length).toBe(32);
  });
});
