/**
 * Key states across a three-node cluster on three real etcd members (issue 13): a key disabled
 * through n1 is refused on n3, enabled through n3 works on n1; tags replicate; a scheduled deletion
 * with a short window (lifecycle.dayMs 200 ms) fires exactly once while all three nodes race their
 * passes: the key is gone on every node (record, key count, resident device objects) and there is
 * exactly one audit entry across the three nodes' own audit logs; an expiry (valid_to) likewise.
 * In a cluster keys are session objects of each daemon, which no other process can list: a node's
 * /v1/status (key count, the materializer's resident objects) is the view of its HSM.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import { HsmClient, HsmClientError, KeySpec, KeyState, SigningAlgorithm, wrapForImport } from "../../src/sdk";
import { eventually, initNode, joinNode, nodeStatus, teardownCluster } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "../helpers/users";

const EXTRA = { lifecycle: { dayMs: 200, checkIntervalMs: 100 } };
const ES256 = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const message = Buffer.from("cluster states");
let etcd: EtcdCluster;
let nodes: DaemonProcess[] = [];
let co: HsmClient;
const clients: HsmClient[] = [];

async function alice(n: DaemonProcess): Promise<HsmClient> {
  const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 20_000, cryptoStream: false, retry: { maxAttempts: 1 } });
  clients.push(c);
  await c.login("alice", USER_PASSWORD);
  return c;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "OK";
  } catch (e) {
    return (e as HsmClientError).codeName;
  }
}

async function resident(n: DaemonProcess): Promise<number> {
  const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { keyObjects: { resident: number } };
  return s.keyObjects.resident;
}

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(3);
  const n1 = await initNode(etcd, "n1", {}, EXTRA);
  co = await officerClient(n1);
  const n2 = await joinNode(etcd, "n2", co, n1, {}, EXTRA);
  const n3 = await joinNode(etcd, "n3", co, n1, {}, EXTRA);
  nodes = [n1, n2, n3];
  await ensureUser({ grpc: n1.grpc, dataDir: n1.dataDir }, "alice");
}, 180_000);

afterEach((ctx) => {
  if (ctx.task.result?.state !== "fail") return;
  for (const [i, n] of nodes.entries()) process.stderr.write(`---- n${i + 1} stderr (tail) ----\n${n.stderr().slice(-4000)}\n`);
});

afterAll(async () => {
  await teardownCluster({ clients: [co, ...clients], daemons: [...nodes].reverse(), etcd });
});

describe("key states in a cluster", () => {
  it("disable on n1 is refused on n3, enable on n3 works on n1; tags replicate", async () => {
    const [c1, c2, c3] = [await alice(nodes[0]!), await alice(nodes[1]!), await alice(nodes[2]!)];
    const k = await c1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "states" });
    await eventually(async () => (await code(c3.sign({ keyId: k.id, algorithm: ES256, message }))) === "OK", "n3 signs with the new key");
    await c1.disableKey({ keyId: k.id });
    const refused = await eventually(async () => {
      try {
        await c3.sign({ keyId: k.id, algorithm: ES256, message });
        return undefined;
      } catch (e) {
        return e as HsmClientError;
      }
    }, "n3 refuses the disabled key");
    expect(refused.codeName).toBe("FAILED_PRECONDITION");
    expect(refused.details).toContain(`key ${k.id} is DISABLED`);
    await c3.enableKey({ keyId: k.id });
    await eventually(async () => (await code(c1.sign({ keyId: k.id, algorithm: ES256, message }))) === "OK", "n1 signs again");
    await c2.tagKey({ keyId: k.id, tags: { app: "billing" } });
    await eventually(async () => (await c3.getKey({ keyId: k.id })).tags.app === "billing", "the tag reaches n3");
    await eventually(async () => (await c1.listKeys({ tagKey: "app", tagValue: "billing" })).keys.some((x) => x.id === k.id), "n1 lists by the tag");
  });

  it("a scheduled deletion fires once with three nodes racing: gone everywhere, one audit entry across the nodes", async () => {
    const cs = await Promise.all(nodes.map((n) => alice(n)));
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await cs[i % 3]!.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: `doomed-${i}` })).id);
    // Every node uses every key (each materializes it into its own HSM).
    for (const c of cs) for (const id of ids) await eventually(async () => (await code(c.sign({ keyId: id, algorithm: ES256, message }))) === "OK", "a node signs");
    const before = await Promise.all(nodes.map(async (n) => ({ keys: (await nodeStatus(n)).keys, resident: await resident(n) })));
    for (const [i, id] of ids.entries()) await cs[i % 3]!.scheduleKeyDeletion({ keyId: id, pendingWindowDays: 7 });
    for (const c of cs) for (const id of ids) await eventually(async () => (await code(c.getKey({ keyId: id }))) === "NOT_FOUND", "the key gone on every node");
    for (const [i, n] of nodes.entries()) {
      await eventually(async () => (await nodeStatus(n)).keys === before[i]!.keys - ids.length, `n${i + 1} counts the keys gone`);
      // Each EC key is two objects (private and public).
      await eventually(async () => (await resident(n)) === before[i]!.resident - 2 * ids.length, `n${i + 1} destroyed their objects`);
    }
    const entries = [];
    for (const n of nodes) {
      const o = await officerClient({ grpc: n.grpc, dataDir: nodes[0]!.dataDir });
      clients.push(o);
      entries.push(...(await o.queryAuditLog({ operation: "ScheduledKeyDeletion", limit: 1000 })).entries.filter((e) => ids.includes(e.keyId)));
    }
    expect(entries.map((e) => e.keyId).sort()).toEqual([...ids].sort());
  });

  it("an expiry fires once with three nodes racing: PENDING_IMPORT everywhere, objects destroyed on every node, one audit entry", async () => {
    const cs = await Promise.all(nodes.map((n) => alice(n)));
    const p = await cs[0]!.getImportParameters();
    const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const k = await cs[0]!.importKey({
      spec: KeySpec.KEY_SPEC_EC_P256,
      label: "expiring",
      importKeyId: p.importKeyId,
      wrappedKeyMaterial: wrapForImport(Buffer.from(p.publicKeySpki), kp.privateKey.export({ type: "pkcs8", format: "der" }), p.wrappingAlgorithm),
      publicKeySpki: kp.publicKey.export({ type: "spki", format: "der" }),
      validTo: new Date(Date.now() + 2000).toISOString(),
    });
    const before: number[] = [];
    for (const [i, c] of cs.entries()) {
      await eventually(async () => (await code(c.sign({ keyId: k.id, algorithm: ES256, message }))) === "OK", `n${i + 1} signs`);
      before.push(await resident(nodes[i]!));
    }
    for (const [i, c] of cs.entries()) {
      await eventually(async () => (await c.getKey({ keyId: k.id })).state === KeyState.KEY_STATE_PENDING_IMPORT, `n${i + 1} sees PENDING_IMPORT`);
      expect(await code(c.sign({ keyId: k.id, algorithm: ES256, message }))).toBe("FAILED_PRECONDITION");
      await eventually(async () => (await resident(nodes[i]!)) === before[i]! - 2, `n${i + 1} destroyed its objects`);
    }
    let entries = 0;
    for (const n of nodes) {
      const o = await officerClient({ grpc: n.grpc, dataDir: nodes[0]!.dataDir });
      clients.push(o);
      entries += (await o.queryAuditLog({ operation: "KeyMaterialExpired", limit: 1000 })).entries.filter((e) => e.keyId === k.id).length;
    }
    expect(entries).toBe(1);
  });
});
