/**
 * hsmd cluster members for tests: daemons as child processes (each its own SoftHSM2 token, data
 * directory and fixed loopback ports) on a real etcd cluster, joined through the real ceremony.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { HsmClient } from "../../src/sdk";
import { startDaemonProcess, type DaemonProcess } from "./daemon-process";
import { freePort, type EtcdCluster } from "./etcd";

/** etcd client URLs → the `host:port` list the config takes. */
export const etcdEndpoints = (etcd: EtcdCluster) => etcd.endpoints.map((u) => new URL(u).host);

/** One member's config: fixed ports, so that its address stays the same across restarts. */
export async function nodeConfig(etcd: EtcdCluster, cluster: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const grpc = `127.0.0.1:${await freePort()}`;
  return {
    listen: { grpc, admin: `127.0.0.1:${await freePort()}` },
    cluster: { name: "test", etcd: { endpoints: etcdEndpoints(etcd) }, ...cluster },
  };
}

/** The first member: `hsmd init` creates the cluster (domain key, first officer). */
export async function initNode(etcd: EtcdCluster, nodeId = "n1", cluster: Record<string, unknown> = {}): Promise<DaemonProcess> {
  return startDaemonProcess({ nodeId, command: "init", config: await nodeConfig(etcd, cluster) });
}

/** Starts `hsmd join` and waits until it printed its join request; resolves the process and the fingerprint. */
export async function requestJoin(etcd: EtcdCluster, nodeId: string, cluster: Record<string, unknown> = {}): Promise<{ dp: DaemonProcess; fingerprint: string }> {
  const dp = await startDaemonProcess({ nodeId, command: "join", noWait: true, config: await nodeConfig(etcd, cluster) });
  dp.ready.catch(() => undefined); // awaited by the caller when it expects the join to complete
  for (let i = 0; i < 600; i++) {
    const m = /transport key sha256 ([0-9a-f]{64})/.exec(dp.stdout());
    if (m) return { dp, fingerprint: m[1]! };
    await sleep(50);
  }
  throw new Error(`no join request from ${nodeId}:\n${dp.stderr().slice(-3000)}`);
}

/** Joins a node: request, approval by `officer` on the member `approver` (with its SO PIN), ready. */
export async function joinNode(etcd: EtcdCluster, nodeId: string, officer: HsmClient, approver: DaemonProcess, cluster: Record<string, unknown> = {}): Promise<DaemonProcess> {
  const { dp, fingerprint } = await requestJoin(etcd, nodeId, cluster);
  await officer.approveJoin({ nodeId, transportKeySha256: fingerprint, soPin: approver.token.soPin });
  await dp.ready;
  dp.setCommand("start");
  return dp;
}
