/**
 * Key versions on a real three-node cluster (three etcd members, hsmd daemons as child processes on
 * their own SoftHSM2 tokens, joined through the real ceremony): a rotation on n1 is used on n3; a
 * short real rotation schedule (lifecycle.dayMs 1500, checkIntervalMs 200) with three nodes racing
 * makes exactly one version per period, each audited once cluster-wide; a trim on n1 destroys the
 * trimmed version on every node.
 *
 * In a cluster, hsmd's key objects are session objects of each daemon process (CKA_TOKEN false), so
 * no other process (pkcs11-tool) can list them: the trim is read back through each node's own view,
 * its /v1/status object count and a use of the trimmed version on that node.
 */
import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, type HsmClient, KeySpec, KeyUsage, SigningAlgorithm } from "../../src/sdk";
import { eventually, initNode, joinNode, stderrTailsOnFail, teardownCluster } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { expectError } from "../helpers/expect-error";
import { ensureUser, officerClient, userClient } from "../helpers/users";

const DAY_MS = 1500;
const EXTRA = { lifecycle: { dayMs: DAY_MS, checkIntervalMs: 200, rotationPeriodDays: { min: 1, max: 10 } } };
const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const msg = Buffer.from("replicated rotation");

let etcd: EtcdCluster;
let n1: DaemonProcess;
let n2: DaemonProcess;
let n3: DaemonProcess;
let co: HsmClient;
const clients: HsmClient[] = [];
/** alice on each node alone (no failover: each call is that node's answer). */
const on: Record<"n1" | "n2" | "n3", HsmClient> = {} as never;
let ecKey: string;
let s1: Uint8Array;

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(3);
  n1 = await initNode(etcd, "n1", {}, EXTRA);
  co = await officerClient(n1);
  n2 = await joinNode(etcd, "n2", co, n1, {}, EXTRA);
  n3 = await joinNode(etcd, "n3", co, n1, {}, EXTRA);
  const reach = (n: DaemonProcess) => ({ grpc: n.grpc, dataDir: n1.dataDir });
  await ensureUser(reach(n1), "alice");
  for (const [name, n] of [
    ["n1", n1],
    ["n2", n2],
    ["n3", n3],
  ] as const) {
    on[name] = await userClient(reach(n), "alice", { retry: { maxAttempts: 1 } });
    clients.push(on[name]);
  }
}, 180_000);

afterEach((ctx) =>
  stderrTailsOnFail(ctx, [
    ["n1", n1],
    ["n2", n2],
    ["n3", n3],
  ]),
);

afterAll(async () => {
  await teardownCluster({ clients: [co, ...clients], daemons: [n3, n2, n1], etcd });
});

/** The key's versions as a node's own records have them. */
const versionsOn = async (c: HsmClient, keyId: string) => (await c.listKeyVersions({ keyId })).versions.map((v) => v.version);
/** Device objects a node counts for keys (its /v1/status: the materializer's view of its HSM). */
const resident = async (n: DaemonProcess): Promise<number> => ((await (await fetch(`${n.admin}/v1/status`)).json()) as { keyObjects: { resident: number } }).keyObjects.resident;

