/**
 * Property-based fuzzing of every hsm.v1 RPC (enumerated from proto/, not a hand list) through real
 * gRPC to a real daemon on a SoftHSM2 token: random messages built from each request type's fields,
 * mutations of them and random bytes, sent without a session, as a crypto user and as a crypto
 * officer. Every answer must be a status of the closed set (never INTERNAL or UNKNOWN); afterwards
 * the daemon must still serve (health check, a known-good Sign that verifies) and the store and the
 * token must hold nothing half-written: no more key or user records than successful creating calls
 * added, every record decodable, no hsmd object on the token without its record and no record
 * without its object.
 *
 * CI runs a bounded number of cases; a long run: `FUZZ_RUNS=20000 npx vitest run test/integration/fuzz.test.ts`
 * (or `npm run fuzz`). On a failure fast-check prints the seed and path; replay with FUZZ_SEED=<seed>
 * (and FUZZ_PATH=<path>).
 */
import { createPublicKey, generateKeyPairSync, verify as nodeVerify } from "node:crypto";
import type * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, expect, it } from "vitest";
import { RULES } from "../../src/access";
import { deviceIdOf } from "../../src/keys";
import { verifyAuditLog } from "../../src/audit";
import { EncryptionAlgorithm, HsmClient, KeySpec, Role, SigningAlgorithm } from "../../src/sdk";
import { tokenKeyAttributes, loginToken } from "../helpers/cluster";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { hsmMethods, requestBodyArb, type FuzzPools } from "../helpers/proto-fuzz";
import { rawCall, rawClient } from "../helpers/raw-grpc";
import { USER_PASSWORD, ensureUser, officerClient, userClient } from "../helpers/users";

const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const SEED = process.env.FUZZ_SEED === undefined ? undefined : Number(process.env.FUZZ_SEED);
const PATH = process.env.FUZZ_PATH;

/** The statuses hsmd answers with (README, Errors); anything else is a bug. */
const ALLOWED = new Set(["OK", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "ALREADY_EXISTS"]);
const SESSIONS = ["none", "fuzz-cu", "fuzz-co"] as const;
type Who = (typeof SESSIONS)[number];

let td: TestDaemon;
let raw: grpc.Client;
let officer: HsmClient;
let alice: HsmClient;
let aliceKey: string;
const tokens: Partial<Record<Who, string>> = {};
/** Filled in beforeAll with real key ids and names; the arbitraries are built after it. */
const fuzzPools: FuzzPools = { keyIds: [], usernames: [], labels: [], blobs: [] };
const methods = hsmMethods();
const paths = [...methods.keys()].sort();
/** RPCs that may add a record when they succeed (from the access rules, like the methods from proto/). */
const createsKey = new Set(
  Object.entries(RULES)
    .filter(([, r]) => r.createsKey)
    .map(([m]) => m),
);

async function login(who: Exclude<Who, "none">): Promise<void> {
  try {
    tokens[who] = await loginToken(td.grpc, who, USER_PASSWORD);
  } catch (e) {
    if ((e as { code?: number }).code !== 7 /* PERMISSION_DENIED: locked by failed ChangePassword attempts */) throw e;
    await officer.unlockUser({ username: who });
    tokens[who] = await loginToken(td.grpc, who, USER_PASSWORD);
  }
}

async function keyRecords(): Promise<string[]> {
  return (await td.daemon.store.list("keys/")).map((e) => {
    const rec = JSON.parse(e.value.toString("utf8")) as { id?: unknown };
    expect(typeof rec.id, `record ${e.key} decodes to a key`).toBe("string");
    return rec.id as string;
  });
}
/** The device ids of every version of every record (issue 13: `K` for version 1, `K.vN` past it). */
async function versionIds(): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const e of await td.daemon.store.list("keys/")) {
    const rec = JSON.parse(e.value.toString("utf8")) as { id: string; versions: Array<{ version: number }> };
    out.set(
      rec.id,
      rec.versions.map((v) => deviceIdOf(rec.id, v.version)),
    );
  }
  return out;
}
const userCount = async () => (await td.daemon.store.list("users/")).length;
const tokenIds = () => new Set(tokenKeyAttributes(td.token).map((o) => o.id));

