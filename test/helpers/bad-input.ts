/**
 * The daemon and keys of the bad-input integration tests (bad-input.test.ts, bad-input-blobs.test.ts):
 * a daemon on a fresh SoftHSM2 token with small limits, a crypto user's client, one key of each kind,
 * the import parameters, and the checks every refusal must pass.
 */
import { afterAll, beforeAll, expect } from "vitest";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, SigningAlgorithm, type Key } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "./daemon";
import { userClient } from "./users";
import { pkcs11Tool } from "./softhsm";

/** The daemon's small limits, so that every limit can be crossed cheaply. */
export const LIMITS = { maxPayloadBytes: 1024, maxBatchItems: 4, maxLabelLength: 16, maxRandomBytes: 64, maxPageSize: 1000 };

/** The daemon and a crypto user's client (set in beforeAll, see useBadInputDaemon). */
export let td: TestDaemon;
export let c: HsmClient;

/** Keys shared by the cases below. */
export let aes: Key; // AES-256, encrypt+decrypt, not exportable
export let aesEncOnly: Key; // AES-256, encrypt only
export let kek: Key; // AES-256, wrap+unwrap
export let rsa: Key; // RSA-2048, sign+verify
export let ec: Key; // P-256, sign+verify
export let ecDerive: Key; // P-256, derive only
export let ecExportable: Key; // P-256, sign+verify, exportable
export let hmac256: Key; // HMAC-SHA256
export let ed: Key; // Ed25519
export let importKeyId: string;
export let importSpki: Buffer;
export let wrappingAlgorithm: string;

/** A well-formed key id no key has. */
export const UNKNOWN_ID = "00000000-0000-4000-8000-000000000000";
/** The algorithms the cases use most. */
export const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
export const CBC = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_CBC_PAD;
export const ECDSA256 = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;

import { expectError } from "./expect-error";
export { expectError };

/** Every key the client's user can list. */
export const listAll = async () => (await c.listKeys({ pageSize: 1000 })).keys;
/** How many keys listAll finds. */
export const count = async () => (await listAll()).length;

/** A failing create must leave the key count where it was. */
export async function expectNoNewKey(call: () => Promise<unknown>, codeName: string, ...phrases: string[]): Promise<void> {
  const before = await count();
  await expectError(call(), codeName, ...phrases);
  expect(await count()).toBe(before);
}

/**
 * Starts the daemon and makes the shared keys before the calling file's tests; after them, checks that the
 * token holds nothing a refusal left behind, then stops the daemon.
 */
export function useBadInputDaemon(): void {
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
    try {
      if (td && c) await expectTokenHoldsOnlyListedKeys();
    } finally {
      c?.close();
      await td?.cleanup();
    }
  });
}

/** The token holds hsmd objects only for listed keys, the domain key and the import key, each listed key's parts all there. */
export async function expectTokenHoldsOnlyListedKeys(): Promise<void> {
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
}
