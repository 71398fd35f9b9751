/**
 * The authorization matrix with "alias/NAME" in place of the key id (issue 13): every key-taking RPC
 * family × {unauthenticated, CO, AU, CU owner, CU shared, CU other}, through real gRPC against a real
 * daemon on a SoftHSM2 token, must answer exactly as the same call with the key id does in
 * authz-matrix.test.ts (owner OK; shared per the key's rule; other NOT_FOUND: the alias is hidden as
 * the key is). The aliases are the key owner's.
 */
import { generateKeyPairSync, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { callOutcome } from "../helpers/expect-error";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, KeyUsage, Role, SigningAlgorithm, WrapAlgorithm } from "../../src/sdk";
import { TestStream, cryptoClient } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { ensureUser, officerClient, userClient } from "../helpers/users";

type Col = "unauthenticated" | "CO" | "AU" | "CU owner" | "CU shared" | "CU other";
const COLS: Col[] = ["unauthenticated", "CO", "AU", "CU owner", "CU shared", "CU other"];
type Kind = "use" | "own" | "batch";
const U = "UNAUTHENTICATED";
const D = "PERMISSION_DENIED";
const N = "NOT_FOUND";
/** As authz-matrix.test.ts's EXPECT for the same kinds. */
const EXPECT: Record<Kind, Record<Col, string>> = {
  use: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": "OK", "CU other": N },
  own: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": D, "CU other": N },
  batch: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": "OK", "CU other": N },
};

let td: TestDaemon;
const clients = {} as Record<Col, HsmClient>;
/** Aliases of the owner's keys (each key shared with "shared"). */
const a = {} as Record<"aes" | "p256" | "wrap" | "exportable" | "ecdh", string>;
let ciphertext: { ciphertext: Buffer; iv: Buffer; ciphertextBlob: Buffer };
let signature: Buffer;
let wrappedBlob: Buffer;
let wrappedDataKey: Buffer;
const message = Buffer.from("matrix message");
const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const KWP = WrapAlgorithm.WRAP_ALGORITHM_AES_KWP;
const fresh = (p: string) => `${p}-${randomUUID().slice(0, 8)}`;
const spki = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" });

/** An alias of a fresh owner's AES key shared with "shared", for the rows that change or destroy it. */
async function freshAlias(): Promise<string> {
  const o = clients["CU owner"];
  const key = await o.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: fresh("fresh") });
  await o.shareKey({ keyId: key.id, username: "shared" });
  return (await o.createAlias({ aliasName: `alias/${fresh("fresh")}`, targetKeyId: key.id })).name;
}

/** Throws the item's error of a batch answer (so the cell shows the item's status). */
function itemOutcome(res: { results: Array<{ result?: { $case: string; value: unknown } }> }): void {
  const r = res.results[0]!.result!;
  if (r.$case === "error") {
    const e = r.value as { code: number; message: string };
    throw new HsmClientError(e.code, e.message);
  }
}

/** One Sign over a crypto stream opened with `c`'s session, naming the key by `keyId`. */
async function streamSign(c: HsmClient, keyId: string): Promise<void> {
  const client = cryptoClient(td.grpc);
  try {
    const s = new TestStream(client, c.exportSession()?.token);
    s.send(1, { $case: "sign", value: { keyId, algorithm: ECDSA, message, messageType: 0, signatureFormat: 0, macLength: 0 } });
    const r = await Promise.race([s.answer(1), s.ended]);
    if ("codeName" in r) throw HsmClientError.from({ code: r.code, details: r.details });
    if (r.result?.$case === "error") throw HsmClientError.from({ code: r.result.value.code, details: r.result.value.message });
    s.close();
    await s.ended;
  } finally {
    client.close();
  }
}

