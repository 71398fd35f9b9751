/**
 * The authorization matrix: every RPC of hsm.v1 × {unauthenticated, CO, AU, CU owner, CU shared,
 * CU other}, each cell asserted with its exact status, through real gRPC against a real daemon on a
 * SoftHSM2 token. Each cell runs a request that is valid for a caller allowed to make it (so an
 * allowed cell answers OK and a denied one answers the refusal, never a validation error), on fresh
 * objects where the call changes or destroys them.
 */
import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RULES } from "../../src/access";
import { callOutcome } from "../helpers/expect-error";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, KeyUsage, PublicKeyFormat, Role, SigningAlgorithm, WrapAlgorithm, wrapForImport } from "../../src/sdk";
import { QuorumService } from "../../src/users";
import { TestStream, cryptoClient } from "../helpers/crypto-stream";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { officerClient, userClient, USER_PASSWORD, ensureUser } from "../helpers/users";

type Col = "unauthenticated" | "CO" | "AU" | "CU owner" | "CU shared" | "CU other";
const COLS: Col[] = ["unauthenticated", "CO", "AU", "CU owner", "CU shared", "CU other"];

/** How a row's cells are expected to answer, by the kind of rule the RPC has. */
type Kind = "public" | "session" | "co" | "co-au" | "co-cluster" | "cu" | "use" | "own" | "quorum-read" | "batch";
const U = "UNAUTHENTICATED";
const D = "PERMISSION_DENIED";
const N = "NOT_FOUND";
const EXPECT: Record<Kind, Record<Col, string>> = {
  public: { unauthenticated: "OK", CO: "OK", AU: "OK", "CU owner": "OK", "CU shared": "OK", "CU other": "OK" },
  session: { unauthenticated: U, CO: "OK", AU: "OK", "CU owner": "OK", "CU shared": "OK", "CU other": "OK" },
  co: { unauthenticated: U, CO: "OK", AU: D, "CU owner": D, "CU shared": D, "CU other": D },
  "co-au": { unauthenticated: U, CO: "OK", AU: "OK", "CU owner": D, "CU shared": D, "CU other": D },
  // Membership calls on a single node (this daemon runs on its embedded store): a CO passes
  // authorization and is told the node is not in a cluster.
  "co-cluster": { unauthenticated: U, CO: "FAILED_PRECONDITION", AU: D, "CU owner": D, "CU shared": D, "CU other": D },
  cu: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": "OK", "CU other": "OK" },
  use: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": "OK", "CU other": N },
  own: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": D, "CU other": N },
  // COs read every quorum request; a CU only those it made (the owner made the fixture's).
  "quorum-read": { unauthenticated: U, CO: "OK", AU: D, "CU owner": "OK", "CU shared": N, "CU other": N },
  // The call is allowed to every CU; each item answers for its key (the status shown is the item's).
  batch: { unauthenticated: U, CO: D, AU: D, "CU owner": "OK", "CU shared": "OK", "CU other": N },
};

let td: TestDaemon;
const clients = {} as Record<Col, HsmClient>;
/** Keys owned by "owner" and shared with "shared". */
const k = {} as Record<"aes" | "p256" | "wrap" | "exportable" | "ecdh", string>;
let ciphertext: { ciphertext: Buffer; iv: Buffer };
/** The same encryption's self-describing form (issue 13 lane E). */
let ciphertextBlob: Buffer;
let signature: Buffer;
let wrappedBlob: Buffer;
let wrappedDataKey: Buffer;
const message = Buffer.from("matrix message");
let quorumStore: QuorumService;
let seq = 0;
const fresh = (p: string) => `${p}-${++seq}`;

/** A fresh AES key of the owner's, shared with "shared" (for the calls that change or destroy it). */
async function ownersKey(opts: { share?: string } = {}): Promise<string> {
  const key = await clients["CU owner"].generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: fresh("fresh") });
  await clients["CU owner"].shareKey({ keyId: key.id, username: "shared" });
  if (opts.share) await clients["CU owner"].shareKey({ keyId: key.id, username: opts.share });
  return key.id;
}

/** A fresh key of the owner's (shared) with a version below its min_decryption_version: something to trim (issue 13 lane V). */
async function trimmableKey(): Promise<string> {
  const id = await ownersKey();
  await clients["CU owner"].rotateKey({ keyId: id });
  await clients["CU owner"].setMinDecryptionVersion({ keyId: id, minDecryptionVersion: 2 });
  return id;
}

