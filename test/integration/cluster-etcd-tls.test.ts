/**
 * hsmd's cluster store over etcd with mutual TLS: a real etcd member serving https that requires
 * client certificates (made by scripts/dev-ca.sh with the openssl CLI), the etcd store and a real
 * daemon configured with `cluster.etcd.tls`. Without the client certificate, or trusting another CA,
 * nothing connects.
 */
import { execFileSync } from "node:child_process";
import { verify as nodeVerify, createPublicKey } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HsmClient, KeySpec, KeyUsage, SigningAlgorithm } from "../../src/sdk";
import { openEtcdStore } from "../../src/store/etcd";
import { startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { CLUSTER_PREFIX, etcdEndpoints, initNode, nodeConfig, teardownCluster } from "../helpers/cluster";
import { startEtcdCluster, type EtcdCluster, type EtcdTlsFiles } from "../helpers/etcd";
import { userClient } from "../helpers/users";

const REPO = join(__dirname, "../..");
let dir: string;
let tls: EtcdTlsFiles;
let otherCa: string;
let etcd: EtcdCluster;
let n1: DaemonProcess | undefined;
let client: HsmClient | undefined;

function devCa(into: string): void {
  execFileSync("bash", [join(REPO, "scripts/dev-ca.sh"), into], { stdio: "pipe" });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-etcd-tls-"));
  devCa(join(dir, "pki"));
  devCa(join(dir, "other")); // a second, unrelated CA
  const f = (n: string) => join(dir, "pki", n);
  tls = { ca: f("ca.pem"), serverCert: f("server.pem"), serverKey: f("server.key"), clientCert: f("client.pem"), clientKey: f("client.key") };
  otherCa = join(dir, "other", "ca.pem");
  etcd = await startEtcdCluster(1, { tls });
});

afterAll(async () => {
  await teardownCluster({ clients: [client], daemons: [n1], etcd });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("etcd over mutual TLS", () => {
  it("the store writes and reads with the client certificate; without it, or trusting another CA, it cannot open", async () => {
    expect(etcd.endpoints[0]).toMatch(/^https:\/\//);
    const prefix = `hsmd/tls-${Date.now().toString(36)}/`;
    const good = { ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey) };
    const s = await openEtcdStore({ endpoints: etcd.endpoints, prefix, tls: good, log: () => undefined });
    try {
      await s.put(`${prefix}k`, Buffer.from("v"));
      expect((await s.get(`${prefix}k`))?.value.toString()).toBe("v");
    } finally {
      await s.close();
    }

    const attempts: Array<[string, Parameters<typeof openEtcdStore>[0]["tls"]]> = [
      ["no client certificate", { ca: good.ca }],
      ["another CA", { ca: readFileSync(otherCa), cert: good.cert, key: good.key }],
    ];
    for (const [what, t] of attempts) {
      const err = await openEtcdStore({ endpoints: etcd.endpoints, prefix, tls: t, dialTimeoutMs: 3000, log: () => undefined }).then(
        async (st) => {
          await st.close();
          return undefined;
        },
        (e: unknown) => e as { code?: string; message?: string },
      );
      expect(err, `${what}: the store opened`).toBeDefined();
      expect(err!.code, what).toBe("UNAVAILABLE");
    }
  });

  it("a daemon with cluster.etcd.tls initializes, serves, and its records are in etcd; a config without the client certificate does not start", async () => {
    n1 = await initNode(etcd, "n1", { etcd: { endpoints: etcdEndpoints(etcd), tls: { ca: tls.ca, cert: tls.clientCert, key: tls.clientKey } } });
    client = await userClient(n1);
    const k = await client.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, usages: [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY], label: "over-tls" });
    const msg = Buffer.from("signed with its record in etcd over TLS");
    const sig = await client.sign({ keyId: k.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
    const pub = createPublicKey({ key: Buffer.from((await client.getPublicKey({ keyId: k.id })).spkiDer), format: "der", type: "spki" });
    expect(nodeVerify("sha256", msg, pub, Buffer.from(sig.signature))).toBe(true);

    // The key's record, read straight from etcd with the etcd3 client over the same mutual TLS.
    const raw = new Etcd3({
      hosts: etcd.endpoints,
      credentials: { rootCertificate: readFileSync(tls.ca), certChain: readFileSync(tls.clientCert), privateKey: readFileSync(tls.clientKey) },
    });
    try {
      const keys = await raw.getAll().prefix(CLUSTER_PREFIX).keys();
      expect(keys.some((key) => key.includes(k.id))).toBe(true);
    } finally {
      raw.close();
    }

    // The same cluster config without the client certificate: etcd refuses it, the daemon says why and exits.
    const bad = await startDaemonProcess({
      nodeId: "n2",
      command: "init",
      noWait: true,
      config: await nodeConfig(etcd, { etcd: { endpoints: etcdEndpoints(etcd), tls: { ca: tls.ca } } }),
    });
    try {
      bad.ready.catch(() => undefined);
      const exit = await bad.waitExit();
      expect(exit.code).not.toBe(0);
      console.log(`[etcd-tls] without a client certificate: exit ${exit.code}; ${(bad.stderr() + bad.stdout()).trim().split("\n").slice(-3).join(" / ")}`);
      expect(bad.stderr()).toMatch(/cannot start: state store unavailable: no etcd quorum reachable .*bad certificate/);
    } finally {
      await bad.cleanup();
    }
  });
});