const ROWS: Array<{ rpc: string; kind: Kind; call: (c: HsmClient) => Promise<unknown> }> = [
  { rpc: "GetKey", kind: "use", call: (c) => c.getKey({ keyId: a.aes }) },
  { rpc: "ListAliases (key_id)", kind: "use", call: (c) => c.listAliases({ keyId: a.aes }) },
  { rpc: "GetPublicKey", kind: "use", call: (c) => c.getPublicKey({ keyId: a.p256 }) },
  { rpc: "DeleteKey", kind: "own", call: async (c) => c.deleteKey({ keyId: await freshAlias() }) },
  { rpc: "ShareKey", kind: "own", call: async (c) => c.shareKey({ keyId: await freshAlias(), username: "fourth" }) },
  { rpc: "CreateAlias (target alias)", kind: "own", call: async (c) => c.createAlias({ aliasName: `alias/${fresh("made")}`, targetKeyId: await freshAlias() }) },
  { rpc: "Encrypt", kind: "use", call: (c) => c.encrypt({ keyId: a.aes, algorithm: GCM, plaintext: message }) },
  { rpc: "Decrypt", kind: "use", call: (c) => c.decrypt({ keyId: a.aes, algorithm: GCM, ...ciphertext }) },
  { rpc: "Sign", kind: "use", call: (c) => c.sign({ keyId: a.p256, algorithm: ECDSA, message }) },
  { rpc: "Verify", kind: "use", call: (c) => c.verify({ keyId: a.p256, algorithm: ECDSA, message, signature }) },
  { rpc: "WrapKey", kind: "own", call: (c) => c.wrapKey({ wrappingKeyId: a.wrap, keyId: a.exportable, algorithm: KWP }) },
  { rpc: "UnwrapKey", kind: "use", call: (c) => c.unwrapKey({ unwrappingKeyId: a.wrap, algorithm: KWP, wrappedKey: wrappedBlob, spec: KeySpec.KEY_SPEC_AES_256, label: fresh("unw") }) },
  { rpc: "DeriveKey", kind: "use", call: (c) => c.deriveKey({ privateKeyId: a.ecdh, peerPublicKeySpki: spki(), spec: KeySpec.KEY_SPEC_AES_256, label: fresh("drv") }) },
  { rpc: "GenerateDataKey", kind: "use", call: (c) => c.generateDataKey({ keyId: a.aes, encryptionContext: { purpose: "matrix" } }) },
  { rpc: "GenerateDataKeyWithoutPlaintext", kind: "use", call: (c) => c.generateDataKeyWithoutPlaintext({ keyId: a.aes }) },
  { rpc: "DecryptDataKey", kind: "use", call: (c) => c.decryptDataKey({ keyId: a.aes, wrappedDataKey, encryptionContext: { purpose: "matrix" } }) },
  { rpc: "BatchSign", kind: "batch", call: async (c) => itemOutcome(await c.batchSign({ items: [{ keyId: a.p256, algorithm: ECDSA, message }] })) },
  { rpc: "BatchVerify", kind: "batch", call: async (c) => itemOutcome(await c.batchVerify({ items: [{ keyId: a.p256, algorithm: ECDSA, message, signature }] })) },
  { rpc: "BatchEncrypt", kind: "batch", call: async (c) => itemOutcome(await c.batchEncrypt({ items: [{ keyId: a.aes, algorithm: GCM, plaintext: message }] })) },
  { rpc: "BatchDecrypt", kind: "batch", call: async (c) => itemOutcome(await c.batchDecrypt({ items: [{ keyId: a.aes, algorithm: GCM, ...ciphertext }] })) },
  { rpc: "CryptoStream", kind: "use", call: (c) => streamSign(c, a.p256) },
];

beforeAll(async () => {
  td = await startTestDaemon();
  clients.CO = await officerClient(td);
  for (const name of ["shared", "other", "fourth"]) await ensureUser(td, name);
  clients["CU owner"] = await userClient(td, "owner");
  clients["CU shared"] = await userClient(td, "shared");
  clients["CU other"] = await userClient(td, "other");
  clients.AU = await userClient(td, "appliance", {}, Role.ROLE_APPLIANCE_USER);
  clients.unauthenticated = new HsmClient({ endpoint: td.grpc });
  const o = clients["CU owner"];
  const gen = async (name: keyof typeof a, spec: KeySpec, usages: KeyUsage[] = [], exportable = false) => {
    const id = (await o.generateKey({ spec, label: fresh("fixture"), usages, exportable })).id;
    await o.shareKey({ keyId: id, username: "shared" });
    a[name] = (await o.createAlias({ aliasName: `alias/matrix/${name}`, targetKeyId: id })).name;
  };
  await gen("aes", KeySpec.KEY_SPEC_AES_256);
  await gen("p256", KeySpec.KEY_SPEC_EC_P256);
  await gen("wrap", KeySpec.KEY_SPEC_AES_256, [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]);
  await gen("exportable", KeySpec.KEY_SPEC_AES_256, [], true);
  await gen("ecdh", KeySpec.KEY_SPEC_EC_P256, [KeyUsage.KEY_USAGE_DERIVE]);
  // Only the ciphertext's fields: the response's key_id (the key's, not the alias) must not reach the rows.
  const e = await o.encrypt({ keyId: a.aes, algorithm: GCM, plaintext: message });
  ciphertext = { ciphertext: e.ciphertext, iv: e.iv, ciphertextBlob: e.ciphertextBlob };
  signature = (await o.sign({ keyId: a.p256, algorithm: ECDSA, message })).signature;
  wrappedDataKey = (await o.generateDataKeyWithoutPlaintext({ keyId: a.aes, encryptionContext: { purpose: "matrix" } })).wrappedDataKey;
  wrappedBlob = (await o.wrapKey({ wrappingKeyId: a.wrap, keyId: a.exportable, algorithm: KWP })).wrappedKey;
}, 120_000);

afterAll(async () => {
  for (const c of Object.values(clients)) c?.close();
  await td?.cleanup();
});

describe("authorization matrix: alias/NAME in place of the key id", () => {
  for (const row of ROWS) {
    for (const col of COLS) {
      const want = EXPECT[row.kind][col];
      it(`${row.rpc} via alias × ${col} → ${want}`, async () => {
        expect(await callOutcome(() => row.call(clients[col]))).toBe(want);
      });
    }
  }
});