/** A throwaway user for the user-management rows. */
async function throwaway(role: Role = Role.ROLE_CRYPTO_USER): Promise<string> {
  const name = fresh("tmp");
  await clients.CO.createUser({ username: name, role, password: USER_PASSWORD });
  return name;
}

/** A logged-in client of a fresh user with the column's role (for the rows that end or change the caller's session). */
async function sessionOf(col: Col): Promise<HsmClient> {
  if (col === "unauthenticated") return new HsmClient({ endpoint: td.grpc });
  const role = col === "CO" ? Role.ROLE_CRYPTO_OFFICER : col === "AU" ? Role.ROLE_APPLIANCE_USER : Role.ROLE_CRYPTO_USER;
  const name = await throwaway(role);
  const c = new HsmClient({ endpoint: td.grpc });
  await c.login(name, USER_PASSWORD);
  return c;
}

/** A pending quorum request made by the owner (recorded in the daemon's store). */
async function pendingQuorum(): Promise<string> {
  return (await quorumStore.request({ user: "owner" }, "MatrixOperation", { n: fresh("q") })).id;
}

/** Throws the item's error of a batch answer (so the cell shows the item's status). */
function itemOutcome(res: { results: Array<{ result?: { $case: string; value: unknown } }> }): void {
  const r = res.results[0]!.result!;
  if (r.$case === "error") {
    const e = r.value as { code: number; message: string };
    throw new HsmClientError(e.code, e.message);
  }
}

const spki = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" });

