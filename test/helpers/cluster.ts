/**
 * hsmd cluster members for tests: daemons as child processes (each its own SoftHSM2 token, data
 * directory and fixed loopback ports) on a real etcd cluster, joined through the real ceremony.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Etcd3 } from "etcd3";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { UserServiceClient } from "../../src/gen/hsm/v1/users";
import type { HsmClient } from "../../src/sdk";
import { startDaemonProcess, type DaemonProcess } from "./daemon-process";
import { freePort, type EtcdCluster } from "./etcd";
import { pkcs11Tool, SOFTHSM_MODULE, type TempToken } from "./softhsm";

/** etcd client URLs → the `host:port` list the config takes. */
export const etcdEndpoints = (etcd: EtcdCluster) => etcd.endpoints.map((u) => new URL(u).host);

/** The cluster name the helpers give every member; its records live under {@link CLUSTER_PREFIX} in etcd. */
export const CLUSTER_NAME = "test";
export const CLUSTER_PREFIX = `hsmd/${CLUSTER_NAME}/`;

/**
 * One member's config: fixed ports, so that its address stays the same across restarts. `extra` is
 * further top-level config (e.g. `{ auth: { maxFailedLogins: 3 } }`), deep-merged by the daemon helper.
 */
export async function nodeConfig(etcd: EtcdCluster, cluster: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const grpc = `127.0.0.1:${await freePort()}`;
  return {
    ...extra,
    listen: { grpc, admin: `127.0.0.1:${await freePort()}` },
    cluster: { name: CLUSTER_NAME, etcd: { endpoints: etcdEndpoints(etcd) }, ...cluster },
  };
}

/** Daemons started through these helpers: killed with SIGKILL if the test process exits without cleaning up. */
const started = new Set<DaemonProcess>();
let exitHook = false;
function track(dp: DaemonProcess): DaemonProcess {
  started.add(dp);
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const d of started) {
        try {
          d.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
    });
  }
  return dp;
}

/** The first member: `hsmd init` creates the cluster (domain key, first officer). */
export async function initNode(etcd: EtcdCluster, nodeId = "n1", cluster: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<DaemonProcess> {
  return track(await startDaemonProcess({ nodeId, command: "init", config: await nodeConfig(etcd, cluster, extra) }));
}

/** Starts `hsmd join` and waits until it printed its join request; resolves the process and the fingerprint. */
export async function requestJoin(etcd: EtcdCluster, nodeId: string, cluster: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): Promise<{ dp: DaemonProcess; fingerprint: string }> {
  const dp = track(await startDaemonProcess({ nodeId, command: "join", noWait: true, config: await nodeConfig(etcd, cluster, extra) }));
  dp.ready.catch(() => undefined); // awaited by the caller when it expects the join to complete
  for (let i = 0; i < 600; i++) {
    const m = /transport key sha256 ([0-9a-f]{64})/.exec(dp.stdout());
    if (m) return { dp, fingerprint: m[1]! };
    await sleep(50);
  }
  const err = dp.stderr().slice(-3000);
  await dp.cleanup().catch(() => undefined);
  throw new Error(`no join request from ${nodeId}:\n${err}`);
}

/** Joins a node: request, approval by `officer` on the member `approver` (with its SO PIN), ready. */
export async function joinNode(
  etcd: EtcdCluster,
  nodeId: string,
  officer: HsmClient,
  approver: DaemonProcess,
  cluster: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
): Promise<DaemonProcess> {
  const { dp, fingerprint } = await requestJoin(etcd, nodeId, cluster, extra);
  try {
    await officer.approveJoin({ nodeId, transportKeySha256: fingerprint, soPin: approver.token.soPin });
    await dp.ready;
  } catch (e) {
    await dp.cleanup().catch(() => undefined);
    throw e;
  }
  dp.setCommand("start");
  return dp;
}

/**
 * Tears a test cluster down whatever state it is in: closes the clients, stops every daemon (SIGTERM,
 * then SIGKILL) and removes its token and data, then the etcd members; one failure does not stop the rest.
 */
export async function teardownCluster(opts: { clients?: Array<{ close(): void } | undefined>; daemons?: Array<DaemonProcess | undefined>; etcd?: EtcdCluster }): Promise<void> {
  for (const c of opts.clients ?? []) {
    try {
      c?.close();
    } catch {
      // closing is best effort
    }
  }
  await Promise.allSettled(
    (opts.daemons ?? []).map(async (d) => {
      if (!d) return;
      await d.cleanup();
      started.delete(d);
    }),
  );
  await opts.etcd?.cleanup().catch(() => undefined);
}

/** Polls `check` until it returns true (or a truthy value, which it resolves), or fails with `what`. */
export async function eventually<T>(check: () => Promise<T> | T, what: string, timeoutMs = 30_000, everyMs = 100): Promise<NonNullable<T>> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(everyMs);
  }
}

