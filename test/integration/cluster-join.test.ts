/**
 * The join ceremony and removal on a real etcd and real daemons: an approved join works; a join that
 * is not approved never serves, a rejected or expired one exits with nothing; a forged request (its
 * transport key replaced in etcd) and an approval with the wrong fingerprint or SO PIN are refused
 * with PERMISSION_DENIED and hand out nothing; a removed node serves nothing and its token no longer
 * holds the domain key.
 */
import { createHash, createPublicKey, generateKeyPairSync, randomBytes, verify as verifySignature } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { GrpcStatus, HsmClient, JoinStatus, KeySpec, SigningAlgorithm } from "../../src/sdk";
import {
  CLUSTER_PREFIX,
  configuredListen,
  etcdClient,
  eventually,
  grpcHealth,
  initNode,
  joinNode,
  nodeConfig,
  nodeReadiness,
  nodeStatus,
  portAcceptsConnections,
  requestJoin,
  teardownCluster,
  tokenKeyAttributes,
  tokenObjects,
} from "../helpers/cluster";
import { buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { startEtcdCluster, type EtcdCluster } from "../helpers/etcd";
import { USER_PASSWORD, ensureUser, officerClient } from "../helpers/users";

const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;

let etcd: EtcdCluster;
let n1: DaemonProcess;
let co: HsmClient;
let domainKeyId: string;
/** the node the first test joins and the last one removes */
let n2: DaemonProcess;
const daemons: DaemonProcess[] = [];
const clients: HsmClient[] = [];
/** A join request made in beforeAll with the shortest TTL, so that it expires while the other tests run. */
let expiring: { dp: DaemonProcess; fingerprint: string };

beforeAll(async () => {
  buildDist();
  etcd = await startEtcdCluster(1);
  n1 = await initNode(etcd, "n1");
  daemons.push(n1);
  co = await officerClient(n1);
  domainKeyId = (await nodeStatus(n1)).domainKeyId;
  await ensureUser({ grpc: n1.grpc, dataDir: n1.dataDir }, "alice");
  expiring = await requestJoin(etcd, "n-expiring", { joinTtlSeconds: 10 });
  daemons.push(expiring.dp);
}, 180_000);

afterEach((ctx) => {
  if (ctx.task.result?.state !== "fail") return;
  for (const d of daemons) process.stderr.write(`---- ${d.configFile} stderr (tail) ----\n${d.stderr().slice(-3000)}\n`);
});

afterAll(async () => {
  await teardownCluster({ clients: [co, ...clients], daemons, etcd });
});

/** The raw join record in etcd. */
async function joinRecord(nodeId: string): Promise<Record<string, unknown> | undefined> {
  const kv = etcdClient(etcd);
  try {
    const v = await kv.get(`${CLUSTER_PREFIX}joins/${nodeId}`).string();
    return v === null ? undefined : (JSON.parse(v) as Record<string, unknown>);
  } finally {
    kv.close();
  }
}

async function putJoinRecord(nodeId: string, rec: Record<string, unknown>): Promise<void> {
  const kv = etcdClient(etcd);
  try {
    await kv.put(`${CLUSTER_PREFIX}joins/${nodeId}`).value(JSON.stringify(rec));
  } finally {
    kv.close();
  }
}

/** "running" while the process has not exited. */
async function runState(dp: DaemonProcess): Promise<"running" | "exited"> {
  return Promise.race([dp.waitExit().then(() => "exited" as const), sleep(50).then(() => "running" as const)]);
}

/** A joiner that got nothing: still waiting, serving nothing, no domain key in its token. */
async function expectWaitingWithNothing(dp: DaemonProcess): Promise<void> {
  expect(await runState(dp)).toBe("running");
  expect(dp.stdout()).not.toContain("hsmd ready");
  const listen = configuredListen(dp);
  expect(await portAcceptsConnections(listen.grpc)).toBe(false);
  expect(await portAcceptsConnections(listen.admin)).toBe(false);
  expect(tokenKeyAttributes(dp.token).filter((o) => o.class === "secret")).toEqual([]);
}

/** n1's token holds no SO-trusted object (a refused approval must not leave one behind). */
function expectNoTrustedObjects(): void {
  expect(tokenKeyAttributes(n1.token).filter((o) => o.trusted === true)).toEqual([]);
}

/** A P-256 key alice creates on n1 signs on `node`; Node's crypto verifies the signature. */
async function expectSignsWithKeyFromN1(node: DaemonProcess, label: string): Promise<void> {
  const a1 = new HsmClient({ endpoint: n1.grpc, defaultDeadlineMs: 20_000 });
  const other = new HsmClient({ endpoint: node.grpc, defaultDeadlineMs: 20_000 });
  clients.push(a1, other);
  await a1.login("alice", USER_PASSWORD);
  await other.login("alice", USER_PASSWORD);
  const key = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label });
  const message = Buffer.from(label);
  const { signature } = await other.sign({ keyId: key.id, algorithm: ECDSA, message });
  expect(verifySignature("sha256", message, createPublicKey((await a1.getPublicKey({ keyId: key.id })).pem), signature)).toBe(true);
}

