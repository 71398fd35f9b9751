/**
 * Catch-up from the applied revision, on a real two-node cluster (real etcd, hsmd daemons as child
 * processes on their own SoftHSM2 tokens): a node stopped while keys are created replays, at its
 * restart, only the records changed since its watermark (its log line and its proof counter say how
 * many) and serves them; once etcd has compacted past its watermark, the restart runs the full
 * check instead (the log names the reason) and every key works; `--full-check` asks for it.
 */
import { randomBytes } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, type HsmClient, KeySpec } from "../../src/sdk";
import { CLUSTER_PREFIX, etcdClient, eventually, initNode, joinNode, teardownCluster } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { officerClient, userClient } from "../helpers/users";

const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
/** For clients made after a member restarted (see FRESH in ../helpers/cluster-replication.ts). */
const FRESH = { channelOptions: { "grpc.use_local_subchannel_pool": 1 } };

let etcd: EtcdCluster;
let n1: DaemonProcess;
let n2: DaemonProcess;
let co: HsmClient;
let a1: HsmClient;
const clients: HsmClient[] = [];
const ids: string[] = [];

/** A node's watermark row in etcd (0 when it has none). */
async function watermark(node: string): Promise<number> {
  const kv = etcdClient(etcd);
  try {
    const v = await kv.get(`${CLUSTER_PREFIX}watermarks/${node}`).string();
    return v ? (JSON.parse(v) as { revision: number }).revision : 0;
  } finally {
    kv.close();
  }
}

/** The revision etcd is at now. */
async function etcdRevision(): Promise<number> {
  const kv = etcdClient(etcd);
  try {
    const res = await kv.get(`${CLUSTER_PREFIX}nodes/n1`).exec();
    return Number(res.header.revision);
  } finally {
    kv.close();
  }
}

/** How many records a node has proven since it started (its /v1/status keyObjects, the materializer's stats). */
async function proofs(n: DaemonProcess): Promise<number> {
  const s = (await (await fetch(`${n.admin}/v1/status`)).json()) as { keyObjects: { proofs: number } };
  return s.keyObjects.proofs;
}

/** The part of a node's stderr written since `from` characters. */
const since = (n: DaemonProcess, from: number) => n.stderr().slice(from);

async function createKeys(count: number, label: string): Promise<string[]> {
  const made: string[] = [];
  for (let i = 0; i < count; i++) made.push((await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `${label}-${i}` })).id);
  ids.push(...made);
  return made;
}

/** Every key encrypts on `n` and decrypts on n1. */
async function allWork(n: DaemonProcess, keyIds: string[]): Promise<void> {
  const c = await userClient({ grpc: n.grpc, dataDir: n1.dataDir }, "alice", FRESH);
  clients.push(c);
  for (const id of keyIds) {
    const pt = randomBytes(24);
    const e = await c.encrypt({ keyId: id, algorithm: GCM, plaintext: pt });
    expect(Buffer.from((await a1.decrypt({ keyId: id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(pt);
  }
}

/** Stops n2 once its watermark has passed every key made so far, and answers that watermark. */
async function stopN2(): Promise<number> {
  const rev = await etcdRevision();
  await eventually(async () => (await watermark("n2")) >= rev, "n2's watermark reaches the keys made so far");
  n2.kill("SIGTERM");
  expect(await n2.waitExit()).toEqual({ code: 0, signal: null });
  return watermark("n2");
}

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1);
  n1 = await initNode(etcd, "n1");
  co = await officerClient(n1);
  n2 = await joinNode(etcd, "n2", co, n1);
  a1 = await userClient(n1, "alice");
  clients.push(a1);
}, 240_000);

afterEach((ctx) => {
  if (ctx.task.result?.state === "fail") for (const n of [n1, n2]) if (n) process.stderr.write(`--- ${n === n1 ? "n1" : "n2"} stderr (tail):\n${n.stderr().slice(-4000)}\n`);
});

afterAll(async () => {
  await teardownCluster({ clients: [co, ...clients], daemons: [n1, n2], etcd });
});

describe("catch-up at start", () => {
  it("a node stopped while 7 keys are created proves only those 7 at restart, and serves them", async () => {
    await createKeys(5, "before");
    const w = await stopN2();
    const fresh = await createKeys(7, "while-down");
    const from = n2.stderr().length;
    await n2.restart();
    const log = since(n2, from);
    expect(log).toMatch(new RegExp(`catch-up: 7 records changed since revision ${w}: 7 proven`));
    expect(log).not.toContain("full check:");
    expect(await proofs(n2)).toBe(7);
    await allWork(n2, fresh);
    await allWork(n2, ids);
  });

  it("once etcd has compacted past its watermark, the restart runs the full check (naming the reason) and every key works", async () => {
    const w = await stopN2();
    await createKeys(3, "compacted");
    const rev = await etcdRevision();
    expect(rev).toBeGreaterThan(w);
    const kv = etcdClient(etcd);
    try {
      await kv.kv.compact({ revision: rev, physical: true });
    } finally {
      kv.close();
    }
    const from = n2.stderr().length;
    await n2.restart();
    const log = since(n2, from);
    expect(log).toContain(`full check: the store has compacted past revision ${w}: ${ids.length} records: ${ids.length} proven`);
    expect(log).not.toContain("catch-up:");
    expect(await proofs(n2)).toBe(ids.length);
    await allWork(n2, ids);
  });

  it("hsmd start --full-check proves every record though the store could tell what changed", async () => {
    const w = await stopN2();
    await createKeys(2, "asked");
    n2.setArgs(["--full-check"]);
    const from = n2.stderr().length;
    try {
      await n2.restart();
    } finally {
      n2.setArgs([]);
    }
    const log = since(n2, from);
    expect(log).toContain(`full check: asked for (--full-check): ${ids.length} records: ${ids.length} proven`);
    expect(await proofs(n2)).toBe(ids.length);
    // Without the flag, the next restart replays only what changed since its watermark again.
    const w2 = await stopN2();
    expect(w2).toBeGreaterThan(w);
    const from2 = n2.stderr().length;
    await n2.restart();
    expect(since(n2, from2)).toContain(`catch-up: 0 records changed since revision ${w2}`);
    await allWork(n2, ids);
  });
});
