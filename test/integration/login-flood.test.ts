/**
 * A login flood against a real daemon (in process, real SoftHSM2 token, real sockets): 48 concurrent
 * logins for unknown users from one address. Past the per-address rate they are refused with
 * RESOURCE_EXHAUSTED before any hashing; those admitted hash in the bounded lane (the metrics show
 * how many ran at once), and a good client's Sign keeps succeeding throughout.
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

const BURST = 40;
const CONCURRENCY = 2;
const FLOOD = 48;

let td: TestDaemon;
let good: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon({
    // A refill so slow that none happens during the test: the admitted count is exactly what is left of the burst.
    config: { auth: { loginRateLimit: { burst: BURST, perSecond: 0.001 }, hashLane: { concurrency: CONCURRENCY, maxQueue: 64 } } },
  });
  good = await userClient(td, "good");
});
afterAll(async () => {
  good?.close();
  await td?.cleanup();
});

async function metrics(): Promise<string> {
  return (await fetch(`${td.admin}/metrics`)).text();
}

/** Sum of the samples of `name` whose labels include `labels`. */
function sum(body: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of body.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[3]);
  }
  return total;
}

describe("login flood from one address", () => {
  it("is refused past the rate with RESOURCE_EXHAUSTED, hashes at most `concurrency` at once, and a good client's Sign keeps succeeding", async () => {
    const key = await good.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "flood-witness" });
    const pub = createPublicKey((await good.getPublicKey({ keyId: key.id })).pem);
    const before = await metrics();
    const loginsSoFar = sum(before, "hsmd_grpc_requests_total", { method: "Login" });
    const hashesBefore = sum(before, "hsmd_password_hashes_completed");
    const admitted = BURST - loginsSoFar;
    expect(admitted).toBeGreaterThan(CONCURRENCY);
    expect(admitted).toBeLessThan(FLOOD);

    const attacker = new HsmClient({ endpoint: td.grpc, defaultDeadlineMs: 60_000 });
    let flooding = true;
    const flood = Promise.allSettled(Array.from({ length: FLOOD }, (_, i) => attacker.login(`ghost-${i}`, `guess-password-${i}`))).finally(() => (flooding = false));
    // The good client signs until the flood has been answered, every signature checked.
    let signed = 0;
    do {
      const message = Buffer.from(`during the flood ${signed}`);
      const { signature } = await good.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message });
      expect(verifySignature("sha256", message, pub, signature)).toBe(true);
      signed++;
    } while (flooding);
    const results = await flood;

    const codes = results.map((r) => (r.status === "rejected" ? (r.reason as { codeName: string }).codeName : "OK"));
    expect(codes.filter((c) => c === "UNAUTHENTICATED")).toHaveLength(admitted);
    expect(codes.filter((c) => c === "RESOURCE_EXHAUSTED")).toHaveLength(FLOOD - admitted);
    const refusal = results.find((r) => r.status === "rejected" && (r.reason as { codeName: string }).codeName === "RESOURCE_EXHAUSTED") as PromiseRejectedResult;
    expect((refusal.reason as { details: string }).details).toMatch(/^too many logins from 127\.0\.0\.1: retry in \d+ s \(the limit is 40 at once, then 0\.001 per second: auth\.loginRateLimit\)$/);
    expect(signed).toBeGreaterThan(0);

    const after = await metrics();
    // Every admitted login was hashed (the same work for unknown users as for known ones), never more than CONCURRENCY at once.
    expect(sum(after, "hsmd_password_hashes_completed") - hashesBefore).toBe(admitted);
    expect(sum(after, "hsmd_password_hashes_peak_running")).toBe(CONCURRENCY);
    expect(sum(after, "hsmd_password_hashes", { state: "running" })).toBe(0);
    expect(sum(after, "hsmd_logins_rate_limited")).toBe(FLOOD - admitted);
    expect(sum(after, "hsmd_grpc_requests_total", { method: "Login", code: "RESOURCE_EXHAUSTED" })).toBe(FLOOD - admitted);

    // The address stays refused, a real user's correct password included, while the good session works on.
    await expect(attacker.login("good", "user-password-1")).rejects.toMatchObject({ codeName: "RESOURCE_EXHAUSTED" });
    expect((await good.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from("after") })).signature.length).toBeGreaterThan(0);
    attacker.close();
  });
});