beforeAll(async () => {
  // Failed ChangePassword attempts count as failed logins: the fuzzing users must not lock at 5.
  td = await startTestDaemon({ config: { auth: { maxFailedLogins: 100 } } });
  officer = await officerClient(td);
  await ensureUser(td, "fuzz-co", Role.ROLE_CRYPTO_OFFICER);
  await ensureUser(td, "victim");
  alice = await userClient(td, "alice");
  aliceKey = (await alice.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "known-good" })).id;
  const cu = await userClient(td, "fuzz-cu");
  const gen = (spec: KeySpec, label: string) => cu.generateKey({ spec, label });
  const keys = await Promise.all([
    gen(KeySpec.KEY_SPEC_AES_256, "f-aes"),
    gen(KeySpec.KEY_SPEC_EC_P256, "f-ec"),
    gen(KeySpec.KEY_SPEC_HMAC_SHA256, "f-hmac"),
    gen(KeySpec.KEY_SPEC_AES_128, "f-aes128"),
  ]);
  const sealed = await cu.encrypt({ keyId: keys[0]!.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("fuzz") });
  const pools: FuzzPools = {
    keyIds: [...keys.map((k) => k.id), "00000000-0000-4000-8000-000000000000"],
    usernames: ["victim", "nobody", "Not A Name"],
    labels: ["fuzz", "fuzz/label-1"],
    blobs: [generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" }), Buffer.from(sealed.ciphertext), Buffer.from(sealed.iv)],
  };
  cu.close();
  Object.assign(fuzzPools, pools);
  await login("fuzz-cu");
  await login("fuzz-co");
  raw = rawClient(td.grpc);
});
afterAll(async () => {
  raw?.close();
  alice?.close();
  officer?.close();
  await td?.cleanup();
});

it(`every RPC answers a status of the closed set to ${RUNS} random, mutated and garbage requests, and nothing is half-written`, { timeout: 60_000 + RUNS * 250 }, async () => {
  const keysBefore = await keyRecords();
  const usersBefore = await userCount();
  // Objects of no record, besides the daemon's own (hsmd-domain-…, hsmd-import, made when first asked for).
  // A rotation's versions (`K.vN`) are their record's while it has them.
  const stray = async () => {
    const explained = new Set([...(await versionIds()).values()].flat());
    return [...tokenIds()].filter((id) => !explained.has(id) && !id.startsWith("hsmd-"));
  };
  // And records of no object: every key (generated, imported, derived, public-only) lives on the
  // token (a version made by a rotation is materialized on first use: one version on the token suffices).
  const missing = async () => {
    const onToken = tokenIds();
    return [...(await versionIds())].filter(([, devs]) => !devs.some((d) => onToken.has(d))).map(([id]) => id);
  };
  expect(await stray()).toEqual([]);
  expect(await missing()).toEqual([]);
  let createdKeys = 0;
  let createdUsers = 0;
  const seen = new Map<string, number>();

  const sample = fc.constantFrom(...paths).chain((path) => fc.record({ path: fc.constant(path), who: fc.constantFrom(...SESSIONS), req: requestBodyArb(methods.get(path)!, fuzzPools) }));
  await fc.assert(
    fc.asyncProperty(sample, async ({ path, who, req }) => {
      const a = await rawCall(raw, path, Buffer.from(req.body), who === "none" ? undefined : tokens[who]);
      seen.set(a.codeName, (seen.get(a.codeName) ?? 0) + 1);
      expect(ALLOWED.has(a.codeName), `${path} (${req.kind}, session ${who}) answered ${a.codeName}: ${a.details}`).toBe(true);
      const method = path.slice(path.lastIndexOf("/") + 1);
      if (a.codeName === "OK" && createsKey.has(method)) createdKeys++;
      if (a.codeName === "OK" && method === "CreateUser") createdUsers++;
      // Logout, RefreshSession or a revocation ended the session: log in again for the next case.
      if (who !== "none" && (a.codeName === "UNAUTHENTICATED" || (a.codeName === "OK" && /Logout|RefreshSession|ChangePassword/.test(method)))) await login(who);
    }),
    { numRuns: RUNS, seed: SEED, path: PATH, endOnFailure: true },
  );

  // Still serving: the standard health check, and a known-good Sign that verifies.
  const health = await rawCall(raw, "/grpc.health.v1.Health/Check", Buffer.alloc(0));
  expect([health.codeName, health.response?.toString("hex")]).toEqual(["OK", "0801"]); // status: SERVING
  const msg = Buffer.from("still signing after the fuzz");
  const { signature } = await alice.sign({ keyId: aliceKey, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
  const { pem } = await alice.getPublicKey({ keyId: aliceKey });
  expect(nodeVerify("sha256", msg, createPublicKey(pem), Buffer.from(signature))).toBe(true);

  // Nothing half-written: records only from successful creates, all decodable; no orphan objects.
  const keysAfter = await keyRecords();
  expect(keysAfter.length).toBeLessThanOrEqual(keysBefore.length + createdKeys);
  expect(await userCount()).toBeLessThanOrEqual(usersBefore + createdUsers);
  expect(await stray()).toEqual([]);
  expect(await missing()).toEqual([]);
  // The audit log, refusals included, is still one unbroken chain.
  expect(await verifyAuditLog(td.daemon.config.audit.file)).toMatchObject({ ok: true });
  // The run reached past validation: some calls succeeded and some were refused as malformed.
  expect(seen.get("OK") ?? 0).toBeGreaterThan(0);
  expect(seen.get("INVALID_ARGUMENT") ?? 0).toBeGreaterThan(0);
  console.log(`fuzz: ${RUNS} cases over ${paths.length} RPCs: ${JSON.stringify(Object.fromEntries([...seen].sort()))}; ${createdKeys} keys and ${createdUsers} users created`);
});
