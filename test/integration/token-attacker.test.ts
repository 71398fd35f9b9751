/**
 * The token's user PIN in hostile hands (issue 9): an attacker process with the PIN, talking to the
 * token through graphene-pk11 directly (not through src/pkcs11), tries to take out every kind of key
 * hsmd makes while hsmd runs as its own process on the same SoftHSM2 token. Every way out through
 * the device is refused: wrapping under the attacker's own key, reading CKA_VALUE, clearing
 * CKA_WRAP_WITH_TRUSTED or CKA_SENSITIVE, setting CKA_EXTRACTABLE, copying as extractable. What is
 * left is the documented residual (docs/SECURITY.md): with the PIN *and* a record's wrapped blob
 * from the store, the blob unwraps under the domain key into a key the attacker can read.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as crypto from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as graphene from "graphene-pk11";
import { HsmClient, KeySpec, KeyUsage, WrapAlgorithm, wrapForImport, type Key } from "../../src/sdk";
import { buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { SOFTHSM_MODULE } from "../helpers/softhsm";
import { userClient } from "../helpers/users";

let dp: DaemonProcess;
let c: HsmClient;
let mod: graphene.Module;
let session: graphene.Session;
/** The attacker's own AES key (a session object of the attacker's process), able to wrap. */
let attackerKek: graphene.SecretKey;
const keys: Array<{ kind: string; key: Key }> = [];
/** The BYOK AES-256 key's material, known to the test, to show the residual. */
const importedMaterial = crypto.randomBytes(32);

beforeAll(async () => {
  buildDist();
  dp = await startDaemonProcess();
  c = await userClient(dp);
  const gen = async (kind: string, spec: KeySpec, usages: KeyUsage[] = []) => keys.push({ kind, key: await c.generateKey({ spec, label: kind, usages }) });
  await gen("AES-128", KeySpec.KEY_SPEC_AES_128);
  keys.push({
    kind: "AES-256 (exportable)",
    key: await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "exportable", exportable: true, usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT] }),
  });
  await gen("HMAC-SHA256", KeySpec.KEY_SPEC_HMAC_SHA256);
  await gen("RSA-2048", KeySpec.KEY_SPEC_RSA_2048);
  await gen("EC P-256", KeySpec.KEY_SPEC_EC_P256, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY, KeyUsage.KEY_USAGE_DERIVE]);
  await gen("Ed25519", KeySpec.KEY_SPEC_ED25519);
  const p = await c.getImportParameters({});
  const imported = await c.importKey({
    spec: KeySpec.KEY_SPEC_AES_256,
    label: "imported",
    usages: [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP, KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT],
    importKeyId: p.importKeyId,
    wrappedKeyMaterial: wrapForImport(Buffer.from(p.publicKeySpki), importedMaterial, p.wrappingAlgorithm),
  });
  keys.push({ kind: "imported (BYOK) AES-256", key: imported });
  const fresh = crypto.randomBytes(32);
  const w = crypto.createCipheriv("id-aes256-wrap-pad", importedMaterial, Buffer.from("A65959A6", "hex"));
  const unwrapped = await c.unwrapKey({
    unwrappingKeyId: imported.id,
    algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP,
    wrappedKey: Buffer.concat([w.update(fresh), w.final()]),
    spec: KeySpec.KEY_SPEC_AES_256,
    label: "unwrapped",
  });
  keys.push({ kind: "unwrapped AES-256", key: unwrapped });
  const peer = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  const derived = await c.deriveKey({ privateKeyId: keys[4]!.key.id, peerPublicKeySpki: peer.publicKey.export({ type: "spki", format: "der" }), spec: KeySpec.KEY_SPEC_AES_256, label: "derived" });
  keys.push({ kind: "derived (ECDH) AES-256", key: derived });

  // The attacker: its own process's view of the token, logged in with the user PIN.
  mod = graphene.Module.load(SOFTHSM_MODULE, "SoftHSM2");
  mod.initialize();
  const slot = [...mod.getSlots(true)].find((s) => s.getToken().label.trim() === dp.token.label)!;
  session = slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION);
  session.login(dp.token.pin, graphene.UserType.USER);
  attackerKek = session
    .generateKey(graphene.KeyGenMechanism.AES, { keyType: graphene.KeyType.AES, valueLen: 32, token: false, wrap: true, unwrap: true, extractable: true, sensitive: false })
    .toType();
}, 180_000);

