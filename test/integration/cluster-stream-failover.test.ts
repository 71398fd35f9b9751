import { createPublicKey, randomBytes, verify } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, expect, it } from "vitest";
import { HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { eventually, initNode, joinNode, teardownCluster } from "../helpers/cluster";
import { okCalls } from "../helpers/cluster-replication";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "../helpers/users";

// kill -9 of one of three daemons (child processes on a real etcd), then a graceful stop of a second,
// while an SDK client with the three endpoints signs over its crypto streams: the operations in
// flight on the dead node's stream fail over to the others within their deadlines, so no call fails
// and calls keep completing.

const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
/** Concurrent sign loops of the client. */
const LOOPS = 16;

let etcd: EtcdCluster;
const nodes: DaemonProcess[] = [];
const clients: HsmClient[] = [];

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1); // the store's own failures are cluster-etcd-failures.test.ts's
  nodes.push(await initNode(etcd, "n1"));
  const co = await officerClient(nodes[0]!);
  clients.push(co);
  nodes.push(await joinNode(etcd, "n2", co, nodes[0]!));
  nodes.push(await joinNode(etcd, "n3", co, nodes[0]!));
  await ensureUser({ grpc: nodes[0]!.grpc, dataDir: nodes[0]!.dataDir }, "alice");
}, 180_000);

afterEach((ctx) => {
  if (ctx.task.result?.state !== "fail") return;
  for (const n of nodes) process.stderr.write(`---- ${n.grpc} stderr (tail) ----\n${n.stderr().slice(-3000)}\n`);
});

afterAll(async () => {
  await teardownCluster({ clients, daemons: [...nodes].reverse(), etcd });
});

it("loses no call when one of three nodes is killed, and then another stopped, under stream load", async () => {
  const single = (n: DaemonProcess) => {
    const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 20_000, cryptoStream: false, retry: { maxAttempts: 1 } });
    clients.push(c);
    return c;
  };
  const owner = single(nodes[0]!);
  await owner.login("alice", USER_PASSWORD);
  const key = await owner.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "failover" });
  const publicKey = createPublicKey((await owner.getPublicKey({ keyId: key.id })).pem);
  // Every node has materialized the key before the load starts.
  for (const n of nodes) {
    const c = single(n);
    c.useToken(owner.exportSession()!.token);
    await eventually(async () => (await c.sign({ keyId: key.id, algorithm: ECDSA, message: Buffer.from("ready") })).signature.length > 0, `${n.grpc} signs with the key`, 20_000);
  }

  const hsm = new HsmClient({ endpoints: nodes.map((n) => n.grpc), defaultDeadlineMs: 20_000 });
  clients.push(hsm);
  await hsm.login("alice", USER_PASSWORD);

  let stop = false;
  /** 0 before the kill, 1 after it, 2 after the graceful stop of a second node. */
  let phase = 0;
  const failures: string[] = [];
  let bad = 0;
  const completed = [new Array<number>(LOOPS).fill(0), new Array<number>(LOOPS).fill(0), new Array<number>(LOOPS).fill(0)];
  const loop = async (i: number): Promise<number> => {
    let done = 0;
    while (!stop) {
      const message = randomBytes(32);
      try {
        const { signature } = await hsm.sign({ keyId: key.id, algorithm: ECDSA, message });
        if (!verify("sha256", message, publicKey, signature)) bad += 1;
        done += 1;
        completed[phase]![i]! += 1;
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
    return done;
  };
  const loops = Array.from({ length: LOOPS }, (_, i) => loop(i));

  const [, stopped, killed] = nodes as [DaemonProcess, DaemonProcess, DaemonProcess];
  await eventually(async () => (await okCalls(killed, "Sign")) > 50, "the node to kill serves part of the load", 20_000, 50);
  await sleep(1_000);
  killed.kill("SIGKILL");
  phase = 1;
  await killed.waitExit();
  await sleep(3_000);
  const retriesAfterKill = hsm.stats.retries;
  // A graceful stop too: the stopping daemon ends its streams (UNAVAILABLE), and their operations move on.
  await eventually(async () => (await okCalls(stopped, "Sign")) > 50, "the node to stop serves part of the load", 20_000, 50);
  stopped.kill("SIGTERM");
  phase = 2;
  await stopped.waitExit();
  await sleep(2_000);
  stop = true;
  const totals = await Promise.all(loops);

  expect(failures).toEqual([]);
  expect(bad).toBe(0);
  // Every loop kept completing calls after the kill, and after the stop.
  expect(
    completed[1]!.every((n) => n > 0),
    `calls after the kill per loop: ${completed[1]!.join(", ")}`,
  ).toBe(true);
  expect(
    completed[2]!.every((n) => n > 0),
    `calls after the stop per loop: ${completed[2]!.join(", ")}`,
  ).toBe(true);
  expect(hsm.stats.failures).toBe(0);
  // Operations in flight on the dead node's stream were sent again elsewhere.
  expect(retriesAfterKill).toBeGreaterThan(0);
  expect(hsm.streamStats.fallbacks).toBe(0);
  expect(hsm.streamStats.answered).toBe(totals.reduce((a, b) => a + b, 0));
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  process.stdout.write(
    `cluster-stream-failover: ${hsm.streamStats.answered} signs (${sum(completed[0]!)} before the kill, ${sum(completed[1]!)} after it, ${sum(completed[2]!)} after the stop), ${retriesAfterKill} re-sent at the kill, ${hsm.stats.retries - retriesAfterKill} at the stop\n`,
  );
}, 120_000);
