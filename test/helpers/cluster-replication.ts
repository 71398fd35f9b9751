/**
 * The three-node cluster of cluster-replication.test.ts (three etcd members, hsmd daemons joined
 * through the real ceremony) and what the tests read from it: clients, watermarks, /metrics and store counts.
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { afterAll, afterEach, beforeAll } from "vitest";
import { EncryptionAlgorithm, HsmClient, SigningAlgorithm, type HsmClientOptions, type Key } from "../../src/sdk";
import { CLUSTER_PREFIX, etcdClient, eventually, initNode, joinNode, stderrTailsOnFail, teardownCluster } from "./cluster";
import { buildDist, type DaemonProcess } from "./daemon-process";
import { startEtcdCluster, type EtcdCluster } from "./etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "./users";

/** Every member runs with this (lockout is counted in the store, the threshold is each node's config). */
export const MAX_FAILED_LOGINS = 3;
export const EXTRA = { auth: { maxFailedLogins: MAX_FAILED_LOGINS } };

/** The cluster and an officer's client (set in beforeAll, see useReplicationCluster). */
export let etcd: EtcdCluster;
export let n1: DaemonProcess;
export let n2: DaemonProcess;
export let n3: DaemonProcess;
export let co: HsmClient;
export const clients: HsmClient[] = [];

/** A member as the user helpers reach it: its gRPC address, and the init node's data dir (one-time password). */
export const reach = (n: DaemonProcess) => ({ grpc: n.grpc, dataDir: n1.dataDir });
/**
 * For clients made after a member restarted: grpc-js shares subchannels between channels to one
 * address, so a new client would otherwise inherit the reconnect backoff of the old clients'
 * subchannel to the killed process and fail fast with UNAVAILABLE until that backoff ends.
 */
export const FRESH = { channelOptions: { "grpc.use_local_subchannel_pool": 1 } };

/** A client of the given members, logged in as `user`. */
export async function client(nodes: DaemonProcess[], user = "alice", opts: Partial<HsmClientOptions> = {}): Promise<HsmClient> {
  const c = new HsmClient({ endpoints: nodes.map((n) => n.grpc), defaultDeadlineMs: 20_000, ...opts });
  clients.push(c);
  await c.login(user, USER_PASSWORD);
  return c;
}

/** The algorithms the tests use. */
export const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
export const PSS = SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256;
export const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;

/** Whether Node's crypto accepts `signature` over `message` under the PEM public key. */
export function verifiesEcdsa(pem: string, message: Buffer, signature: Buffer): boolean {
  return verifySignature("sha256", message, createPublicKey(pem), signature);
}

/** Every node's watermark row under the cluster prefix (node id → revision), read from etcd itself. */
export async function watermarks(): Promise<Map<string, number>> {
  const kv = etcdClient(etcd);
  try {
    const rows = await kv.getAll().prefix(`${CLUSTER_PREFIX}watermarks/`).strings();
    return new Map(Object.entries(rows).map(([k, v]) => [k.slice(`${CLUSTER_PREFIX}watermarks/`.length), (JSON.parse(v) as { revision: number }).revision]));
  } finally {
    kv.close();
  }
}

/**
 * Which nodes have applied each key's create (key id → nodes whose watermark passed the revision
 * that created its record), from etcd itself: what GetKey's held_by derives from.
 */
export async function coverage(ids: string[]): Promise<Map<string, Set<string>>> {
  const marks = await watermarks();
  const kv = etcdClient(etcd);
  try {
    const out = new Map<string, Set<string>>();
    for (const id of ids) {
      const res = await kv.get(`${CLUSTER_PREFIX}keys/${id}`).exec();
      const created = Number(res.kvs[0]?.create_revision ?? Number.POSITIVE_INFINITY);
      out.set(id, new Set([...marks].filter(([, w]) => w >= created).map(([n]) => n)));
    }
    return out;
  } finally {
    kv.close();
  }
}

/**
 * A client of one member that tries each call once (no retry, no failover): the lockout tests count
 * every failed login on the node it was sent to.
 */
export function singleTryClient(n: DaemonProcess): HsmClient {
  const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 20_000, retry: { maxAttempts: 1 } });
  clients.push(c);
  return c;
}

/** How many records the store holds under the cluster prefix + `prefix` (e.g. "keys/"), read from etcd itself. */
export async function storeCount(prefix: string): Promise<number> {
  const kv = etcdClient(etcd);
  try {
    return await kv.getAll().prefix(`${CLUSTER_PREFIX}${prefix}`).count();
  } finally {
    kv.close();
  }
}

/**
 * The coverage once every one of `ids` has been applied by all three nodes (within 20 s); otherwise fails with
 * `what` and how many of them each node lacks, so a failure says which node fell behind.
 */
export async function coveredByAll(ids: string[], what: string): Promise<Map<string, Set<string>>> {
  return eventually(
    async () => {
      const c = await coverage(ids);
      return ids.every((id) => c.get(id)?.size === 3) ? c : undefined;
    },
    what,
    20_000,
  ).catch(async (e: unknown) => {
    const c = await coverage(ids);
    const lacking = ids.filter((id) => !c.get(id)?.has("n3"));
    throw new Error(
      `${(e as Error).message}; ${lacking.length} of ${ids.length} keys not applied by n3 (its watermark), ${ids.filter((id) => !c.get(id)?.has("n1")).length} none for n1, ${ids.filter((id) => !c.get(id)?.has("n2")).length} none for n2`,
    );
  });
}

/** How many calls of `method` (e.g. "Sign") a member answered OK, from its /metrics. */
export async function okCalls(n: DaemonProcess, method: string): Promise<number> {
  const text = await (await fetch(`${n.admin}/metrics`)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    const m = /^hsmd_grpc_requests_total\{(.*)\} (\d+)$/.exec(line);
    if (m && new RegExp(`method="[^"]*\\b${method}"`).test(m[1]!) && m[1]!.includes('code="OK"')) total += Number(m[2]);
  }
  return total;
}

/** Every key whose label starts with `labelPrefix`, every page. */
export async function listAll(c: HsmClient, labelPrefix: string): Promise<Key[]> {
  const out: Key[] = [];
  for await (const k of c.listAllKeys({ labelPrefix, pageSize: 500 })) out.push(k);
  return out;
}

/**
 * Starts the cluster (n1 initialized, n2 and n3 joined, alice a crypto user) before the calling file's
 * tests, prints the members' stderr after a failed test, and tears everything down after them.
 */
export function useReplicationCluster(): void {
  beforeAll(async () => {
    buildDist();
    etcd = await startEtcdCluster(3);
    n1 = await initNode(etcd, "n1", {}, EXTRA);
    co = await officerClient(n1);
    n2 = await joinNode(etcd, "n2", co, n1, {}, EXTRA);
    n3 = await joinNode(etcd, "n3", co, n1, {}, EXTRA);
    await ensureUser(reach(n1), "alice");
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
}
