/**
 * Three hsmd daemons on three real etcd members, while etcd members fail: with one member stopped
 * everything works; with two stopped (no quorum) every write is refused with UNAVAILABLE saying the
 * state store has no etcd quorum, while crypto with the keys the nodes hold goes on on every node;
 * with the members back, writes work again and nothing refused earlier was half-written.
 */
import { createPublicKey, randomBytes, randomUUID, verify as verifySignature } from "node:crypto";
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, GrpcStatus, HsmClient, KeySpec, SigningAlgorithm, type Key } from "../../src/sdk";
import { eventually, initNode, joinNode, nodeReadiness, nodeStatus, teardownCluster } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "../helpers/users";

const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
const NO_QUORUM = /^state store unavailable: no etcd quorum reachable \(/;

let etcd: EtcdCluster;
const nodes: DaemonProcess[] = [];
let co: HsmClient;
/** alice on each node alone (no retries: each answer is that node's own) */
const alice: HsmClient[] = [];
const clients: HsmClient[] = [];
let ec: Key;
let aes: Key;
let ecPem: string;

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(3);
  nodes.push(await initNode(etcd, "n1"));
  co = await officerClient(nodes[0]!);
  nodes.push(await joinNode(etcd, "n2", co, nodes[0]!));
  nodes.push(await joinNode(etcd, "n3", co, nodes[0]!));
  await ensureUser({ grpc: nodes[0]!.grpc, dataDir: nodes[0]!.dataDir }, "alice");
  for (const n of nodes) {
    const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 20_000, retry: { maxAttempts: 1 } });
    alice.push(c);
    await c.login("alice", USER_PASSWORD);
  }
  ec = await alice[0]!.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "before-ec" });
  aes = await alice[0]!.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "before-aes" });
  ecPem = (await alice[0]!.getPublicKey({ keyId: ec.id })).pem;
}, 180_000);

afterEach((ctx) => {
  if (ctx.task.result?.state !== "fail") return;
  nodes.forEach((n, i) => process.stderr.write(`---- n${i + 1} stderr (tail) ----\n${n.stderr().slice(-3000)}\n`));
});

afterAll(async () => {
  await teardownCluster({ clients: [co, ...alice, ...clients], daemons: nodes, etcd });
});

/** Index of the member that leads the etcd cluster now. */
async function leaderIndex(): Promise<number> {
  for (let i = 0; i < etcd.members.length; i++) {
    const c = new Etcd3({ hosts: etcd.members[i]!.clientUrl });
    try {
      const st = await c.maintenance.status();
      if (st.leader === st.header.member_id) return i;
    } catch {
      // a stopped member
    } finally {
      c.close();
    }
  }
  throw new Error("no etcd leader");
}