/** Row: RPC name → its expected kind and a call valid for an allowed caller. */
const ROWS: Array<{ rpc: string; kind: Kind; call: (c: HsmClient, col: Col) => Promise<unknown> }> = [
  // UserService
  // Login needs no session: whoever calls it (a fresh client, so the column's own session stays) gets one.
  { rpc: "Login", kind: "public", call: async (_c, col) => (col === "unauthenticated" ? new HsmClient({ endpoint: td.grpc }) : await sessionOf(col)).login("owner", USER_PASSWORD) },
  { rpc: "Logout", kind: "session", call: async (_c, col) => (await sessionOf(col)).logout() },
  { rpc: "RefreshSession", kind: "session", call: async (_c, col) => (await sessionOf(col)).refreshSession() },
  { rpc: "ChangePassword", kind: "session", call: async (_c, col) => (await sessionOf(col)).changePassword(USER_PASSWORD, "changed-password-2") },
  { rpc: "CreateUser", kind: "co", call: (c) => c.createUser({ username: fresh("new"), role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD }) },
  { rpc: "GetUser", kind: "co", call: (c) => c.getUser({ username: "owner" }) },
  { rpc: "ListUsers", kind: "co", call: (c) => c.listUsers() },
  { rpc: "DeleteUser", kind: "co", call: async (c) => c.deleteUser({ username: await throwaway() }) },
  { rpc: "LockUser", kind: "co", call: async (c) => c.lockUser({ username: await throwaway() }) },
  { rpc: "UnlockUser", kind: "co", call: async (c) => c.unlockUser({ username: await throwaway() }) },
  { rpc: "ResetPassword", kind: "co", call: async (c) => c.resetPassword({ username: await throwaway(), newPassword: "reset-password-3" }) },
  // QuorumService
  { rpc: "ListQuorumRequests", kind: "co", call: (c) => c.listQuorumRequests() },
  { rpc: "GetQuorumRequest", kind: "quorum-read", call: async (c) => c.getQuorumRequest({ id: await pendingQuorum() }) },
  { rpc: "ApproveQuorumRequest", kind: "co", call: async (c) => c.approveQuorumRequest({ id: await pendingQuorum() }) },
  { rpc: "RejectQuorumRequest", kind: "co", call: async (c) => c.rejectQuorumRequest({ id: await pendingQuorum() }) },
  // ClusterService
  { rpc: "GetClusterStatus", kind: "co-au", call: (c) => c.getClusterStatus() },
  { rpc: "ListJoinRequests", kind: "co-cluster", call: (c) => c.listJoinRequests() },
  { rpc: "ApproveJoin", kind: "co-cluster", call: (c) => c.approveJoin({ nodeId: "node-x", transportKeySha256: "0".repeat(64), soPin: "not-used" }) },
  { rpc: "RejectJoin", kind: "co-cluster", call: (c) => c.rejectJoin({ nodeId: "node-x" }) },
  { rpc: "RemoveNode", kind: "co-cluster", call: (c) => c.removeNode({ nodeId: "node-x" }) },
  // AuditService
  { rpc: "QueryAuditLog", kind: "co", call: (c) => c.queryAuditLog({ limit: 5 }) },
  { rpc: "VerifyAuditLog", kind: "co", call: (c) => c.verifyAuditLog() },
  // KeyService
  { rpc: "GenerateKey", kind: "cu", call: (c) => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: fresh("gen") }) },
  { rpc: "GetKey", kind: "use", call: (c) => c.getKey({ keyId: k.aes }) },
  { rpc: "ListKeys", kind: "cu", call: (c) => c.listKeys({}) },
  { rpc: "DeleteKey", kind: "own", call: async (c) => c.deleteKey({ keyId: await ownersKey() }) },
  { rpc: "GetPublicKey", kind: "use", call: (c) => c.getPublicKey({ keyId: k.p256 }) },
  { rpc: "ImportPublicKey", kind: "cu", call: (c) => c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: spki(), label: fresh("pub") }) },
  { rpc: "GetImportParameters", kind: "cu", call: (c) => c.getImportParameters() },
  {
    rpc: "ImportKey",
    kind: "cu",
    call: async (c) => {
      // Parameters come from the owner's session: the call under test is ImportKey alone.
      const p = await clients["CU owner"].getImportParameters();
      const blob = wrapForImport(Buffer.from(p.publicKeySpki), randomBytes(32), p.wrappingAlgorithm);
      return c.importKey({ spec: KeySpec.KEY_SPEC_AES_256, label: fresh("imp"), importKeyId: p.importKeyId, wrappedKeyMaterial: blob });
    },
  },
  { rpc: "ShareKey", kind: "own", call: async (c) => c.shareKey({ keyId: await ownersKey(), username: "fourth" }) },
  { rpc: "UnshareKey", kind: "own", call: async (c) => c.unshareKey({ keyId: await ownersKey({ share: "fourth" }), username: "fourth" }) },
  // issue 13 lane V: versions
  { rpc: "RotateKey", kind: "own", call: async (c) => c.rotateKey({ keyId: await ownersKey() }) },
  { rpc: "ListKeyVersions", kind: "use", call: (c) => c.listKeyVersions({ keyId: k.aes }) },
  { rpc: "UpdateRotationPolicy", kind: "own", call: async (c) => c.updateRotationPolicy({ keyId: await ownersKey(), rotationPeriodDays: 90 }) },
  { rpc: "SetMinDecryptionVersion", kind: "own", call: async (c) => c.setMinDecryptionVersion({ keyId: await ownersKey(), minDecryptionVersion: 1 }) },
  { rpc: "TrimKeyVersions", kind: "own", call: async (c) => c.trimKeyVersions({ keyId: await trimmableKey() }) },
  // end issue 13 lane V
  // issue 13 lane S
  { rpc: "EnableKey", kind: "own", call: async (c) => c.enableKey({ keyId: await ownersKey() }) },
  { rpc: "DisableKey", kind: "own", call: async (c) => c.disableKey({ keyId: await ownersKey() }) },
  { rpc: "ScheduleKeyDeletion", kind: "own", call: async (c) => c.scheduleKeyDeletion({ keyId: await ownersKey(), pendingWindowDays: 0 }) },
  {
    rpc: "CancelKeyDeletion",
    kind: "own",
    call: async (c) => {
      const keyId = await ownersKey();
      await clients["CU owner"].scheduleKeyDeletion({ keyId, pendingWindowDays: 30 });
      return c.cancelKeyDeletion({ keyId });
    },
  },
  { rpc: "UpdateKeyDescription", kind: "own", call: (c) => c.updateKeyDescription({ keyId: k.aes, description: fresh("matrix description") }) },
  { rpc: "TagKey", kind: "own", call: (c) => c.tagKey({ keyId: k.aes, tags: { matrix: fresh("v") } }) },
  { rpc: "UntagKey", kind: "own", call: (c) => c.untagKey({ keyId: k.aes, tagKeys: ["matrix"] }) },
  // end issue 13 lane S
  // CryptoService
  { rpc: "Encrypt", kind: "use", call: (c) => c.encrypt({ keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: message }) },
  { rpc: "Decrypt", kind: "use", call: (c) => c.decrypt({ keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ...ciphertext }) },
  { rpc: "Sign", kind: "use", call: (c) => c.sign({ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message }) },
  // Refused at open for no session, a CO or an AU; each message then answers for its key as Sign does.
  { rpc: "CryptoStream", kind: "use", call: (c) => streamSign(c) },
  { rpc: "Verify", kind: "use", call: (c) => c.verify({ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message, signature }) },
  { rpc: "WrapKey", kind: "own", call: (c) => c.wrapKey({ wrappingKeyId: k.wrap, keyId: k.exportable, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP }) },
  {
    rpc: "UnwrapKey",
    kind: "use",
    call: (c) => c.unwrapKey({ unwrappingKeyId: k.wrap, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP, wrappedKey: wrappedBlob, spec: KeySpec.KEY_SPEC_AES_256, label: fresh("unw") }),
  },
  { rpc: "DeriveKey", kind: "use", call: (c) => c.deriveKey({ privateKeyId: k.ecdh, peerPublicKeySpki: spki(), spec: KeySpec.KEY_SPEC_AES_256, label: fresh("drv") }) },
  { rpc: "GenerateRandom", kind: "cu", call: (c) => c.generateRandom({ length: 16 }) },
  { rpc: "GenerateDataKey", kind: "use", call: (c) => c.generateDataKey({ keyId: k.aes, encryptionContext: { purpose: "matrix" } }) },
  { rpc: "GenerateDataKeyWithoutPlaintext", kind: "use", call: (c) => c.generateDataKeyWithoutPlaintext({ keyId: k.aes }) },
  { rpc: "DecryptDataKey", kind: "use", call: (c) => c.decryptDataKey({ keyId: k.aes, wrappedDataKey: wrappedDataKey, encryptionContext: { purpose: "matrix" } }) },
  { rpc: "BatchSign", kind: "batch", call: async (c) => itemOutcome(await c.batchSign({ items: [{ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message }] })) },
  {
    rpc: "BatchVerify",
    kind: "batch",
    call: async (c) => itemOutcome(await c.batchVerify({ items: [{ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message, signature }] })),
  },
  {
    rpc: "BatchEncrypt",
    kind: "batch",
    call: async (c) => itemOutcome(await c.batchEncrypt({ items: [{ keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: message }] })),
  },
  {
    rpc: "BatchDecrypt",
    kind: "batch",
    call: async (c) => itemOutcome(await c.batchDecrypt({ items: [{ keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ...ciphertext }] })),
  },
  // issue 13 lane E: ReEncrypt needs use of the source (named by the blob's header) and of the destination.
  { rpc: "ReEncrypt", kind: "use", call: (c) => c.reEncrypt({ ciphertextBlob, destinationKeyId: k.aes }) },
  { rpc: "BatchReEncrypt", kind: "batch", call: async (c) => itemOutcome(await c.batchReEncrypt({ items: [{ ciphertextBlob, destinationKeyId: k.aes }] })) },
  // end issue 13 lane E
];

