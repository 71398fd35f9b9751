/**
 * The start-up reconcile on a real SoftHSM2 token, with the daemon in this process:
 * - a store log restored from an older copy, or lost before `hsmd init`, never costs a key: the
 *   objects no record explains are quarantined (relabelled `hsmd-quarantine:<id>`, as pkcs11-tool
 *   shows), come back when the log with their records is restored, and are destroyed only with
 *   `--purge-orphans`;
 * - key objects an older hsmd wrote (CKA_EXTRACTABLE true, no CKA_WRAP_WITH_TRUSTED; made here with
 *   pkcs11js directly) are replaced by unextractable ones, and the keys still give the same results.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as pk from "pkcs11js";
import { Daemon } from "../../src/daemon";
import { EncryptionAlgorithm, HsmClient, KeySpec, SigningAlgorithm, type Key } from "../../src/sdk";
import { testConfig } from "../helpers/daemon";
import { createTempToken, pkcs11Tool, SOFTHSM_MODULE, type TempToken } from "../helpers/softhsm";
import { USER_PASSWORD, userClient } from "../helpers/users";

let token: TempToken;
let dataDir: string;
let snapshots: string;
let daemon: Daemon | undefined;
let logs: string[] = [];

beforeAll(() => {
  token = createTempToken();
  dataDir = mkdtempSync(join(tmpdir(), "hsmd-data-"));
  snapshots = mkdtempSync(join(tmpdir(), "hsmd-snap-"));
});
afterAll(async () => {
  await daemon?.stop();
  token?.cleanup();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(snapshots, { recursive: true, force: true });
});

/** Starts the daemon (stopping a running one) and answers a logged-in crypto user. */
async function start(opts: { init?: boolean; purgeOrphans?: boolean } = {}): Promise<HsmClient> {
  await daemon?.stop();
  logs = [];
  daemon = await Daemon.start({ config: testConfig(token, dataDir), init: opts.init ?? true, purgeOrphans: opts.purgeOrphans, log: (m) => logs.push(m) });
  const grpc = `127.0.0.1:${daemon.grpcPort}`;
  if (opts.init ?? true) return userClient({ grpc, dataDir });
  // Every store snapshot has the user: log in (the officer need not create it again).
  const c = new HsmClient({ endpoint: grpc, defaultDeadlineMs: 20_000 });
  await c.login("alice", USER_PASSWORD);
  return c;
}

async function stop(): Promise<void> {
  await daemon?.stop();
  daemon = undefined;
}

/** The reconcile's counts from the start's log line. */
function reconcileLine(): Record<string, number> {
  const line = logs.find((l) => l.startsWith("records checked against the token"));
  const m = line?.match(/(\d+) keys, (\d+) materialized, (\d+) made unextractable, (\d+) restored from quarantine, (\d+) quarantined, (\d+) purged/);
  if (!m) throw new Error(`no reconcile line in:\n${logs.join("\n")}`);
  const [keys, materialized, upgraded, restored, quarantined, purged] = m.slice(1).map(Number);
  return { keys: keys!, materialized: materialized!, upgraded: upgraded!, restored: restored!, quarantined: quarantined!, purged: purged! };
}

const storeDir = () => join(dataDir, "store");
function saveStore(name: string): void {
  cpSync(storeDir(), join(snapshots, name), { recursive: true });
}
function putStore(name: string): void {
  rmSync(storeDir(), { recursive: true, force: true });
  cpSync(join(snapshots, name), storeDir(), { recursive: true });
}

/** Labels of the token's objects, as pkcs11-tool (opensc) lists them. */
function labels(): string[] {
  return [...pkcs11Tool(token, ["--list-objects"]).matchAll(/label:\s+(\S+)/g)].map((m) => m[1]!);
}

const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const spkiOf = (k: Key) => crypto.createPublicKey({ key: Buffer.from(k.publicKeySpki), format: "der", type: "spki" });

