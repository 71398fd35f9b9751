/**
 * The admin surface of a real daemon (in process, real SoftHSM2 token, real sockets): /healthz,
 * /readyz, /metrics (counters that follow the calls made), /v1/status; and the standard gRPC
 * services next to hsm.v1: grpc.health.v1.Health and server reflection.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { dirname, join } from "node:path";
import { EncryptionAlgorithm, HsmClient, KeySpec, MessageType, SigningAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

let td: TestDaemon;
let c: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td);
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

const get = async (path: string) => {
  const r = await fetch(`${td.admin}${path}`);
  return { status: r.status, type: r.headers.get("content-type") ?? "", text: await r.text() };
};

/** The value of one sample `name{labels}` in a Prometheus text exposition; undefined when absent. */
function sample(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) have[l[1]!] = l[2]!;
    if (Object.keys(labels).length !== Object.keys(have).length) continue;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

describe("HTTP admin", () => {
  it("/healthz answers 200", async () => {
    const r = await get("/healthz");
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual({ status: "ok" });
  });

  it("/readyz answers 200 with the device session, store and domain key checks all ok", async () => {
    const r = await get("/readyz");
    expect(r.status).toBe(200);
    const body = JSON.parse(r.text) as { ready: boolean; checks: Array<{ name: string; ok: boolean }> };
    expect(body.ready).toBe(true);
    expect(body.checks.map((x) => [x.name, x.ok]).sort()).toEqual([
      ["device_session", true],
      ["domain_key", true],
      ["store_writable", true],
    ]);
  });

  it("/metrics counts the calls made, by method and code, with latencies, device mechanisms, pool and keys", async () => {
    const before = (await get("/metrics")).text;
    const signOk0 = sample(before, "hsmd_grpc_requests_total", { method: "Sign", code: "OK" }) ?? 0;
    const ec = await c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "metrics-ec" });
    const aes = await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "metrics-aes" });
    const SIGNS = 7;
    for (let i = 0; i < SIGNS; i++) await c.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from(`m${i}`) });
    await c.encrypt({ keyId: aes.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from("x") });
    // Failures are counted under their code.
    const missing = "00000000-0000-4000-8000-000000000000";
    for (let i = 0; i < 2; i++) await expect(c.getKey({ keyId: missing })).rejects.toMatchObject({ codeName: "NOT_FOUND" });
    await expect(c.sign({ keyId: missing, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.from("m") })).rejects.toMatchObject({ codeName: "NOT_FOUND" });
    await expect(c.sign({ keyId: ec.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: Buffer.alloc(0), messageType: MessageType.MESSAGE_TYPE_DIGEST })).rejects.toMatchObject({
      codeName: "INVALID_ARGUMENT",
    });

    const r = await get("/metrics");
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^text\/plain/);
    const m = r.text;
    expect(sample(m, "hsmd_grpc_requests_total", { method: "Sign", code: "OK" })).toBe(signOk0 + SIGNS);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "GenerateKey", code: "OK" })).toBe(2);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "Encrypt", code: "OK" })).toBe(1);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "GetKey", code: "NOT_FOUND" })).toBe(2);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "Sign", code: "NOT_FOUND" })).toBe(1);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "Sign", code: "INVALID_ARGUMENT" })).toBe(1);
    expect(sample(m, "hsmd_grpc_requests_total", { method: "GetKey", code: "OK" })).toBeUndefined();

    // Latency histogram per method: +Inf bucket and _count equal the number of calls.
    expect(m).toContain("# TYPE hsmd_grpc_request_duration_seconds histogram");
    expect(sample(m, "hsmd_grpc_request_duration_seconds_bucket", { method: "Sign", le: "+Inf" })).toBe(signOk0 + SIGNS + 2);
    expect(sample(m, "hsmd_grpc_request_duration_seconds_count", { method: "Sign" })).toBe(signOk0 + SIGNS + 2);
    expect(sample(m, "hsmd_grpc_request_duration_seconds_bucket", { method: "Sign", le: "0.00005" })).toBeGreaterThanOrEqual(0);

    // Device operations by CKM_* mechanism: AES-GCM encrypt once, EC key pair generation once, and
    // one ECDSA mechanism at least once per signature.
    expect(m).toContain("# TYPE hsmd_device_operation_duration_seconds histogram");
    expect(sample(m, "hsmd_device_operation_duration_seconds_count", { mechanism: "CKM_AES_GCM" })).toBe(1);
    expect(sample(m, "hsmd_device_operation_duration_seconds_count", { mechanism: "CKM_EC_KEY_PAIR_GEN" })).toBe(1);
    const ecdsa = [...m.matchAll(/^hsmd_device_operation_duration_seconds_count\{mechanism="(CKM_ECDSA[A-Z0-9_]*)"\} (\d+)$/gm)];
    expect(ecdsa.reduce((n, x) => n + Number(x[2]), 0)).toBeGreaterThanOrEqual(SIGNS);
    const mechanisms = [...m.matchAll(/^hsmd_device_operation_duration_seconds_count\{mechanism="([^"]+)"\}/gm)].map((x) => x[1]!);
    expect(mechanisms.length).toBeGreaterThan(0);
    for (const mech of mechanisms) expect(mech).toMatch(/^CKM_[A-Z0-9_]+$/);

    // Pool gauges add up to the configured pool (4 in tests), all idle now.
    const busy = sample(m, "hsmd_pool_sessions", { state: "busy" });
    const idle = sample(m, "hsmd_pool_sessions", { state: "idle" });
    expect(busy).toBe(0);
    expect(idle).toBe(td.daemon.config.device.poolSize);
    expect(sample(m, "hsmd_pool_waiting")).toBe(0);

    const listed = (await c.listKeys({ pageSize: 1000 })).keys.length;
    expect(listed).toBeGreaterThanOrEqual(2);
    expect(sample(m, "hsmd_keys")).toBe(listed);
    // ... and it follows a delete.
    await c.deleteKey({ keyId: aes.id });
    expect(sample((await get("/metrics")).text, "hsmd_keys")).toBe(listed - 1);
  });

  it("/v1/status names the node, the token, its mechanisms and the key count", async () => {
    const r = await get("/v1/status");
    expect(r.status).toBe(200);
    const s = JSON.parse(r.text) as {
      node: { id: string; grpcPort: number; adminPort: number };
      token: { label: string };
      mechanisms: string[];
      keys: number;
      domainKeyId: string;
    };
    expect(s.node.id).toBe("test-node");
    expect(s.node.grpcPort).toBe(td.daemon.grpcPort);
    expect(s.node.adminPort).toBe(td.daemon.adminPort);
    expect(s.token.label).toBe(td.token.label);
    expect(s.mechanisms).toEqual(expect.arrayContaining(["CKM_AES_GCM", "CKM_AES_KEY_WRAP_PAD", "CKM_ECDSA"]));
    expect(s.keys).toBe((await c.listKeys({ pageSize: 1000 })).keys.length);
    expect(s.domainKeyId).toBe(td.daemon.domainKeyId);
    // Never the PIN.
    expect(r.text).not.toContain(td.token.pin);
  });
});