/** Signs and encrypts with `keys` on every node; decrypts each ciphertext on the next node; checks signatures with Node's crypto. */
async function cryptoEverywhere(sign: Array<{ id: string; pem: string }>, enc: string[]): Promise<void> {
  for (let i = 0; i < alice.length; i++) {
    const c = alice[i]!;
    for (const k of sign) {
      const message = Buffer.from(`on n${i + 1} ${randomUUID()}`);
      const { signature } = await c.sign({ keyId: k.id, algorithm: ECDSA, message });
      expect(verifySignature("sha256", message, createPublicKey(k.pem), signature), `signature on n${i + 1}`).toBe(true);
    }
    for (const id of enc) {
      const plaintext = randomBytes(48);
      const e = await c.encrypt({ keyId: id, algorithm: GCM, plaintext });
      const other = alice[(i + 1) % alice.length]!;
      expect(Buffer.from((await other.decrypt({ keyId: id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(plaintext);
    }
  }
}

describe("etcd member failures under three daemons", () => {
  let firstDown = -1;
  let secondDown = -1;
  const madeWithOneDown: Array<{ id: string; pem: string; aes: string }> = [];

  it("one member stopped (the leader): creates and crypto work on every node", async () => {
    firstDown = await leaderIndex();
    await etcd.members[firstDown]!.stop();
    for (let i = 0; i < nodes.length; i++) {
      // A create carries a request id, so the SDK may retry it; it must succeed on each node.
      const c = new HsmClient({ endpoint: nodes[i]!.grpc, defaultDeadlineMs: 30_000 });
      clients.push(c);
      await c.login("alice", USER_PASSWORD);
      const k = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: `one-down-ec-${i}`, requestId: randomUUID() });
      const a = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `one-down-aes-${i}`, requestId: randomUUID() });
      madeWithOneDown.push({ id: k.id, pem: (await c.getPublicKey({ keyId: k.id })).pem, aes: a.id });
    }
    await cryptoEverywhere([{ id: ec.id, pem: ecPem }, ...madeWithOneDown.map((k) => ({ id: k.id, pem: k.pem }))], [aes.id, ...madeWithOneDown.map((k) => k.aes)]);
  });

  it("two members stopped: writes are refused with UNAVAILABLE naming the lost etcd quorum; crypto with existing keys goes on on every node", async () => {
    expect(firstDown).toBeGreaterThanOrEqual(0);
    secondDown = etcd.members.findIndex((_, i) => i !== firstDown);
    await etcd.members[secondDown]!.stop();
    const last = etcd.members.findIndex((_, i) => i !== firstDown && i !== secondDown);
    // The member left knows it has no leader (a leader that lost its quorum steps down), so what
    // the nodes send it now is refused for certain rather than left pending.
    await eventually(
      async () => {
        const c = new Etcd3({ hosts: etcd.members[last]!.clientUrl });
        try {
          return String((await c.maintenance.status()).leader) === "0";
        } finally {
          c.close();
        }
      },
      "the last etcd member has no leader",
      15_000,
    );
    const before = await Promise.all(nodes.map(async (n) => (await nodeStatus(n)).keys));

    // Each node notices, and says so in its status and readiness.
    for (const n of nodes) {
      await eventually(async () => (await nodeStatus(n)).store.reachable === false, "status shows the store unreachable", 15_000);
      const r = await nodeReadiness(n);
      expect(r.status).toBe(503);
      expect(r.body.checks.find((c) => c.name === "store_writable")).toMatchObject({ ok: false });
    }

    // On every node at once: a create, a delete and a login (it writes a session) are refused.
    const refusals = await Promise.all(
      nodes.map(async (n, i) => {
        const fresh = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 30_000, retry: { maxAttempts: 1 } });
        clients.push(fresh);
        const [create, del, login] = await Promise.all([
          alice[i]!.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `no-quorum-${i}` }).then(
            () => undefined,
            (e: unknown) => e,
          ),
          alice[i]!.deleteKey({ keyId: madeWithOneDown[i]!.aes }).then(
            () => undefined,
            (e: unknown) => e,
          ),
          fresh.login("alice", USER_PASSWORD).then(
            () => undefined,
            (e: unknown) => e,
          ),
        ]);
        return { create, del, login };
      }),
    );
    refusals.forEach((r, i) => {
      for (const [what, e] of Object.entries(r)) {
        expect(e, `${what} on n${i + 1}`).toMatchObject({ code: GrpcStatus.UNAVAILABLE });
        expect((e as { details: string }).details, `${what} on n${i + 1}`).toMatch(NO_QUORUM);
      }
    });

    // Crypto with every key the nodes hold still works, on every node.
    await cryptoEverywhere([{ id: ec.id, pem: ecPem }, ...madeWithOneDown.map((k) => ({ id: k.id, pem: k.pem }))], [aes.id, ...madeWithOneDown.map((k) => k.aes)]);
    // Reads are served from each node's mirror.
    for (const c of alice) expect((await c.getKey({ keyId: madeWithOneDown[2]!.id })).label).toBe("one-down-ec-2");
    expect(await Promise.all(nodes.map(async (n) => (await nodeStatus(n)).keys))).toEqual(before);
  });

  it("members restarted: writes work again on every node, and none of the refused writes was applied", async () => {
    expect(secondDown).toBeGreaterThanOrEqual(0);
    await etcd.members[firstDown]!.start();
    await etcd.members[secondDown]!.start();
    const made: Key[] = [];
    for (let i = 0; i < nodes.length; i++) {
      const c = new HsmClient({ endpoint: nodes[i]!.grpc, defaultDeadlineMs: 30_000 });
      clients.push(c);
      await c.login("alice", USER_PASSWORD);
      made.push(await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `after-${i}`, requestId: randomUUID() }));
    }
    // The delete refused without quorum works now.
    await alice[0]!.deleteKey({ keyId: madeWithOneDown[0]!.aes });
    for (const n of nodes) await eventually(async () => (await nodeStatus(n)).store.reachable, "status shows the store reachable again", 15_000);
    for (let i = 0; i < alice.length; i++) {
      const c = alice[i]!;
      await eventually(async () => (await c.listKeys({ labelPrefix: "after-" })).keys.length === 3, `n${i + 1} lists the 3 new keys`, 10_000);
      expect((await c.listKeys({ labelPrefix: "after-" })).keys.map((k) => k.id).sort()).toEqual(made.map((k) => k.id).sort());
      // the refused creates left nothing
      expect((await c.listKeys({ labelPrefix: "no-quorum-" })).keys).toEqual([]);
      await expect(c.getKey({ keyId: madeWithOneDown[0]!.aes })).rejects.toMatchObject({ code: GrpcStatus.NOT_FOUND });
      expect((await c.getKey({ keyId: madeWithOneDown[1]!.aes })).label).toBe("one-down-aes-1");
    }
    await cryptoEverywhere(
      [{ id: ec.id, pem: ecPem }],
      made.map((k) => k.id),
    );
    const counts = await Promise.all(nodes.map(async (n) => (await nodeStatus(n)).keys));
    expect(new Set(counts).size).toBe(1);
  });
});