// issue 13 lane A: the alias RPCs (key-taking calls made with alias/NAME: authz-matrix-aliases.test.ts).
/** A fresh alias of a fresh owner's key (shared with "shared"), for the rows that change or delete it. */
async function freshAlias(): Promise<string> {
  return (await clients["CU owner"].createAlias({ aliasName: `alias/${fresh("matrix")}`, targetKeyId: await ownersKey() })).name;
}
ROWS.push(
  { rpc: "CreateAlias", kind: "own", call: async (c) => c.createAlias({ aliasName: `alias/${fresh("made")}`, targetKeyId: await ownersKey() }) },
  // The new target must be the caller's: a shared user is refused by the key check, another by NOT_FOUND.
  { rpc: "UpdateAlias", kind: "own", call: async (c) => c.updateAlias({ aliasName: await freshAlias(), targetKeyId: await ownersKey() }) },
  // The alias's owner only: a user its key is shared with sees it (PERMISSION_DENIED), another does not (NOT_FOUND).
  { rpc: "DeleteAlias", kind: "own", call: async (c) => c.deleteAlias({ aliasName: await freshAlias() }) },
  { rpc: "ListAliases", kind: "cu", call: (c) => c.listAliases({}) },
);
// end of issue 13 lane A

beforeAll(async () => {
  td = await startTestDaemon();
  quorumStore = new QuorumService({ store: td.daemon.store, policy: { MatrixOperation: 2 } });
  clients.CO = await officerClient(td);
  for (const name of ["shared", "other", "fourth"]) await ensureUser(td, name);
  clients["CU owner"] = await userClient(td, "owner");
  clients["CU shared"] = await userClient(td, "shared");
  clients["CU other"] = await userClient(td, "other");
  clients.AU = await userClient(td, "appliance", {}, Role.ROLE_APPLIANCE_USER);
  clients.unauthenticated = new HsmClient({ endpoint: td.grpc });

  const o = clients["CU owner"];
  const gen = async (spec: KeySpec, usages: KeyUsage[] = [], exportable = false) => (await o.generateKey({ spec, label: fresh("fixture"), usages, exportable })).id;
  k.aes = await gen(KeySpec.KEY_SPEC_AES_256);
  k.p256 = await gen(KeySpec.KEY_SPEC_EC_P256);
  k.wrap = await gen(KeySpec.KEY_SPEC_AES_256, [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP]);
  k.exportable = await gen(KeySpec.KEY_SPEC_AES_256, [], true);
  k.ecdh = await gen(KeySpec.KEY_SPEC_EC_P256, [KeyUsage.KEY_USAGE_DERIVE]);
  for (const id of Object.values(k)) await o.shareKey({ keyId: id, username: "shared" });
  // The raw parts only: Decrypt refuses raw fields beside a ciphertext_blob (issue 13).
  const encrypted = await o.encrypt({ keyId: k.aes, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: message });
  ciphertext = { ciphertext: encrypted.ciphertext, iv: encrypted.iv };
  ciphertextBlob = encrypted.ciphertextBlob;
  signature = (await o.sign({ keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message })).signature;
  wrappedDataKey = (await o.generateDataKeyWithoutPlaintext({ keyId: k.aes, encryptionContext: { purpose: "matrix" } })).wrappedDataKey;
  wrappedBlob = (await o.wrapKey({ wrappingKeyId: k.wrap, keyId: k.exportable, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP })).wrappedKey;
}, 120_000);

