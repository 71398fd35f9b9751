/**
 * Imported keys with an expiry (KMS ValidTo, issue 13) against a real daemon on a SoftHSM2 token:
 * valid_to's bounds; when it passes the key moves to PENDING_IMPORT (use refused, its objects gone
 * from the token, its wrapped material gone from the record, one audit entry); re-import of the same
 * material (its owner only; a different key, a secret key or a key not PENDING_IMPORT refused) brings
 * it back to ENABLED, and a ciphertext made before (with Node's crypto) decrypts again.
 */
import { constants, generateKeyPairSync, publicEncrypt, randomBytes, type KeyObject } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeRecord, recordKey } from "../../src/keys";
import { EncryptionAlgorithm, type HsmClient, KeySpec, KeyState, KeyUsage, wrapForImport } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { expectError } from "../helpers/expect-error";
import { pkcs11Tool } from "../helpers/softhsm";
import { ensureUser, officerClient, userClient } from "../helpers/users";

let td: TestDaemon;
let owner: HsmClient;
let shared: HsmClient;
let other: HsmClient;
let co: HsmClient;
const OAEP = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA256;
const USAGES = [KeyUsage.KEY_USAGE_DECRYPT, KeyUsage.KEY_USAGE_SIGN];

beforeAll(async () => {
  td = await startTestDaemon({ config: { lifecycle: { checkIntervalMs: 100 } } });
  await ensureUser(td, "shared");
  await ensureUser(td, "other");
  owner = await userClient(td, "owner");
  shared = await userClient(td, "shared");
  other = await userClient(td, "other");
  co = await officerClient(td);
}, 120_000);

afterAll(async () => {
  for (const c of [owner, shared, other, co]) c?.close();
  await td?.cleanup();
});

