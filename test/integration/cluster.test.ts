/**
 * A cluster on loopback: real etcd, hsmd daemons as child processes each on its own SoftHSM2 token,
 * joined through the real ceremony, used through the SDK.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createDecipheriv, createPublicKey, randomBytes, verify as verifySignature } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, Role, SigningAlgorithm, wrapForImport } from "../../src/sdk";
import { joinNode, initNode } from "../helpers/cluster";
import { buildDist, runHsmdCommand, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient, userClient } from "../helpers/users";

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

/** Sum of the samples of `name` with label method=`method` in a node's /metrics. */
async function rpcCount(node: DaemonProcess, method: string): Promise<number> {
  const body = await (await fetch(`${node.admin}/metrics`)).text();
  let n = 0;
  for (const m of body.matchAll(/^hsmd_grpc_requests_total\{([^}]*)\} (\S+)$/gm)) if (m[1]!.includes(`method="${method}"`)) n += Number(m[2]);
  return n;
}

describe("import through any node", () => {
  it("12 of 12 GetImportParameters + ImportKey pairs through one SDK client on both endpoints succeed, with one import key, and every key works on every node", async () => {
    await ensureUser(nodes[0]!, "importer");
    const perNode = await Promise.all(nodes.map((n) => userClient({ grpc: n.grpc, dataDir: nodes[0]!.dataDir }, "importer")));
    // The first calls, on both nodes at once: each may make a pair, one record wins, both answer it.
    const first = await Promise.all(perNode.map((c) => c.getImportParameters()));
    expect(Buffer.from(first[1]!.publicKeySpki)).toEqual(Buffer.from(first[0]!.publicKeySpki));
    const both = new HsmClient({ endpoints: nodes.map((n) => n.grpc), defaultDeadlineMs: 20_000 });
    await both.login("importer", USER_PASSWORD);
    const counts = () => Promise.all(nodes.map(async (n) => ({ params: await rpcCount(n, "GetImportParameters"), imports: await rpcCount(n, "ImportKey") })));
    const before = await counts();
    const imported: Array<{ id: string; key: Buffer }> = [];
    const spki = Buffer.from(first[0]!.publicKeySpki);
    for (let i = 0; i < 12; i++) {
      const p = await both.getImportParameters();
      // Every node answers the same, cluster-wide import key.
      expect(Buffer.from(p.publicKeySpki)).toEqual(spki);
      const key = randomBytes(32);
      const k = await both.importKey({
        spec: KeySpec.KEY_SPEC_AES_256,
        label: `byok-${i}`,
        usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT],
        importKeyId: p.importKeyId,
        wrappedKeyMaterial: wrapForImport(Buffer.from(p.publicKeySpki), key, p.wrappingAlgorithm),
      });
      imported.push({ id: k.id, key });
    }
    // Round robin spread the 24 calls over both nodes, so pairs were split between them (the case that failed).
    const after = await counts();
    const answered = after.map((a, i) => ({ params: a.params - before[i]!.params, imports: a.imports - before[i]!.imports }));
    expect(answered.reduce((t, a) => t + a.params, 0)).toBe(12);
    expect(answered.reduce((t, a) => t + a.imports, 0)).toBe(12);
    for (const a of answered) expect(a.params + a.imports).toBeGreaterThan(0);
    expect(answered.some((a, i) => a.imports !== answered[i]!.params)).toBe(true);

    // Each imported key encrypts on each node, and Node's crypto decrypts with the material it was given.
    for (const one of perNode) {
      for (const { id, key } of imported) {
        const plaintext = randomBytes(64);
        const e = await one.encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext });
        const ct = Buffer.from(e.ciphertext);
        const d = createDecipheriv("aes-256-gcm", key, e.iv).setAuthTag(ct.subarray(-16));
        expect(Buffer.concat([d.update(ct.subarray(0, -16)), d.final()])).toEqual(plaintext);
      }
      one.close();
    }
    both.close();
  });
});

describe("hsmd officer unlock on etcd", () => {
  it("unlocks an officer cluster-wide from one stopped node's host, audited there", async () => {
    const pw = "officer2-password";
    await co.createUser({ username: "officer2", role: Role.ROLE_CRYPTO_OFFICER, password: pw });
    const c = new HsmClient({ endpoint: nodes[0]!.grpc, defaultDeadlineMs: 20_000 });
    for (let i = 0; i < 5; i++) await c.login("officer2", `wrong-password-${i}`).catch(() => undefined);
    await expect(c.login("officer2", pw)).rejects.toMatchObject({ codeName: "PERMISSION_DENIED" });

    const n2 = nodes[1]!;
    const unlock = () => runHsmdCommand(n2, ["officer", "unlock", "officer2", "--config", n2.configFile], { HSMD_SO_PIN: n2.token.soPin });
    const running = await unlock();
    expect(running.code).toBe(1);
    expect(running.stderr).toMatch(/hsmd is running on this node: stop it first.*node data directory/);
    n2.kill("SIGTERM");
    await n2.waitExit();
    const ok = await unlock();
    expect(ok.code, ok.stderr).toBe(0);
    const otp = readFileSync(join(n2.dataDir, "officer-officer2-password"), "utf8").trim();

    // The record is the cluster's: the other node takes the one-time password at once (n2 stays
    // stopped: this is the file's last test).
    await expect(c.login("officer2", pw)).rejects.toMatchObject({ codeName: "UNAUTHENTICATED" });
    expect((await c.login("officer2", otp)).mustChangePassword).toBe(true);
    await c.changePassword(otp, "officer2-password-new");
    expect((await c.getUser({ username: "officer2" })).locked).toBe(false);
    c.close();

    const auditFile = join(n2.dataDir, "audit", "audit.log");
    const entries = readFileSync(auditFile, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { operation: string; target?: string; status: string });
    expect(entries.filter((e) => e.operation === "OfficerUnlock").map((e) => [e.target, e.status])).toEqual([["officer2", "OK"]]);
    const verified = await runHsmdCommand(n2, ["audit", "verify", auditFile]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  });
});
