/**
 * Replication acknowledged by watermark, on a real two-node cluster (real etcd, hsmd daemons as child
 * processes on their own SoftHSM2 tokens, joined through the real ceremony) with cluster.minNodes 2:
 * a create answers once the second node has applied it; a new key made while a node is stopped
 * answers UNAVAILABLE naming minNodes until the node is back; GetKey's held_by is the nodes whose
 * watermark passed the key; no per-key coverage rows are written, and those an older hsmd left are
 * removed at start. Store rows are read from etcd itself.
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { CLUSTER_PREFIX, etcdClient, eventually, initNode, joinNode, teardownCluster } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { expectError } from "../helpers/expect-error";
import { officerClient, userClient } from "../helpers/users";

const MIN = { minNodes: 2 };
const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
/** For clients made after a member restarted (see FRESH in ../helpers/cluster-replication.ts). */
const FRESH = { channelOptions: { "grpc.use_local_subchannel_pool": 1 } };

let etcd: EtcdCluster;
let n1: DaemonProcess;
let n2: DaemonProcess;
let co: HsmClient;
const clients: HsmClient[] = [];

/** Every watermark row in etcd: node → revision. */
async function watermarks(): Promise<Map<string, number>> {
  const kv = etcdClient(etcd);
  try {
    const rows = await kv.getAll().prefix(`${CLUSTER_PREFIX}watermarks/`).strings();
    return new Map(Object.entries(rows).map(([k, v]) => [k.slice(`${CLUSTER_PREFIX}watermarks/`.length), (JSON.parse(v) as { revision: number }).revision]));
  } finally {
    kv.close();
  }
}

/** The etcd revision that created a key's record. */
async function createRevision(id: string): Promise<number> {
  const kv = etcdClient(etcd);
  try {
    const res = await kv.get(`${CLUSTER_PREFIX}keys/${id}`).exec();
    return Number(res.kvs[0]!.create_revision);
  } finally {
    kv.close();
  }
}

/** How many rows etcd holds under the cluster prefix + `prefix`. */
async function rows(prefix: string): Promise<number> {
  const kv = etcdClient(etcd);
  try {
    return await kv.getAll().prefix(`${CLUSTER_PREFIX}${prefix}`).count();
  } finally {
    kv.close();
  }
}

async function user(n: DaemonProcess, opts: Record<string, unknown> = {}): Promise<HsmClient> {
  const c = await userClient({ grpc: n.grpc, dataDir: n1.dataDir }, "alice", { retry: { maxAttempts: 1 }, ...opts });
  clients.push(c);
  return c;
}

async function signs(c: HsmClient, id: string): Promise<boolean> {
  const message = Buffer.from(`watermark ${id}`);
  const { signature } = await c.sign({ keyId: id, algorithm: ECDSA, message });
  const { pem } = await c.getPublicKey({ keyId: id });
  return verifySignature("sha256", message, createPublicKey(pem), signature);
}

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1);
  n1 = await initNode(etcd, "n1", MIN);
  co = await officerClient(n1);
  n2 = await joinNode(etcd, "n2", co, n1, MIN);
}, 240_000);

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") for (const n of [n1, n2]) if (n) process.stderr.write(`--- ${n === n1 ? "n1" : "n2"} stderr (tail):\n${n.stderr().slice(-4000)}\n`);
});

afterAll(async () => {
  await teardownCluster({ clients: [co, ...clients], daemons: [n1, n2], etcd });
});

describe("watermarks with cluster.minNodes 2", () => {
  let first: string;

  it("a create answers once the second node has applied it: both watermarks passed its revision, held_by names both, no coverage rows", async () => {
    const a1 = await user(n1);
    const key = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "wm-1" });
    first = key.id;
    // Read the moment the create answered: both nodes had applied it.
    const [marks, created] = [await watermarks(), await createRevision(key.id)];
    expect(marks.get("n1")).toBeGreaterThanOrEqual(created);
    expect(marks.get("n2")).toBeGreaterThanOrEqual(created);
    expect(await signs(a1, key.id)).toBe(true);
    expect(await signs(await user(n2), key.id)).toBe(true);
    expect((await a1.getKey({ keyId: key.id })).heldBy).toEqual(["n1", "n2"]);
    // One row per node, none per key.
    expect([...marks.keys()].sort()).toEqual(["n1", "n2"]);
    expect(await rows("coverage/")).toBe(0);
  });

  it("with n2 stopped a new key answers UNAVAILABLE naming minNodes and drops n2 from held_by; it works once n2 is back, which removes an older hsmd's coverage rows", async () => {
    n2.kill("SIGTERM");
    expect(await n2.waitExit()).toEqual({ code: 0, signal: null });
    const a1 = await user(n1);
    // The create is durable (committed); it answers after waiting for n2 (bounded), and says nothing is lost.
    const key = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "wm-2" });
    await expectError(a1.sign({ keyId: key.id, algorithm: ECDSA, message: Buffer.from("x") }), "UNAVAILABLE", "cluster.minNodes = 2", "applied by 1 of the 2 nodes");
    expect((await a1.getKey({ keyId: key.id })).heldBy).toEqual(["n1"]);
    // The key made before n2 stopped: n2's watermark passed it, so it still counts.
    expect((await a1.getKey({ keyId: first })).heldBy).toEqual(["n1", "n2"]);
    expect(await signs(a1, first)).toBe(true);

    // Rows an older hsmd wrote (one per key per node), for the restart to migrate away.
    const kv = etcdClient(etcd);
    try {
      for (const id of [first, key.id]) for (const n of ["n1", "n2"]) await kv.put(`${CLUSTER_PREFIX}coverage/${id}/${n}`).value(new Date().toISOString());
    } finally {
      kv.close();
    }
    expect(await rows("coverage/")).toBe(4);

    await n2.restart();
    expect(await rows("coverage/")).toBe(0);
    expect(n2.stderr()).toContain("removed 4 per-key coverage rows");
    const created = await createRevision(key.id);
    await eventually(async () => ((await watermarks()).get("n2") ?? 0) >= created, "n2's watermark passes the new key");
    // n1 sees n2's row through its watch of the watermarks: the key is usable on both nodes.
    await eventually(async () => (await a1.getKey({ keyId: key.id })).heldBy.length === 2, "n1's held_by names n2");
    expect((await a1.getKey({ keyId: key.id })).heldBy).toEqual(["n1", "n2"]);
    expect(await signs(a1, key.id)).toBe(true);
    expect(await signs(await user(n2, FRESH), key.id)).toBe(true);
    expect(await rows("coverage/")).toBe(0);
  });
});