/** What a member's admin `/v1/status` answers (the fields the cluster tests read). */
export interface NodeStatusJson {
  node: { id: string; pid: number };
  store: { kind: string; revision: number; appliedRevision: number; reachable: boolean };
  cluster: {
    name: string;
    self: string;
    removed: boolean;
    applyFailures: number;
    nodes: Array<{ id: string; appliedRevision: number; lag: number | null; hsmHealthy: boolean; storeReachable: boolean; keys: number; lastContact: string | null }>;
  } | null;
  domainKeyId: string;
  keys: number;
}

/** GET `/v1/status` of a member (its admin URL of the current run). */
export async function nodeStatus(dp: DaemonProcess): Promise<NodeStatusJson> {
  const r = await fetch(`${dp.admin}/v1/status`);
  if (r.status !== 200) throw new Error(`/v1/status of ${dp.admin} answered ${r.status}: ${await r.text()}`);
  return (await r.json()) as NodeStatusJson;
}

/** GET `/readyz` of a member: its HTTP status and body. */
export async function nodeReadiness(dp: DaemonProcess): Promise<{ status: number; body: { ready: boolean; checks: Array<{ name: string; ok: boolean; detail?: string }> } }> {
  const r = await fetch(`${dp.admin}/readyz`);
  return { status: r.status, body: (await r.json()) as never };
}

/** The gRPC and admin addresses a member was configured with (known before it is ready). */
export function configuredListen(dp: DaemonProcess): { grpc: string; admin: string } {
  const cfg = JSON.parse(readFileSync(dp.configFile, "utf8")) as { listen: { grpc: string; admin: string } };
  return cfg.listen;
}

