/**
 * A cluster on loopback: real etcd, hsmd daemons as child processes each on its own SoftHSM2 token,
 * joined through the real ceremony, used through the SDK.
 */
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, KeySpec, SigningAlgorithm } from "../../src/sdk";
import { joinNode, initNode } from "../helpers/cluster";
import { buildDist, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { officerClient, userClient } from "../helpers/users";

let etcd: EtcdCluster;
const nodes: DaemonProcess[] = [];
let co: HsmClient;

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1);
  nodes.push(await initNode(etcd, "n1"));
  co = await officerClient(nodes[0]!);
  nodes.push(await joinNode(etcd, "n2", co, nodes[0]!));
}, 180_000);

afterAll(async () => {
  co?.close();
  for (const n of nodes) await n.cleanup();
  await etcd?.cleanup();
});

describe("two nodes", () => {
  it("a key created on n1 signs on n2", async () => {
    const a = await userClient(nodes[0]!, "alice");
    const b = await userClient({ grpc: nodes[1]!.grpc, dataDir: nodes[0]!.dataDir }, "alice");
    const key = await a.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "replicated" });
    const message = Buffer.from("cluster");
    const { signature } = await b.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message });
    const { pem } = await a.getPublicKey({ keyId: key.id });
    expect(verifySignature("sha256", message, createPublicKey(pem), signature)).toBe(true);
    const status = await co.getClusterStatus();
    expect(status.nodes.map((n) => n.nodeId).sort()).toEqual(["n1", "n2"]);
    a.close();
    b.close();
  });
});