describe("versions across three nodes", () => {
  it("a rotation on n1 signs and encrypts with the new version on n3, and old signatures verify there", async () => {
    const k = await on.n1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "cl-rot-ec", usages: [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY] });
    ecKey = k.id;
    s1 = (await on.n1.sign({ keyId: ecKey, algorithm: ECDSA, message: msg })).signature;
    const aes = await on.n1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "cl-rot-aes" });
    expect((await on.n1.rotateKey({ keyId: ecKey })).version).toBe(2);
    expect((await on.n1.rotateKey({ keyId: aes.id })).version).toBe(2);

    await eventually(async () => (await versionsOn(on.n3, ecKey)).length === 2 && (await versionsOn(on.n3, aes.id)).length === 2, "n3 sees both rotations", 20_000);
    const s2 = await on.n3.sign({ keyId: ecKey, algorithm: ECDSA, message: msg });
    expect(s2.keyVersion).toBe(2);
    const pub2 = await on.n3.getPublicKey({ keyId: ecKey, version: 2 });
    const pub1 = await on.n3.getPublicKey({ keyId: ecKey, version: 1 });
    expect(Buffer.from(pub2.spkiDer)).toEqual(Buffer.from((await on.n1.getPublicKey({ keyId: ecKey })).spkiDer));
    const der = (b: Uint8Array) => createPublicKey({ key: Buffer.from(b), format: "der", type: "spki" });
    expect(nodeVerify("sha256", msg, der(pub2.spkiDer), Buffer.from(s2.signature))).toBe(true);
    expect(nodeVerify("sha256", msg, der(pub1.spkiDer), Buffer.from(s1))).toBe(true);
    expect((await on.n3.verify({ keyId: ecKey, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 1 })).valid).toBe(true);
    expect((await on.n2.verify({ keyId: ecKey, algorithm: ECDSA, message: msg, signature: s2.signature })).valid).toBe(true);

    const e = await on.n3.encrypt({ keyId: aes.id, algorithm: GCM, plaintext: msg });
    expect(e.keyVersion).toBe(2);
    const d = await on.n1.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv });
    expect(Buffer.from(d.plaintext)).toEqual(msg);
  });

  it("a short real schedule with three nodes racing makes exactly one version per period, audited once", async () => {
    const created = Date.now();
    const k = await on.n2.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "cl-rot-scheduled", rotationPeriodDays: 1 });
    expect(k.rotationPeriodDays).toBe(1);
    // A few periods (1.5 s each) pass; every node's pass runs every 200 ms.
    await eventually(async () => (await on.n1.getKey({ keyId: k.id })).version >= 4, "three scheduled rotations", 30_000, 200);
    const frozen = await on.n1.updateRotationPolicy({ keyId: k.id, rotationPeriodDays: 0 });
    const elapsedPeriods = Math.floor((Date.now() - created) / DAY_MS);
    // A rotation in flight when the policy was turned off still lands (it was due): settle first.
    await new Promise((r) => setTimeout(r, 500));
    const l = await on.n1.listKeyVersions({ keyId: k.id });
    const n = l.versions.length;
    expect(l.versions.map((v) => v.version)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    expect(n).toBeGreaterThanOrEqual(4);
    expect(n - 1).toBeLessThanOrEqual(elapsedPeriods);
    expect(frozen.version).toBeLessThanOrEqual(n);
    // Every node agrees on the versions.
    for (const c of [on.n2, on.n3]) await eventually(async () => (await versionsOn(c, k.id)).length === n, "every node has every version", 20_000);
    // Each rotation is audited exactly once, by whichever node made it.
    const audited: number[] = [];
    for (const node of [n1, n2, n3]) {
      const officer = await officerClient({ grpc: node.grpc, dataDir: n1.dataDir });
      clients.push(officer);
      const res = await officer.queryAuditLog({ keyId: k.id, operation: "ScheduledRotation", limit: 1000 });
      for (const entry of res.entries) {
        audited.push(Number(/version (\d+)/.exec(entry.detail)![1]));
      }
    }
    expect(audited.sort((a, b) => a - b)).toEqual(Array.from({ length: n - 1 }, (_, i) => i + 2));
    // The primary encrypts on any node.
    expect((await on.n3.encrypt({ keyId: k.id, algorithm: GCM, plaintext: msg })).keyVersion).toBe(n);
  });

  it("a trim on n1 destroys the trimmed version on every node", async () => {
    // Every node materializes version 1 of the EC key (a use there), and counts its objects.
    for (const c of [on.n1, on.n2, on.n3]) expect((await c.verify({ keyId: ecKey, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 1 })).valid).toBe(true);
    // Counts settle first (the appliers may still be proving the scheduled key's last versions).
    const stable = (n: DaemonProcess) =>
      eventually(
        async () => {
          const a = await resident(n);
          await new Promise((r) => setTimeout(r, 300));
          return a === (await resident(n)) ? a + 1 : undefined;
        },
        "a steady object count",
        20_000,
      ).then((x) => x - 1);
    const before = await Promise.all([n1, n2, n3].map(stable));
    await on.n1.setMinDecryptionVersion({ keyId: ecKey, minDecryptionVersion: 2 });
    await expectError(
      on.n1.trimKeyVersions({ keyId: ecKey }).then(() => on.n1.trimKeyVersions({ keyId: ecKey })),
      "FAILED_PRECONDITION",
      "nothing to trim",
    );
    for (const [i, [c, node]] of (
      [
        [on.n1, n1],
        [on.n2, n2],
        [on.n3, n3],
      ] as const
    ).entries()) {
      await eventually(async () => (await versionsOn(c, ecKey)).join() === "2", `node ${i + 1} sees the trim`, 20_000);
      // The pair of version 1 (2 objects) is gone from the node's HSM.
      await eventually(async () => (await resident(node)) === before[i]! - 2, `node ${i + 1} destroyed version 1's objects`, 20_000);
      await expectError(c.verify({ keyId: ecKey, algorithm: ECDSA, message: msg, signature: s1, keyVersion: 1 }), "NOT_FOUND", "no version 1");
      await expectError(c.getPublicKey({ keyId: ecKey, version: 1 }), "NOT_FOUND");
    }
  });
});