/** True when something accepts TCP connections on `host:port`. */
export function portAcceptsConnections(hostPort: string, timeoutMs = 1000): Promise<boolean> {
  const i = hostPort.lastIndexOf(":");
  return new Promise((resolve) => {
    const s = connect(Number(hostPort.slice(i + 1)), hostPort.slice(0, i));
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/** grpc.health.v1.Health/Check of `service` ("" = the server) on `hostPort`: "SERVING", "NOT_SERVING", …, or the error. */
export async function grpcHealth(hostPort: string, service = ""): Promise<string> {
  const pkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true, oneofs: true, includeDirs: [dirname(healthProtoPath)] }),
  ) as unknown as { grpc: { health: { v1: { Health: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client } } } };
  const client = new pkg.grpc.health.v1.Health(hostPort, grpc.credentials.createInsecure()) as grpc.Client & {
    Check(req: { service: string }, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
  };
  try {
    return await new Promise<string>((res, rej) => client.Check({ service }, { deadline: new Date(Date.now() + 5000) }, (err, r) => (err ? rej(err) : res(r!.status))));
  } finally {
    client.close();
  }
}

/** An etcd client on every member (close it), for reading and forging the cluster's raw records. */
export function etcdClient(etcd: EtcdCluster): Etcd3 {
  return new Etcd3({ hosts: etcd.endpoints });
}

/** One object of a token as pkcs11-tool lists it. */
export interface TokenObject {
  kind: string;
  label?: string;
  /** CKA_ID decoded as UTF-8 (hsmd's ids are text) */
  id?: string;
  usage?: string;
  access?: string;
  /** the object's lines as printed */
  raw: string;
}

/** Every object in a token, listed by `pkcs11-tool --list-objects` after a user login (an independent view). */
export function tokenObjects(token: TempToken): TokenObject[] {
  const out = pkcs11Tool(token, ["--list-objects"]);
  const objs: TokenObject[] = [];
  let cur: TokenObject | undefined;
  for (const line of out.split("\n")) {
    const head = /^(Secret Key Object|Private Key Object|Public Key Object|Certificate Object|Data object|Profile object)\b(.*)$/i.exec(line);
    if (head) {
      cur = { kind: head[1]!, raw: line };
      objs.push(cur);
      continue;
    }
    if (!cur) continue;
    cur.raw += `\n${line}`;
    const m = /^\s+([A-Za-z ]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, name, value] = m;
    if (name === "label") cur.label = value!.trim();
    else if (name === "ID") cur.id = Buffer.from(value!.trim(), "hex").toString("utf8");
    else if (name === "Usage") cur.usage = value!.trim();
    else if (name === "Access") cur.access = value!.trim();
  }
  return objs;
}

/** The protection attributes of one key object, read straight from the token (not through hsmd). */
export interface KeyObjectAttributes {
  class: "secret" | "private" | "public";
  id: string;
  sensitive?: boolean;
  extractable?: boolean;
  alwaysSensitive?: boolean;
  neverExtractable?: boolean;
  wrapWithTrusted?: boolean;
  trusted?: boolean;
}

/** Runs in a child process: PKCS#11 initializes once per process, with the token's own SOFTHSM2_CONF. */
const READ_ATTRIBUTES = String.raw`
const pk = require(process.argv[1]);
const [module, label, pin] = process.argv.slice(2);
const p = new pk.PKCS11();
p.load(module);
p.C_Initialize();
const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
const s = p.C_OpenSession(slot, pk.CKF_SERIAL_SESSION);
p.C_Login(s, pk.CKU_USER, pin);
p.C_FindObjectsInit(s, []);
const handles = [];
for (let h = p.C_FindObjects(s); h; h = p.C_FindObjects(s)) handles.push(h);
p.C_FindObjectsFinal(s);
const classes = { [pk.CKO_SECRET_KEY]: "secret", [pk.CKO_PRIVATE_KEY]: "private", [pk.CKO_PUBLIC_KEY]: "public" };
const out = [];
const bool = (h, type) => {
  try {
    const [a] = p.C_GetAttributeValue(s, h, [{ type }]);
    return a.value.length ? a.value[0] === 1 : undefined;
  } catch {
    return undefined;
  }
};
for (const h of handles) {
  const [c, id] = p.C_GetAttributeValue(s, h, [{ type: pk.CKA_CLASS }, { type: pk.CKA_ID }]);
  const cls = classes[c.value.readUInt32LE(0)];
  if (!cls) continue;
  const o = { class: cls, id: id.value.toString("utf8") };
  if (cls === "public") o.trusted = bool(h, pk.CKA_TRUSTED);
  else {
    o.sensitive = bool(h, pk.CKA_SENSITIVE);
    o.extractable = bool(h, pk.CKA_EXTRACTABLE);
    o.alwaysSensitive = bool(h, pk.CKA_ALWAYS_SENSITIVE);
    o.neverExtractable = bool(h, pk.CKA_NEVER_EXTRACTABLE);
    o.wrapWithTrusted = bool(h, pk.CKA_WRAP_WITH_TRUSTED);
    if (cls === "secret") o.trusted = bool(h, pk.CKA_TRUSTED);
  }
  out.push(o);
}
p.C_Logout(s);
p.C_CloseSession(s);
p.C_Finalize();
process.stdout.write(JSON.stringify(out));
`;

/**
 * Every key object of a token with its protection attributes (CKA_SENSITIVE, CKA_EXTRACTABLE,
 * CKA_WRAP_WITH_TRUSTED, CKA_TRUSTED …), read with pkcs11js in a child process logged in as the user.
 */
export function tokenKeyAttributes(token: TempToken): KeyObjectAttributes[] {
  const out = execFileSync(process.execPath, ["-e", READ_ATTRIBUTES, require.resolve("pkcs11js"), SOFTHSM_MODULE, token.label, token.pin], {
    env: { ...process.env, SOFTHSM2_CONF: token.conf },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  return JSON.parse(out) as KeyObjectAttributes[];
}

/**
 * Logs in through one member with a raw gRPC client and returns the bearer token, so that the same
 * session can be presented to other members (HsmClient.useToken).
 */
export async function loginToken(hostPort: string, username: string, password: string): Promise<string> {
  const client = new UserServiceClient(hostPort, grpc.credentials.createInsecure());
  try {
    return await new Promise<string>((resolve, reject) =>
      client.login({ username, password }, new grpc.Metadata(), { deadline: new Date(Date.now() + 20_000) }, (err, s) => (err ? reject(err) : resolve(s!.token))),
    );
  } finally {
    client.close();
  }
}

/** After a failed test, each node's stderr tail (the cause of a cluster failure is usually there). */
export function stderrTailsOnFail(ctx: { task: { result?: { state?: string } } }, nodes: ReadonlyArray<readonly [string, DaemonProcess | undefined]>): void {
  if (ctx.task.result?.state !== "fail") return;
  for (const [name, n] of nodes) if (n) process.stderr.write(`---- ${name} stderr (tail) ----\n${n.stderr().slice(-4000)}\n`);
}