afterAll(async () => {
  for (const c of Object.values(clients)) c?.close();
  await td?.cleanup();
});

/** One Sign on the owner's P-256 key over a crypto stream opened with `c`'s session; rejects with the open's or the message's status. */
async function streamSign(c: HsmClient): Promise<void> {
  const client = cryptoClient(td.grpc);
  try {
    const s = new TestStream(client, c.exportSession()?.token);
    s.send(1, { $case: "sign", value: { keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message, messageType: 0, signatureFormat: 0, macLength: 0 } });
    const r = await Promise.race([s.answer(1), s.ended]);
    if ("codeName" in r) throw HsmClientError.from({ code: r.code, details: r.details });
    if (r.result?.$case === "error") throw HsmClientError.from({ code: r.result.value.code, details: r.result.value.message });
    s.close();
    await s.ended;
  } finally {
    client.close();
  }
}

describe("authorization matrix", () => {
  it("covers every RPC that has a rule, and every rule's RPC", () => {
    expect(ROWS.map((r) => r.rpc).sort()).toEqual(Object.keys(RULES).sort());
  });

  for (const row of ROWS) {
    for (const col of COLS) {
      const want = EXPECT[row.kind][col];
      it(`${row.rpc} × ${col} → ${want}`, async () => {
        expect(await callOutcome(() => row.call(clients[col], col))).toBe(want);
      });
    }
  }
});