async function until(ok: () => Promise<boolean> | boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An import request of an RSA key pair's private key, wrapped for the daemon's import key. */
async function importRequest(kp: { privateKey: KeyObject; publicKey: KeyObject }, over: object = {}) {
  const p = await owner.getImportParameters();
  const wrappedKeyMaterial = wrapForImport(Buffer.from(p.publicKeySpki), kp.privateKey.export({ type: "pkcs8", format: "der" }), p.wrappingAlgorithm);
  return {
    spec: KeySpec.KEY_SPEC_RSA_2048,
    label: "expiring",
    usages: USAGES,
    importKeyId: p.importKeyId,
    wrappedKeyMaterial,
    publicKeySpki: kp.publicKey.export({ type: "spki", format: "der" }),
    ...over,
  };
}

const rsa = () => generateKeyPairSync("rsa", { modulusLength: 2048 });

describe("an imported key with valid_to", () => {
  it("refuses a valid_to in the past or not RFC 3339", async () => {
    const kp = rsa();
    await expectError(owner.importKey(await importRequest(kp, { validTo: "2001-01-01T00:00:00Z" })), "INVALID_ARGUMENT", "not in the future");
    await expectError(owner.importKey(await importRequest(kp, { validTo: "next tuesday" })), "INVALID_ARGUMENT", "RFC 3339");
  });

  it("moves to PENDING_IMPORT when valid_to passes (material destroyed everywhere, audited) and takes the same material back", async () => {
    const kp = rsa();
    const secret = randomBytes(32);
    const ct = publicEncrypt({ key: kp.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, secret);
    const validTo = new Date(Date.now() + 1500).toISOString();
    const k = await owner.importKey(await importRequest(kp, { validTo, description: "expires soon", tags: { source: "byok" } }));
    expect(k.validTo).toBe(validTo);
    expect(k.description).toBe("expires soon");
    expect(k.tags).toEqual({ source: "byok" });
    await owner.shareKey({ keyId: k.id, username: "shared" });
    expect(Buffer.from((await owner.decrypt({ keyId: k.id, algorithm: OAEP, ciphertext: ct })).plaintext).equals(secret)).toBe(true);
    expect(pkcs11Tool(td.token, ["--list-objects"])).toContain(`hsmd:${k.id}`);

    await until(async () => (await owner.getKey({ keyId: k.id })).state === KeyState.KEY_STATE_PENDING_IMPORT, "the expiry");
    await expectError(owner.decrypt({ keyId: k.id, algorithm: OAEP, ciphertext: ct }), "FAILED_PRECONDITION", "PENDING_IMPORT", "ImportKey");
    await expectError(owner.enableKey({ keyId: k.id }), "FAILED_PRECONDITION", "import its material again");
    await td.daemon.applier.applied();
    await until(() => !pkcs11Tool(td.token, ["--list-objects"]).includes(`hsmd:${k.id}`), "its objects to be destroyed");
    const rec = decodeRecord((await td.daemon.store.get(recordKey(k.id)))!.value);
    expect(rec.versions.every((v) => v.material === undefined)).toBe(true);
    const audit = (await co.queryAuditLog({ operation: "KeyMaterialExpired", limit: 100 })).entries.filter((e) => e.keyId === k.id);
    expect(audit).toHaveLength(1);
    // Management still works; the listing filters by state.
    expect((await owner.listKeys({ state: KeyState.KEY_STATE_PENDING_IMPORT })).keys.map((x) => x.id)).toEqual([k.id]);

    // Re-import: the owner only, the same material, spec and usages.
    await expectError(shared.importKey(await importRequest(kp, { keyId: k.id })), "PERMISSION_DENIED", "owner");
    await expectError(other.importKey(await importRequest(kp, { keyId: k.id })), "NOT_FOUND");
    await expectError(owner.importKey(await importRequest(rsa(), { keyId: k.id })), "INVALID_ARGUMENT", "not key");
    await expectError(owner.importKey(await importRequest(kp, { keyId: k.id, usages: [KeyUsage.KEY_USAGE_DECRYPT] })), "INVALID_ARGUMENT", "usages");
    const back = await owner.importKey(await importRequest(kp, { keyId: k.id, label: "" }));
    expect(back.id).toBe(k.id);
    expect(back.state).toBe(KeyState.KEY_STATE_ENABLED);
    expect(back.validTo).toBe("");
    expect(Buffer.from((await owner.decrypt({ keyId: k.id, algorithm: OAEP, ciphertext: ct })).plaintext).equals(secret)).toBe(true);
    expect(Buffer.from((await shared.decrypt({ keyId: k.id, algorithm: OAEP, ciphertext: ct })).plaintext).equals(secret)).toBe(true);
    // Not PENDING_IMPORT any more: a second re-import is refused.
    await expectError(owner.importKey(await importRequest(kp, { keyId: k.id })), "FAILED_PRECONDITION", "not PENDING_IMPORT");
  });

  it("re-imports a secret key by its check value (computed in the HSM, kept in the record) and survives a restart in PENDING_IMPORT", async () => {
    const p = await owner.getImportParameters();
    const material = randomBytes(32);
    const req = (m: Buffer) => ({
      spec: KeySpec.KEY_SPEC_AES_256,
      label: "aes-exp",
      importKeyId: p.importKeyId,
      wrappedKeyMaterial: wrapForImport(Buffer.from(p.publicKeySpki), m, p.wrappingAlgorithm),
    });
    const k = await owner.importKey({ ...req(material), validTo: new Date(Date.now() + 1000).toISOString() });
    const ct = await owner.encrypt({ keyId: k.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("before expiry") });
    const stored = decodeRecord((await td.daemon.store.get(recordKey(k.id)))!.value);
    // The check value is not the key (8 bytes of a block encrypted under it).
    expect(stored.checkValue?.length).toBe(8);
    expect(material.includes(stored.checkValue!)).toBe(false);
    await until(async () => (await owner.getKey({ keyId: k.id })).state === KeyState.KEY_STATE_PENDING_IMPORT, "the expiry");
    await expectError(owner.importKey({ ...req(randomBytes(32)), keyId: k.id }), "INVALID_ARGUMENT", "check value differs");
    expect((await owner.getKey({ keyId: k.id })).state).toBe(KeyState.KEY_STATE_PENDING_IMPORT);
    const back = await owner.importKey({ ...req(material), keyId: k.id, validTo: new Date(Date.now() + 1500).toISOString() });
    expect(back.state).toBe(KeyState.KEY_STATE_ENABLED);
    const pt = await owner.decrypt({ keyId: k.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: ct.ciphertext, iv: ct.iv });
    expect(Buffer.from(pt.plaintext).toString()).toBe("before expiry");
    // Its new valid_to passes too.
    await until(async () => (await owner.getKey({ keyId: k.id })).state === KeyState.KEY_STATE_PENDING_IMPORT, "the second expiry");
    // A restart neither loses the key nor reports it lost (it has no material to materialize).
    const logs: string[] = [];
    await td.daemon.stop();
    const { Daemon } = await import("../../src/daemon");
    const d2 = await Daemon.start({ config: td.daemon.config, log: (m) => logs.push(m) });
    try {
      expect(logs.join("\n")).not.toMatch(/LOST/);
      const c = await userClient({ grpc: `127.0.0.1:${d2.grpcPort}`, dataDir: td.dataDir }, "owner");
      try {
        expect((await c.getKey({ keyId: k.id })).state).toBe(KeyState.KEY_STATE_PENDING_IMPORT);
      } finally {
        c.close();
      }
    } finally {
      await d2.stop();
    }
  });
});