describe("objects no record explains are quarantined, never destroyed unasked", () => {
  const made: Key[] = [];
  let kept: Key;
  const msg = Buffer.from("still the same key");

  it("a store log restored from an older copy: the newer keys' objects are quarantined, the log says how to recover", async () => {
    let c = await start();
    kept = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "before-the-copy" });
    c.close();
    await stop();
    saveStore("older");

    c = await start({ init: false });
    made.push(await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "after-aes" }));
    made.push(await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "after-ec" }));
    // Ed25519 lives only in the token (no wrapped copy in its record): quarantine is all that keeps it.
    made.push(await c.generateKey({ spec: KeySpec.KEY_SPEC_ED25519, label: "after-ed25519" }));
    c.close();
    await stop();
    saveStore("newer");

    putStore("older");
    c = await start({ init: false });
    expect(reconcileLine()).toMatchObject({ keys: 1, materialized: 0, restored: 0, quarantined: 3, purged: 0 });
    const advice = logs.find((l) => l.startsWith("quarantine:"));
    expect(advice).toMatch(/3 key\(s\) that no record explains/);
    expect(advice).toMatch(/put back the log that has their records/);
    expect(advice).toMatch(/--purge-orphans/);
    // Every start says the domain key carries no unwrap template, and why.
    expect(logs).toContainEqual(expect.stringMatching(/^domain key: no CKA_UNWRAP_TEMPLATE \(pkcs11js cannot pass nested attribute templates\).*docs\/SECURITY\.md/));
    const l = labels();
    for (const k of made) {
      expect(l).not.toContain(`hsmd:${k.id}`);
      expect(l).toContain(`hsmd-quarantine:${k.id}`);
      await expect(c.getKey({ keyId: k.id })).rejects.toMatchObject({ codeName: "NOT_FOUND" });
    }
    // The key the older log knows still works.
    const e = await c.encrypt({ keyId: kept.id, algorithm: GCM, plaintext: msg });
    expect(Buffer.from((await c.decrypt({ keyId: kept.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(msg);
    c.close();
  });

  it("the log with their records put back: the quarantined objects are restored, and the keys (Ed25519 too) work", async () => {
    putStore("newer");
    const c = await start({ init: false });
    expect(reconcileLine()).toMatchObject({ keys: 4, materialized: 0, restored: 3, quarantined: 0, purged: 0 });
    expect(logs.some((l) => l.startsWith("quarantine:"))).toBe(false);
    const l = labels();
    for (const k of made) {
      expect(l).toContain(`hsmd:${k.id}`);
      expect(l).not.toContain(`hsmd-quarantine:${k.id}`);
    }
    const [aes, ec, ed] = made as [Key, Key, Key];
    const e = await c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: msg });
    expect(Buffer.from((await c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(msg);
    const es = await c.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
    expect(crypto.verify("sha256", msg, spkiOf(ec), Buffer.from(es.signature))).toBe(true);
    const eds = await c.sign({ keyId: ed.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: msg });
    expect(crypto.verify(null, msg, spkiOf(ed), Buffer.from(eds.signature))).toBe(true);
    c.close();
  });

  it("--purge-orphans destroys what no record explains, quarantined or not, and nothing else", async () => {
    putStore("older");
    let c = await start({ init: false });
    expect(reconcileLine()).toMatchObject({ quarantined: 3 });
    c.close();
    c = await start({ init: false, purgeOrphans: true });
    expect(reconcileLine()).toMatchObject({ keys: 1, quarantined: 0, purged: 3 });
    expect(logs.some((l) => l.startsWith("quarantine:"))).toBe(false);
    const l = labels();
    for (const k of made) {
      expect(l).not.toContain(`hsmd:${k.id}`);
      expect(l).not.toContain(`hsmd-quarantine:${k.id}`);
    }
    expect(l).toContain(`hsmd:${kept.id}`);
    const e = await c.encrypt({ keyId: kept.id, algorithm: GCM, plaintext: msg });
    expect(Buffer.from((await c.decrypt({ keyId: kept.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(msg);
    c.close();
  });

  it("`hsmd init` after the log was lost: a new domain key, and the old keys quarantined, not destroyed", async () => {
    await stop();
    saveStore("lost");
    rmSync(storeDir(), { recursive: true, force: true });
    const c = await start({ init: true });
    expect(reconcileLine()).toMatchObject({ keys: 0, quarantined: 1, purged: 0 });
    expect(labels()).toContain(`hsmd-quarantine:${kept.id}`);
    c.close();
    // The lost log found again: its key is back.
    putStore("lost");
    const again = await start({ init: false });
    expect(reconcileLine()).toMatchObject({ keys: 1, restored: 1 });
    const e = await again.encrypt({ keyId: kept.id, algorithm: GCM, plaintext: msg });
    expect(Buffer.from((await again.decrypt({ keyId: kept.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(msg);
    again.close();
  });
});

describe("key objects an older hsmd wrote (extractable, not CKA_WRAP_WITH_TRUSTED)", () => {
  it("are replaced at start by unextractable ones, and the keys give the same results", async () => {
    let c = await start({ init: false });
    const aes = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "old-aes" });
    const hmac = await c.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "old-hmac" });
    const ec = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "old-ec" });
    const ed = await c.generateKey({ spec: KeySpec.KEY_SPEC_ED25519, label: "old-ed25519" });
    const msg = Buffer.from("made before the upgrade");
    const ct = await c.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: msg });
    const tag = Buffer.from((await c.sign({ keyId: hmac.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: msg })).signature);
    const domainKeyId = daemon!.domainKeyId;
    const blobs = new Map(await Promise.all([aes, hmac, ec].map(async (k) => [k.id, (await daemon!.keys.records.material(daemon!.keys.record(k.id)))!.blob] as const)));
    c.close();
    await stop();

    // Rewrite the keys' objects as the previous version wrote them, straight through pkcs11js.
    const p = new pk.PKCS11();
    p.load(SOFTHSM_MODULE);
    p.C_Initialize();
    try {
      const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === token.label)!;
      const s = p.C_OpenSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
      p.C_Login(s, pk.CKU_USER, token.pin);
      const find = (id: string, cls?: number) => {
        p.C_FindObjectsInit(s, [{ type: pk.CKA_ID, value: Buffer.from(id) }, ...(cls === undefined ? [] : [{ type: pk.CKA_CLASS, value: cls }])]);
        const hs = p.C_FindObjects(s, 16);
        p.C_FindObjectsFinal(s);
        return hs;
      };
      const [domain] = find(domainKeyId);
      const old = (id: string, cls: number, keyType: number, usages: pk.Template): pk.Template => [
        { type: pk.CKA_CLASS, value: cls },
        { type: pk.CKA_KEY_TYPE, value: keyType },
        { type: pk.CKA_TOKEN, value: true },
        { type: pk.CKA_PRIVATE, value: true },
        { type: pk.CKA_SENSITIVE, value: true },
        { type: pk.CKA_EXTRACTABLE, value: true },
        { type: pk.CKA_ID, value: Buffer.from(id) },
        { type: pk.CKA_LABEL, value: `hsmd:${id}` },
        ...usages,
      ];
      const specs: Array<[Key, number, number, pk.Template]> = [
        [
          aes,
          pk.CKO_SECRET_KEY,
          pk.CKK_AES,
          [
            { type: pk.CKA_ENCRYPT, value: true },
            { type: pk.CKA_DECRYPT, value: true },
          ],
        ],
        [
          hmac,
          pk.CKO_SECRET_KEY,
          pk.CKK_GENERIC_SECRET,
          [
            { type: pk.CKA_SIGN, value: true },
            { type: pk.CKA_VERIFY, value: true },
          ],
        ],
        [ec, pk.CKO_PRIVATE_KEY, pk.CKK_EC, [{ type: pk.CKA_SIGN, value: true }]],
      ];
      for (const [k, cls, kt, usages] of specs) {
        for (const h of find(k.id, cls)) p.C_DestroyObject(s, h);
        p.C_UnwrapKey(s, { mechanism: 0x210a /* CKM_AES_KEY_WRAP_PAD */ }, domain!, blobs.get(k.id)!, old(k.id, cls, kt, usages));
      }
      // Ed25519 has no wrapped copy: a pair with the old attributes takes the key's place.
      for (const h of find(ed.id)) p.C_DestroyObject(s, h);
      p.C_GenerateKeyPair(
        s,
        { mechanism: 0x1055 /* CKM_EC_EDWARDS_KEY_PAIR_GEN */ },
        [
          { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
          { type: pk.CKA_TOKEN, value: true },
          { type: pk.CKA_EC_PARAMS, value: Buffer.from("06032b6570", "hex") },
          { type: pk.CKA_VERIFY, value: true },
          { type: pk.CKA_ID, value: Buffer.from(ed.id) },
          { type: pk.CKA_LABEL, value: `hsmd:${ed.id}` },
        ],
        old(ed.id, pk.CKO_PRIVATE_KEY, 0x40 /* CKK_EC_EDWARDS */, [{ type: pk.CKA_SIGN, value: true }]),
      );
      expect(protection(p, s, find)([aes, hmac, ec, ed])).toEqual([aes, hmac, ec, ed].map(() => ({ extractable: true, wrapWithTrusted: false })));
      p.C_Logout(s);
      p.C_CloseSession(s);
    } finally {
      p.C_Finalize();
    }

    c = await start({ init: false });
    expect(reconcileLine()).toMatchObject({ keys: 5, materialized: 0, upgraded: 4, quarantined: 0 });
    expect(Buffer.from((await c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: ct.ciphertext, iv: ct.iv })).plaintext)).toEqual(msg);
    expect(Buffer.from((await c.sign({ keyId: hmac.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: msg })).signature)).toEqual(tag);
    const es = await c.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
    expect(crypto.verify("sha256", msg, spkiOf(ec), Buffer.from(es.signature))).toBe(true);
    // (The replacement Ed25519 pair is not the record's key: its signature is checked by the token's own public object.)
    const eds = await c.sign({ keyId: ed.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: msg });
    expect((await c.verify({ keyId: ed.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: msg, signature: eds.signature })).valid).toBe(true);
    c.close();
    await stop();

    const p2 = new pk.PKCS11();
    p2.load(SOFTHSM_MODULE);
    p2.C_Initialize();
    try {
      const slot = p2.C_GetSlotList(true).find((s) => p2.C_GetTokenInfo(s).label.trim() === token.label)!;
      const s = p2.C_OpenSession(slot, pk.CKF_SERIAL_SESSION);
      p2.C_Login(s, pk.CKU_USER, token.pin);
      const find = (id: string, cls?: number) => {
        p2.C_FindObjectsInit(s, [{ type: pk.CKA_ID, value: Buffer.from(id) }, ...(cls === undefined ? [] : [{ type: pk.CKA_CLASS, value: cls }])]);
        const hs = p2.C_FindObjects(s, 16);
        p2.C_FindObjectsFinal(s);
        return hs;
      };
      // Re-materialized from their records: unextractable and CKA_WRAP_WITH_TRUSTED. The Ed25519 key
      // (no record copy) is made unextractable in place; SoftHSM2 does not let CKA_WRAP_WITH_TRUSTED change.
      expect(protection(p2, s, find)([aes, hmac, ec, ed])).toEqual([
        { extractable: false, wrapWithTrusted: true },
        { extractable: false, wrapWithTrusted: true },
        { extractable: false, wrapWithTrusted: true },
        { extractable: false, wrapWithTrusted: false },
      ]);
      p2.C_Logout(s);
      p2.C_CloseSession(s);
    } finally {
      p2.C_Finalize();
    }
  });
});

/** CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED of each key's one secret or private object. */
function protection(p: pk.PKCS11, s: Buffer, find: (id: string, cls?: number) => Buffer[]) {
  return (keys: Key[]) =>
    keys.map((k) => {
      const hs = [...find(k.id, pk.CKO_SECRET_KEY), ...find(k.id, pk.CKO_PRIVATE_KEY)];
      expect(hs).toHaveLength(1);
      const [ex, wwt] = p.C_GetAttributeValue(s, hs[0]!, [{ type: pk.CKA_EXTRACTABLE }, { type: pk.CKA_WRAP_WITH_TRUSTED }]);
      const b = (v: unknown) => Buffer.isBuffer(v) && v[0] === 1;
      return { extractable: b(ex!.value), wrapWithTrusted: b(wwt!.value) };
    });
}