describe("what the matrix implies", () => {
  it("ListKeys shows a CU its own and shared keys only, and the share list to the owner only", async () => {
    const ids = async (col: Col) => (await clients[col].listKeys({ pageSize: 1000 })).keys.map((x) => x.id);
    const mine = await ids("CU owner");
    const shared = await ids("CU shared");
    const other = await ids("CU other");
    for (const id of Object.values(k)) {
      expect(mine).toContain(id);
      expect(shared).toContain(id);
      expect(other).not.toContain(id);
    }
    expect(new Set(other).size).toBe(other.length);
    expect((await clients["CU owner"].getKey({ keyId: k.aes })).sharedWith).toEqual(["shared"]);
    const seen = await clients["CU shared"].getKey({ keyId: k.aes });
    expect(seen.owner).toBe("owner");
    expect(seen.sharedWith).toEqual([]);
  });

  it("a key shared and then unshared is no longer usable by that CU", async () => {
    const id = await ownersKey({ share: "other" });
    await clients["CU other"].encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: message });
    await clients["CU owner"].unshareKey({ keyId: id, username: "other" });
    expect(await callOutcome(() => clients["CU other"].encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: message }))).toBe("NOT_FOUND");
  });

  it("keys are shared with crypto users only, and with users that exist", async () => {
    expect(await callOutcome(() => clients["CU owner"].shareKey({ keyId: k.aes, username: "admin" }))).toBe("FAILED_PRECONDITION");
    expect(await callOutcome(() => clients["CU owner"].shareKey({ keyId: k.aes, username: "nobody-here" }))).toBe("NOT_FOUND");
  });

  it("a retried create with the same request id is the same key for one user, another user's request id makes its own", async () => {
    const rid = randomUUID();
    const a = await clients["CU owner"].generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "rid", requestId: rid });
    const again = await clients["CU owner"].generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "rid", requestId: rid });
    const b = await clients["CU other"].generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "rid", requestId: rid });
    expect(again.id).toBe(a.id);
    expect(b.id).not.toBe(a.id);
    expect(b.owner).toBe("other");
  });

  it("a user recreated under a deleted user's name inherits neither its keys nor its shares", async () => {
    const name = fresh("ghost");
    await clients.CO.createUser({ username: name, role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const id = await ownersKey({ share: name });
    await clients.CO.deleteUser({ username: name });
    await clients.CO.createUser({ username: name, role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const c = new HsmClient({ endpoint: td.grpc });
    await c.login(name, USER_PASSWORD);
    expect(await callOutcome(() => c.getKey({ keyId: id }))).toBe("NOT_FOUND");
    c.close();
  });

  it("a CU that owns keys cannot be deleted until they are gone", async () => {
    const name = fresh("keeper");
    await clients.CO.createUser({ username: name, role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const c = new HsmClient({ endpoint: td.grpc });
    await c.login(name, USER_PASSWORD);
    const key = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_128, label: "kept" });
    expect(await callOutcome(() => clients.CO.deleteUser({ username: name }))).toBe("FAILED_PRECONDITION");
    await c.deleteKey({ keyId: key.id });
    c.close();
    expect(await callOutcome(() => clients.CO.deleteUser({ username: name }))).toBe("OK");
  });

  it("refusals that need no quorum or device come first, with their reasons", async () => {
    const self = await clients.CO.deleteUser({ username: "admin" }).catch((e: HsmClientError) => e);
    expect(self).toMatchObject({ codeName: "FAILED_PRECONDITION", details: expect.stringContaining("cannot delete itself") });
    const reset = await clients.CO.resetPassword({ username: "admin", newPassword: "another-password-9" }).catch((e: HsmClientError) => e);
    expect(reset).toMatchObject({ codeName: "FAILED_PRECONDITION", details: expect.stringContaining("ChangePassword") });
    expect(await callOutcome(() => clients["CU owner"].unshareKey({ keyId: k.aes, username: "Not A Name" }))).toBe("INVALID_ARGUMENT");
    expect(await callOutcome(() => clients["CU owner"].shareKey({ keyId: k.aes, username: "" }))).toBe("INVALID_ARGUMENT");
    expect(await callOutcome(() => clients.CO.queryAuditLog({ limit: 1001 }))).toBe("INVALID_ARGUMENT");
  });

  it("a denied batch item fails alone: the others in the same call still answer", async () => {
    const own = await clients["CU other"].generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "mine" });
    const res = await clients["CU other"].batchSign({
      items: [
        { keyId: own.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message },
        { keyId: k.p256, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message },
      ],
    });
    expect(res.results[0]!.result!.$case).toBe("ok");
    expect(res.results[1]!.result).toMatchObject({ $case: "error", value: { code: 5 } });
  });
});