describe("join", () => {
  it("an approved join works: the node unwraps the domain key, serves the cluster's keys, and the record keeps no wrapped copy", async () => {
    n2 = await joinNode(etcd, "n2", co, n1);
    daemons.push(n2);
    await expectSignsWithKeyFromN1(n2, "joined");

    const j = (await co.listJoinRequests()).requests.find((r) => r.nodeId === "n2");
    expect(j).toMatchObject({ status: JoinStatus.JOIN_STATUS_COMPLETED, approvedBy: "admin", approvedOn: "n1" });
    const raw = await joinRecord("n2");
    expect(raw).toMatchObject({ status: "completed" });
    expect(raw!.wrappedDomainKey).toBeUndefined();
    expect((await co.getClusterStatus()).nodes.map((n) => n.nodeId).sort()).toEqual(["n1", "n2"]);
    expect(tokenKeyAttributes(n2.token).find((o) => o.id === domainKeyId)).toMatchObject({ sensitive: true, wrapWithTrusted: true });
    expectNoTrustedObjects();
  });

  it("hsmctl cluster join on the joining host does what hsmd join does: prints the fingerprint, serves once approved; SIGTERM stops it cleanly", async () => {
    const dp = await startDaemonProcess({ nodeId: "n-ctl", command: "join", noWait: true, viaHsmctl: true, config: await nodeConfig(etcd) });
    daemons.push(dp);
    try {
      await joinThroughHsmctl(dp);
    } finally {
      // The later tests count the members: n-ctl goes, whatever happened here.
      await co.removeNode({ nodeId: "n-ctl" }).catch(() => undefined);
    }
  });

  async function joinThroughHsmctl(dp: DaemonProcess): Promise<void> {
    dp.ready.catch(() => undefined);
    const fingerprint = await eventually(() => /transport key sha256 ([0-9a-f]{64})/.exec(dp.stdout())?.[1], "hsmctl cluster join printed the fingerprint");
    expect(await portAcceptsConnections(configuredListen(dp).grpc)).toBe(false); // nothing served before the approval
    await co.approveJoin({ nodeId: "n-ctl", transportKeySha256: fingerprint, soPin: n1.token.soPin });
    await dp.ready;

    await expectSignsWithKeyFromN1(dp, "joined-by-hsmctl");
    expect(tokenKeyAttributes(dp.token).find((o) => o.id === domainKeyId)).toMatchObject({ sensitive: true, wrapWithTrusted: true });

    dp.kill("SIGTERM"); // to hsmctl, which passes it on to hsmd
    expect(await dp.waitExit()).toEqual({ code: 0, signal: null });
    expect(await portAcceptsConnections(dp.grpc)).toBe(false);
  }

  it("hsmctl cluster join --output json: the request as a JSON event; rejected, it exits 1 with hsmd's reason", async () => {
    const dp = await startDaemonProcess({ nodeId: "n-ctl-json", command: "join", noWait: true, viaHsmctl: ["--output", "json"], config: await nodeConfig(etcd) });
    daemons.push(dp);
    dp.ready.catch(() => undefined);
    const event = await eventually(() => {
      const line = dp
        .stdout()
        .split("\n")
        .find((l) => l.startsWith("{"));
      return line ? (JSON.parse(line) as Record<string, string>) : undefined;
    }, "hsmctl printed the join-request event");
    expect(event).toMatchObject({ event: "join-request", nodeId: "n-ctl-json" });
    expect(event.fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(Date.parse(event.expiresAt!)).toBeGreaterThan(Date.now());
    expect((await co.listJoinRequests()).requests.find((r) => r.nodeId === "n-ctl-json")?.transportKeySha256).toBe(event.fingerprint);
    await co.rejectJoin({ nodeId: "n-ctl-json" });
    expect((await dp.waitExit()).code).toBe(1);
    expect(dp.stderr()).toMatch(/rejected/);
  });

  it("an unapproved join never serves; rejected, it exits with nothing", async () => {
    const { dp, fingerprint } = await requestJoin(etcd, "n-waiting");
    daemons.push(dp);
    const j = (await co.listJoinRequests()).requests.find((r) => r.nodeId === "n-waiting");
    expect(j).toMatchObject({ status: JoinStatus.JOIN_STATUS_PENDING, transportKeySha256: fingerprint });
    await sleep(2000); // the request stays unanswered for a while
    await expectWaitingWithNothing(dp);
    expect((await co.getClusterStatus()).nodes.map((n) => n.nodeId)).not.toContain("n-waiting");

    expect(await co.rejectJoin({ nodeId: "n-waiting" })).toMatchObject({ status: JoinStatus.JOIN_STATUS_REJECTED, rejectedBy: "admin" });
    expect(await dp.waitExit()).toEqual({ code: 1, signal: null });
    expect(dp.stderr()).toMatch(/cannot start: the join of n-waiting was rejected by admin/);
    expect(dp.stdout()).not.toContain("hsmd ready");
    expect(tokenKeyAttributes(dp.token).filter((o) => o.class === "secret")).toEqual([]);
    expect(await joinRecord("n-waiting")).not.toHaveProperty("wrappedDomainKey");
    // A rejected request cannot be approved afterwards.
    await expect(co.approveJoin({ nodeId: "n-waiting", transportKeySha256: fingerprint, soPin: n1.token.soPin })).rejects.toMatchObject({
      code: GrpcStatus.FAILED_PRECONDITION,
    });
  });

  it("a forged request (transport key replaced in etcd) or an approval with the wrong fingerprint is refused with PERMISSION_DENIED, and the joiner gets nothing", async () => {
    const { dp, fingerprint } = await requestJoin(etcd, "n-forged");
    daemons.push(dp);
    const genuine = (await joinRecord("n-forged"))!;
    expect(genuine).toMatchObject({ status: "pending", fingerprint });

    // The attacker's own RSA key pair, recorded in place of the joiner's.
    const attacker = generateKeyPairSync("rsa", { modulusLength: 3072 });
    const attackerSpki = attacker.publicKey.export({ type: "spki", format: "der" });
    const attackerFp = createHash("sha256").update(attackerSpki).digest("hex");
    await putJoinRecord("n-forged", { ...genuine, spki: attackerSpki.toString("base64"), fingerprint: attackerFp });
    // The officer approves what the joining node printed: refused, the record names another key.
    const e1 = await co.approveJoin({ nodeId: "n-forged", transportKeySha256: fingerprint, soPin: n1.token.soPin }).catch((e: unknown) => e);
    expect(e1).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((e1 as Error).message).toContain(`carries transport key ${attackerFp}, not ${fingerprint}`);

    // Only the key replaced (the fingerprint left as printed): refused as inconsistent.
    await putJoinRecord("n-forged", { ...genuine, spki: attackerSpki.toString("base64") });
    const e2 = await co.approveJoin({ nodeId: "n-forged", transportKeySha256: fingerprint, soPin: n1.token.soPin }).catch((e: unknown) => e);
    expect(e2).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((e2 as Error).message).toMatch(/inconsistent: its key does not match its fingerprint/);

    // The genuine request, approved with a fingerprint other than the one the node printed: refused.
    await putJoinRecord("n-forged", genuine);
    const wrongFp = randomBytes(32).toString("hex");
    const e3 = await co.approveJoin({ nodeId: "n-forged", transportKeySha256: wrongFp, soPin: n1.token.soPin }).catch((e: unknown) => e);
    expect(e3).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((e3 as Error).message).toContain(`carries transport key ${fingerprint}, not ${wrongFp}`);

    // Nothing was handed out: no wrapped domain key anywhere, the joiner still waits with nothing.
    const after = (await joinRecord("n-forged"))!;
    expect(after).toMatchObject({ status: "pending" });
    expect(after).not.toHaveProperty("wrappedDomainKey");
    await expectWaitingWithNothing(dp);
    expectNoTrustedObjects();
    expect((await co.listJoinRequests()).requests.find((r) => r.nodeId === "n-forged")).toMatchObject({ status: JoinStatus.JOIN_STATUS_PENDING, approvedBy: "" });
  });

  it("an approval with a wrong SO PIN is refused with PERMISSION_DENIED and approves nothing; the right PIN then completes the join", async () => {
    const { dp, fingerprint } = await requestJoin(etcd, "n-pin");
    daemons.push(dp);
    const e = await co.approveJoin({ nodeId: "n-pin", transportKeySha256: fingerprint, soPin: "wrong-so-pin" }).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((e as Error).message).toMatch(/security officer PIN of this node's token is incorrect/);
    expect((e as Error).message).not.toContain(n1.token.soPin);
    const rec = (await joinRecord("n-pin"))!;
    expect(rec).toMatchObject({ status: "pending" });
    expect(rec).not.toHaveProperty("wrappedDomainKey");
    expect(rec).not.toHaveProperty("approvedBy");
    await expectWaitingWithNothing(dp);
    expectNoTrustedObjects();

    await co.approveJoin({ nodeId: "n-pin", transportKeySha256: fingerprint, soPin: n1.token.soPin });
    await dp.ready;
    dp.setCommand("start");
    expect((await co.getClusterStatus()).nodes.map((n) => n.nodeId).sort()).toEqual(["n-pin", "n1", "n2"]);
  });

  it("a join that expires unapproved exits saying so, with nothing; it can no longer be approved", async () => {
    const { dp, fingerprint } = expiring;
    expect(await dp.waitExit()).toEqual({ code: 1, signal: null });
    expect(dp.stderr()).toMatch(/cannot start: the join request of n-expiring expired unapproved: run join again/);
    expect(dp.stdout()).not.toContain("hsmd ready");
    expect(tokenKeyAttributes(dp.token).filter((o) => o.class === "secret")).toEqual([]);
    expect((await co.listJoinRequests()).requests.find((r) => r.nodeId === "n-expiring")).toMatchObject({ status: JoinStatus.JOIN_STATUS_EXPIRED });
    const late = await co.approveJoin({ nodeId: "n-expiring", transportKeySha256: fingerprint, soPin: n1.token.soPin }).catch((x: unknown) => x);
    expect(late).toMatchObject({ code: GrpcStatus.FAILED_PRECONDITION });
    expect((late as Error).message).toMatch(/the join request of n-expiring is expired: it cannot be approved/);
    expect(await joinRecord("n-expiring")).not.toHaveProperty("wrappedDomainKey");
    expectNoTrustedObjects();
  }, 40_000);

  it("a removed node serves nothing: UNAVAILABLE saying it was removed, health NOT_SERVING, the domain key gone from its token", async () => {
    expect(n2).toBeDefined();
    const a2 = new HsmClient({ endpoint: n2.grpc, defaultDeadlineMs: 20_000, retry: { maxAttempts: 1 } });
    clients.push(a2);
    await a2.login("alice", USER_PASSWORD);
    const a1 = new HsmClient({ endpoint: n1.grpc, defaultDeadlineMs: 20_000 });
    clients.push(a1);
    await a1.login("alice", USER_PASSWORD);
    const key = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "before-removal" });
    await eventually(async () => (await a2.sign({ keyId: key.id, algorithm: ECDSA, message: Buffer.from("m") })).signature.length > 0, "n2 signs", 10_000);
    expect(tokenObjects(n2.token).some((o) => o.id === domainKeyId)).toBe(true);

    await co.removeNode({ nodeId: "n2" });
    await eventually(async () => (await grpcHealth(n2.grpc)) === "NOT_SERVING", "n2's health says NOT_SERVING", 10_000);
    expect(await grpcHealth(n2.grpc, "hsm.v1.CryptoService")).toBe("NOT_SERVING");
    expect(await grpcHealth(n2.grpc, "hsm.v1.KeyService")).toBe("NOT_SERVING");

    const removed = /^node n2 was removed from cluster test: it serves nothing$/;
    const fresh = new HsmClient({ endpoint: n2.grpc, defaultDeadlineMs: 20_000, retry: { maxAttempts: 1 } });
    clients.push(fresh);
    const answers = await Promise.all([
      a2.sign({ keyId: key.id, algorithm: ECDSA, message: Buffer.from("m") }).catch((e: unknown) => e),
      a2.listKeys({}).catch((e: unknown) => e),
      a2.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "on-removed" }).catch((e: unknown) => e),
      a2.generateRandom({ length: 16 }).catch((e: unknown) => e),
      fresh.login("alice", USER_PASSWORD).catch((e: unknown) => e),
      fresh.login("admin", "officer-password-1").catch((e: unknown) => e),
    ]);
    for (const a of answers) {
      expect(a).toMatchObject({ code: GrpcStatus.UNAVAILABLE });
      expect((a as { details: string }).details).toMatch(removed);
    }

    // Its token no longer holds the domain key (nor the transport key pair), seen by pkcs11-tool.
    await eventually(() => !tokenObjects(n2.token).some((o) => o.id === domainKeyId), "the domain key is gone from n2's token", 10_000);
    const left = tokenObjects(n2.token);
    expect(left.filter((o) => o.id === domainKeyId || o.id === "hsmd-transport")).toEqual([]);
    expect(left.filter((o) => /Secret Key|Private Key/.test(o.kind))).toEqual([]);
    const ready = await nodeReadiness(n2);
    expect(ready.status).toBe(503);
    expect(ready.body.checks.find((c) => c.name === "domain_key")).toMatchObject({ ok: false });
    expect((await nodeStatus(n2)).cluster).toMatchObject({ removed: true });
    expect((await co.getClusterStatus()).nodes.map((n) => n.nodeId).sort()).toEqual(["n-pin", "n1"]);
    // The rest of the cluster is unaffected.
    expect((await a1.sign({ keyId: key.id, algorithm: ECDSA, message: Buffer.from("m") })).signature.length).toBeGreaterThan(0);

    // Started again, it refuses to serve.
    await expect(n2.restart()).rejects.toThrow(/exited before ready \(code 1/);
    expect(n2.stderr()).toMatch(/cannot start: (node n2 is not a member of cluster test|this node's HSM does not hold the domain key of cluster test)/);
  });
});