describe("standard gRPC services", () => {
  const load = (file: string, includeDirs: string[]) => grpc.loadPackageDefinition(protoLoader.loadSync(file, { keepCase: true, enums: String, defaults: true, oneofs: true, includeDirs }));

  it("grpc.health.v1.Health answers SERVING for the server and hsm.v1 services, NOT_FOUND for others", async () => {
    const pkg = load(healthProtoPath, [dirname(healthProtoPath)]) as unknown as {
      grpc: { health: { v1: { Health: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client } } };
    };
    const client = new pkg.grpc.health.v1.Health(td.grpc, grpc.credentials.createInsecure()) as grpc.Client & {
      Check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
    };
    const check = (service: string) => new Promise<{ status: string }>((res, rej) => client.Check({ service }, (err, r) => (err ? rej(err) : res(r!))));
    try {
      expect(await check("")).toEqual({ status: "SERVING" });
      expect(await check("hsm.v1.KeyService")).toEqual({ status: "SERVING" });
      expect(await check("hsm.v1.CryptoService")).toEqual({ status: "SERVING" });
      await expect(check("hsm.v1.NoSuchService")).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    } finally {
      client.close();
    }
  });

  it.each(["v1alpha", "v1"])("server reflection (%s) lists hsm.v1.KeyService and hsm.v1.CryptoService", async (version) => {
    const reflectionRoot = join(dirname(require.resolve("@grpc/reflection/package.json")), "build/proto");
    const file = join(reflectionRoot, `grpc/reflection/${version}/reflection.proto`);
    const pkg = load(file, [reflectionRoot]) as unknown as {
      grpc: { reflection: Record<string, { ServerReflection: new (addr: string, creds: grpc.ChannelCredentials) => grpc.Client }> };
    };
    const client = new pkg.grpc.reflection[version]!.ServerReflection(td.grpc, grpc.credentials.createInsecure()) as grpc.Client & {
      ServerReflectionInfo(): grpc.ClientDuplexStream<unknown, { list_services_response?: { service: Array<{ name: string }> }; error_response?: unknown }>;
    };
    try {
      const names = await new Promise<string[]>((res, rej) => {
        const call = client.ServerReflectionInfo();
        call.on("data", (msg) => {
          if (msg.list_services_response) res(msg.list_services_response.service.map((s: { name: string }) => s.name));
          else rej(new Error(`unexpected reflection answer ${JSON.stringify(msg)}`));
          call.end();
        });
        call.on("error", rej);
        call.write({ list_services: "" });
      });
      expect(names).toEqual(expect.arrayContaining(["hsm.v1.KeyService", "hsm.v1.CryptoService"]));
    } finally {
      client.close();
    }
  });
});