afterAll(async () => {
  try {
    session?.logout();
    session?.close();
    mod?.finalize();
  } catch {
    /* best effort */
  }
  c?.close();
  await dp?.cleanup();
});

/** The key's secret or private object, as the attacker finds it by CKA_ID. */
function secretObject(k: Key): graphene.Key {
  const found = [...session.find({ id: Buffer.from(k.id, "utf8") })].filter((o) => o.class === graphene.ObjectClass.SECRET_KEY || o.class === graphene.ObjectClass.PRIVATE_KEY);
  // One object: the token object. hsmd's session copies are invisible to another process.
  expect(found, k.id).toHaveLength(1);
  return found[0]!.toType<graphene.Key>();
}

/** Runs fn and answers the CKR name it failed with (or "succeeded"). */
function refusal(fn: () => unknown): string {
  try {
    fn();
    return "succeeded";
  } catch (e) {
    return /CKR_\w+/.exec((e as Error).message)?.[0] ?? (e as Error).message;
  }
}

describe("an attacker holding the token's user PIN", () => {
  it("finds every kind of key sensitive, unextractable and CKA_WRAP_WITH_TRUSTED", () => {
    expect(keys.map((k) => k.kind)).toHaveLength(9);
    for (const { kind, key } of keys) {
      const o = secretObject(key);
      expect({ kind, ...o.getAttribute({ sensitive: null, extractable: null, wrapWithTrusted: null, private: null }) }).toEqual({
        kind,
        sensitive: true,
        extractable: false,
        wrapWithTrusted: true,
        private: true,
      });
    }
  });

  it("cannot wrap any of them under a key of its own, nor read their value", () => {
    for (const { kind, key } of keys) {
      const o = secretObject(key);
      const wrap = refusal(() => session.wrapKey(graphene.MechanismEnum.AES_KEY_WRAP_PAD, attackerKek, o));
      // Ed25519: SoftHSM2 checks CKA_EXTRACTABLE first, but "not wrappable" would be a refusal too.
      expect([kind, ["CKR_KEY_UNEXTRACTABLE", "CKR_KEY_NOT_WRAPPABLE"].includes(wrap) ? "refused" : wrap]).toEqual([kind, "refused"]);
      // The secret: CKA_VALUE, or for RSA CKA_PRIVATE_EXPONENT (an RSA private key has no CKA_VALUE).
      const secret = key.spec === KeySpec.KEY_SPEC_RSA_2048 ? { privateExponent: null } : { value: null };
      expect([kind, refusal(() => o.getAttribute(secret))]).toEqual([kind, "CKR_ATTRIBUTE_SENSITIVE"]);
    }
  });

  it("cannot clear CKA_WRAP_WITH_TRUSTED or CKA_SENSITIVE, set CKA_EXTRACTABLE, or copy one as extractable", () => {
    for (const { kind, key } of keys) {
      const o = secretObject(key);
      for (const attrs of [{ wrapWithTrusted: false }, { sensitive: false }, { extractable: true }]) {
        expect([kind, attrs, refusal(() => o.setAttribute(attrs))]).toEqual([kind, attrs, "CKR_ATTRIBUTE_READ_ONLY"]);
      }
      let copy: graphene.SessionObject | undefined;
      const copied = refusal(() => (copy = session.copy(o, { token: false, extractable: true })));
      if (copied === "succeeded") {
        // A copy must not be extractable.
        expect([kind, copy!.toType<graphene.Key>().getAttribute({ extractable: null })]).toEqual([kind, { extractable: false }]);
        copy!.destroy();
      } else {
        expect([kind, copied]).toEqual([kind, "CKR_ATTRIBUTE_READ_ONLY"]);
      }
      // Attributes unchanged after all of it.
      expect([kind, o.getAttribute({ sensitive: null, extractable: null, wrapWithTrusted: null })]).toEqual([kind, { sensitive: true, extractable: false, wrapWithTrusted: true }]);
    }
  });

  it("the keys still work for their owner, and an exportable key still exports (from its record, in the daemon)", async () => {
    const exp = keys[1]!.key;
    const kek = keys.find((k) => k.kind.startsWith("imported"))!.key;
    const out = await c.wrapKey({ wrappingKeyId: kek.id, keyId: exp.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP });
    const d = crypto.createDecipheriv("id-aes256-wrap-pad", importedMaterial, Buffer.from("A65959A6", "hex"));
    expect(Buffer.concat([d.update(out.wrappedKey), d.final()])).toHaveLength(32);
    // A key created not exportable does not leave this way either.
    await expect(c.wrapKey({ wrappingKeyId: kek.id, keyId: keys[0]!.key.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP })).rejects.toMatchObject({ codeName: "FAILED_PRECONDITION" });
    // Nor does an exportable key that has no wrapped copy (the device cannot wrap Ed25519): it says why.
    const ed = await c.generateKey({ spec: KeySpec.KEY_SPEC_ED25519, label: "exportable-ed25519", exportable: true });
    const err = await c.wrapKey({ wrappingKeyId: kek.id, keyId: ed.id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP }).then(
      () => undefined,
      (e: Error & { codeName?: string }) => e,
    );
    expect(err).toMatchObject({ codeName: "FAILED_PRECONDITION" });
    expect(err!.message).toMatch(/exists only in the device that generated it .*cannot be exported/);
  });

  it("residual (documented): with the PIN and a record's blob from the store, the blob unwraps under the domain key in the clear", () => {
    const imported = keys.find((k) => k.kind.startsWith("imported"))!.key;
    const blob = recordBlob(imported.id);
    const domain = [...session.find({ class: graphene.ObjectClass.SECRET_KEY })].map((o) => o.toType<graphene.SecretKey>()).find((o) => o.label.startsWith("hsmd:hsmd-domain-"))!;
    expect(domain).toBeDefined();
    // The domain key itself cannot be wrapped out (CKA_WRAP_WITH_TRUSTED, and no trusted key without the SO PIN).
    expect(["CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_KEY_NOT_WRAPPABLE"]).toContain(refusal(() => session.wrapKey(graphene.MechanismEnum.AES_KEY_WRAP_PAD, attackerKek, domain)));
    // But it unwraps the record's blob into whatever the attacker's template asks for: SoftHSM2 takes
    // no CKA_UNWRAP_TEMPLATE from hsmd (pkcs11js cannot pass one), so nothing forces it sensitive.
    const opened = session.unwrapKey(graphene.MechanismEnum.AES_KEY_WRAP_PAD, domain, blob, {
      class: graphene.ObjectClass.SECRET_KEY,
      keyType: graphene.KeyType.AES,
      token: false,
      sensitive: false,
      extractable: true,
    });
    expect(Buffer.from(opened.getAttribute({ value: null }).value as Buffer)).toEqual(importedMaterial);
    opened.destroy();
  });
});

/** The wrapped blob of a key's record, read straight from the embedded store's log (as an attacker with the files would). */
function recordBlob(id: string): Buffer {
  const dir = join(dp.dataDir, "store");
  let value: string | undefined;
  for (const f of readdirSync(dir)) {
    const text = readFileSync(join(dir, f), "utf8");
    for (const line of text.split("\n")) {
      const json = line.slice(line.indexOf(" ") + 1);
      if (!json.includes(`keys/${id}`)) continue;
      const frame = JSON.parse(json) as { ops?: Array<[string, string, string]>; k?: string; v?: string };
      for (const op of frame.ops ?? []) if (op[0] === "p" && op[1] === `keys/${id}`) value = op[2];
      if (frame.k === `keys/${id}`) value = frame.v;
    }
  }
  expect(value, `record of ${id} in the store log`).toBeDefined();
  const record = JSON.parse(Buffer.from(value!, "base64").toString("utf8")) as { versions: Array<{ material: { blob: { $b64: string } } }> };
  return Buffer.from(record.versions[0]!.material.blob.$b64, "base64");
}
