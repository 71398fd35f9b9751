/**
 * Revocation on another node ends a crypto stream: a two-node cluster (real etcd, hsmd child
 * processes joined through the real ceremony). Streams open on n2 with sessions made on n1; a logout
 * and a lock made through n1 end them with UNAUTHENTICATED (the store is the truth: n2 re-checks the
 * session against its copy of the store, which follows etcd). Delays are printed; the 10 s bound
 * only guards against a stream that never ends (the design bound is grpc.streamAuthRecheckMs plus
 * the store's watch delay; this machine is shared and loaded).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { CryptoServiceClient } from "../../src/gen/hsm/v1/crypto";
import { HsmClient } from "../../src/sdk";
import { initNode, joinNode, loginToken, teardownCluster } from "../helpers/cluster";
import { TestStream, cryptoClient, outcome } from "../helpers/crypto-stream";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "../helpers/users";

const GENEROUS_MS = 10_000;
let etcd: EtcdCluster;
const nodes: DaemonProcess[] = [];
let co: HsmClient;
let onN2: CryptoServiceClient;

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1);
  nodes.push(await initNode(etcd, "n1"));
  co = await officerClient(nodes[0]!);
  nodes.push(await joinNode(etcd, "n2", co, nodes[0]!));
  onN2 = cryptoClient(nodes[1]!.grpc);
}, 180_000);

afterAll(async () => {
  await teardownCluster({ clients: [co, onN2], daemons: nodes, etcd });
});

async function ends(s: TestStream, what: string, since: number, details: RegExp): Promise<void> {
  const end = await Promise.race([s.ended, new Promise<undefined>((r) => setTimeout(r, GENEROUS_MS))]);
  expect(end, `the stream on n2 did not end within ${GENEROUS_MS} ms of the ${what} on n1`).toBeDefined();
  console.log(`crypto stream on n2 ended ${Date.now() - since} ms after the ${what} on n1: ${end!.codeName} "${end!.details}"`);
  expect(end!.codeName).toBe("UNAUTHENTICATED");
  expect(end!.details).toMatch(details);
}

describe("a session ended on n1 ends its streams on n2", () => {
  it("a logout and a lock through n1", async () => {
    for (const u of ["alice", "bob"]) await ensureUser(nodes[0]!, u);
    const aliceToken = await loginToken(nodes[0]!.grpc, "alice", USER_PASSWORD);
    const bobToken = await loginToken(nodes[0]!.grpc, "bob", USER_PASSWORD);
    const a = new TestStream(onN2, aliceToken);
    const b = new TestStream(onN2, bobToken);
    for (const s of [a, b]) expect(outcome(await s.request(1, { $case: "generateRandom", value: { length: 8 } })).code).toBe("OK");

    const n1 = new HsmClient({ endpoint: nodes[0]!.grpc });
    n1.useToken(aliceToken);
    await n1.logout();
    n1.close();
    await ends(a, "logout", Date.now(), /invalid session token/);

    await co.lockUser({ username: "bob" });
    await ends(b, "lock", Date.now(), /session revoked/);
  });
});
