/**
 * Issue 11's spike (research, not a feature): device work on worker_threads against the
 * in-process baseline the bench uses today (pkcs11js async calls on the main thread over a pool of
 * 8 sessions). Prints ops/s, p50 latency, the main thread's event-loop utilization and the process
 * CPU per operation for each cell, then probes what a worker's exit or C_Finalize does to the
 * others. docs/spikes/worker-device.md holds the findings.
 *
 *   npm run build && node dist/scripts/spike-worker-device.js [--seconds N] [--keys unwrap|create]
 */
process.env.UV_THREADPOOL_SIZE ??= "16";

import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Worker } from "node:worker_threads";
import * as pk from "pkcs11js";
import { initTokenFromFiles } from "./init-token";
import { ckrName, OPS, type SpikeOp, type SpikeWorkerData } from "./spike-worker-device-thread";

const MODULE = process.env.SOFTHSM2_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so";
const POOL = 8;
const CKM_AES_KEY_WRAP_PAD = 0x210a;
const { values: argv } = parseArgs({ options: { seconds: { type: "string" }, keys: { type: "string" } } });
const SECONDS = Number(argv.seconds ?? 2);
const KEYS = (argv.keys ?? "unwrap") as "unwrap" | "create";

/** One measured cell. */
interface Cell {
  opsPerSec: number;
  p50: number;
  elu: number;
  cpuUsPerOp: number;
}

/**
 * Closed loop: `loops` callers each issue the next call (of `perCall` operations) when the previous
 * one settles, for SECONDS. Latency is per call; ELU is the main thread's over the measured window.
 */
async function measure(loops: number, perCall: number, call: () => Promise<void>): Promise<Cell> {
  await Promise.all(Array.from({ length: Math.min(loops, 8) }, () => call()));
  const lat: number[] = [];
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: loops }, async () => {
      while (performance.now() < end) {
        const s = performance.now();
        await call();
        lat.push(performance.now() - s);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const elu = performance.eventLoopUtilization(elu0).utilization;
  lat.sort((a, b) => a - b);
  const ops = lat.length * perCall;
  return { opsPerSec: ops / elapsed, p50: lat[Math.floor(lat.length / 2)]!, elu, cpuUsPerOp: (cpu.user + cpu.system) / ops };
}

/** The bench's raw device: 8 pooled sessions, `*Init` on the event loop, the call on libuv's pool. */
class Baseline {
  readonly p11 = new pk.PKCS11();
  readonly sessions: Buffer[] = [];
  private free: Buffer[] = [];
  private waiters: Array<(s: Buffer) => void> = [];
  slot!: Buffer;
  keys!: { p256: pk.KeyPair; aes: Buffer; hmac: Buffer; wrap: Buffer };

  open(label: string, pin: string): void {
    this.p11.load(MODULE);
    this.p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
    this.slot = this.p11.C_GetSlotList(true).find((s) => this.p11.C_GetTokenInfo(s).label.trim() === label)!;
    this.sessions.length = 0;
    for (let i = 0; i < POOL; i++) this.sessions.push(this.p11.C_OpenSession(this.slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION));
    this.p11.C_Login(this.sessions[0]!, pk.CKU_USER, pin);
    this.free = [...this.sessions];
  }

  /** Session-object keys, extractable only so that the workers can unwrap copies of the same keys. */
  generateKeys(): void {
    const s = this.sessions[0]!;
    const secret = (keyType: number, usage: number[], extractable = true): pk.Template => [
      { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
      { type: pk.CKA_KEY_TYPE, value: keyType },
      { type: pk.CKA_VALUE_LEN, value: 32 },
      { type: pk.CKA_SENSITIVE, value: true },
      { type: pk.CKA_EXTRACTABLE, value: extractable },
      ...usage.map((type) => ({ type, value: true })),
    ];
    const p256 = this.p11.C_GenerateKeyPair(
      s,
      { mechanism: pk.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pk.CKA_EC_PARAMS, value: Buffer.from("06082a8648ce3d030107", "hex") },
        { type: pk.CKA_VERIFY, value: true },
      ],
      [
        { type: pk.CKA_SIGN, value: true },
        { type: pk.CKA_SENSITIVE, value: true },
        { type: pk.CKA_EXTRACTABLE, value: true },
      ],
    );
    const aes = this.p11.C_GenerateKey(s, { mechanism: pk.CKM_AES_KEY_GEN }, secret(pk.CKK_AES, [pk.CKA_ENCRYPT, pk.CKA_DECRYPT]));
    const hmac = this.p11.C_GenerateKey(s, { mechanism: pk.CKM_GENERIC_SECRET_KEY_GEN }, secret(pk.CKK_GENERIC_SECRET, [pk.CKA_SIGN, pk.CKA_VERIFY]));
    const wrap = this.p11.C_GenerateKey(s, { mechanism: pk.CKM_AES_KEY_GEN }, secret(pk.CKK_AES, [pk.CKA_WRAP, pk.CKA_UNWRAP], false));
    this.keys = { p256, aes, hmac, wrap };
  }

  wrapped(): SpikeWorkerData["wrapped"] {
    const w = (k: Buffer) => new Uint8Array(this.p11.C_WrapKey(this.sessions[0]!, { mechanism: CKM_AES_KEY_WRAP_PAD }, this.keys.wrap, k, Buffer.alloc(2048)));
    return { p256: w(this.keys.p256.privateKey), aes: w(this.keys.aes), hmac: w(this.keys.hmac) };
  }

  async with<T>(fn: (s: Buffer) => Promise<T>): Promise<T> {
    const s = this.free.pop() ?? (await new Promise<Buffer>((r) => this.waiters.push(r)));
    try {
      return await fn(s);
    } finally {
      const w = this.waiters.shift();
      if (w) w(s);
      else this.free.push(s);
    }
  }

  op(op: SpikeOp, input: Buffer): Promise<unknown> {
    return this.with((s) => {
      if (op === "sign") {
        this.p11.C_SignInit(s, { mechanism: pk.CKM_ECDSA }, this.keys.p256.privateKey);
        return this.p11.C_SignAsync(s, input, Buffer.alloc(OPS.sign.outLen));
      }
      if (op === "hmac") {
        this.p11.C_SignInit(s, { mechanism: pk.CKM_SHA256_HMAC }, this.keys.hmac);
        return this.p11.C_SignAsync(s, input, Buffer.alloc(OPS.hmac.outLen));
      }
      this.p11.C_EncryptInit(s, { mechanism: pk.CKM_AES_GCM, parameter: { type: pk.CK_PARAMS_AES_GCM, iv: randomBytes(12), ivBits: 96, tagBits: 128 } as pk.AesGCM }, this.keys.aes);
      return this.p11.C_EncryptAsync(s, input, Buffer.alloc(OPS.gcm.outLen));
    });
  }

  /** Checks a worker's outputs with the main thread's keys: the worker's copies are the same keys. */
  check(op: SpikeOp, input: Buffer, out: Buffer): boolean {
    const s = this.sessions[1]!;
    try {
      if (op === "sign") {
        this.p11.C_VerifyInit(s, { mechanism: pk.CKM_ECDSA }, this.keys.p256.publicKey);
        return this.p11.C_Verify(s, input, out);
      }
      if (op === "hmac") {
        this.p11.C_VerifyInit(s, { mechanism: pk.CKM_SHA256_HMAC }, this.keys.hmac);
        return this.p11.C_Verify(s, input, out);
      }
      const iv = out.subarray(0, 12);
      this.p11.C_DecryptInit(s, { mechanism: pk.CKM_AES_GCM, parameter: { type: pk.CK_PARAMS_AES_GCM, iv, ivBits: 96, tagBits: 128 } as pk.AesGCM }, this.keys.aes);
      return Buffer.from(this.p11.C_Decrypt(s, out.subarray(12), Buffer.alloc(4096 + 16))).equals(input);
    } catch {
      return false;
    }
  }
}

/** N spike workers; each batch goes to the worker with the fewest batches outstanding. */
class WorkerPool {
  readonly workers: Worker[] = [];
  readonly facts: Array<Record<string, string>> = [];
  private readonly outstanding: number[] = [];
  private readonly pending = new Map<number, { resolve: (b: ArrayBuffer) => void; reject: (e: Error) => void }>();
  private nextId = 0;

  static async start(n: number, data: SpikeWorkerData): Promise<WorkerPool> {
    const pool = new WorkerPool();
    for (let i = 0; i < n; i++) {
      const w = new Worker(join(__dirname, "spike-worker-device-thread.js"), { workerData: data });
      const ready = await new Promise<{ facts?: Record<string, string>; error?: string }>((r) => w.once("message", r));
      if (ready.error) throw new Error(`worker ${i} failed to start: ${ready.error}`);
      pool.facts.push(ready.facts!);
      pool.outstanding.push(0);
      w.on("message", (m: { type: string; id: number; out?: ArrayBuffer; error?: string }) => {
        if (m.type !== "done") return;
        const p = pool.pending.get(m.id)!;
        pool.pending.delete(m.id);
        pool.outstanding[i]!--;
        if (m.error) p.reject(new Error(m.error));
        else p.resolve(m.out!);
      });
      pool.workers.push(w);
    }
    return pool;
  }

  /** Posts one batch (its input transferred, not copied) and resolves with the outputs. */
  batch(op: SpikeOp, n: number, data: ArrayBuffer, to?: number): Promise<ArrayBuffer> {
    const i = to ?? this.outstanding.indexOf(Math.min(...this.outstanding));
    const id = this.nextId++;
    this.outstanding[i]!++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.workers[i]!.postMessage({ type: "batch", id, op, n, data }, [data]);
    });
  }

  /** A control message ("probe", "finalize", "initialize") to one worker: the CKR name it answered. */
  control(i: number, type: string): Promise<string> {
    return new Promise((r) => {
      const w = this.workers[i]!;
      const on = (m: { type: string; answer: string }) => {
        if (m.type !== type) return;
        w.off("message", on);
        r(m.answer);
      };
      w.on("message", on);
      w.postMessage({ type });
    });
  }

  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

const fmt = (c: Cell) => [c.opsPerSec.toFixed(0), c.p50.toFixed(3), c.elu.toFixed(2), c.cpuUsPerOp.toFixed(1)];

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "hsmd-spike-"));
  const conf = join(dir, "softhsm2.conf");
  mkdirSync(join(dir, "tokens"));
  writeFileSync(conf, `directories.tokendir = ${join(dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const pin = randomBytes(12).toString("base64url");
  writeFileSync(join(dir, "pin"), pin, { mode: 0o600 });
  writeFileSync(join(dir, "so-pin"), `${pin}so`, { mode: 0o600 });
  process.env.SOFTHSM2_CONF = conf;
  initTokenFromFiles(process.env, "spike", join(dir, "pin"), join(dir, "so-pin"));
  const base = new Baseline();
  base.open("spike", pin);
  base.generateKeys();
  const inputs: Record<SpikeOp, Buffer> = { sign: randomBytes(32), gcm: randomBytes(4096), hmac: randomBytes(32) };
  const names: Record<SpikeOp, string> = { sign: "ECDSA P-256 sign", gcm: "AES-GCM 4 KiB encrypt", hmac: "HMAC-SHA256" };
  const rows: string[][] = [];
  const emit = (r: string[]) => {
    rows.push(r);
    process.stdout.write(`${r.join("\t")}\n`);
  };
  process.stdout.write(`${cpus().length} cores, Node ${process.version}, ${SECONDS} s per cell, keys: ${KEYS}\n`);
  try {
    for (const op of Object.keys(OPS) as SpikeOp[]) {
      for (const inFlight of [1, 64, 256]) emit([names[op], "main thread, pool 8", String(inFlight), "-", ...fmt(await measure(inFlight, 1, async () => void (await base.op(op, inputs[op]))))]);
    }
    const data: SpikeWorkerData = { module: MODULE, label: "spike", pin, keys: KEYS, wrapKey: new Uint8Array(base.keys.wrap), wrapped: base.wrapped() };
    for (const n of [1, 2, 4]) {
      const pool = await WorkerPool.start(n, data);
      process.stdout.write(`workers ${n}: ${pool.facts.map((f) => JSON.stringify(f)).join(" ")}\n`);
      for (const op of Object.keys(OPS) as SpikeOp[]) {
        const { inLen } = OPS[op];
        // Every worker's output checked once against the main thread's keys (when it holds copies of them).
        for (let i = 0; i < n && pool.facts[i]!.keys === "unwrapped"; i++) {
          const out = Buffer.from(await pool.batch(op, 1, new Uint8Array(inputs[op]).buffer, i));
          if (!base.check(op, inputs[op], out)) throw new Error(`worker ${i}: ${op} output does not check`);
        }
        const template = new ArrayBuffer(64 * inLen);
        for (let i = 0; i < 64; i++) new Uint8Array(template, i * inLen, inLen).set(inputs[op]);
        for (const inFlight of [1, 64, 256]) {
          for (const b of [1, 16, 64]) {
            if (b > inFlight) continue;
            const cell = await measure(Math.ceil(inFlight / b), b, async () => void (await pool.batch(op, b, template.slice(0, b * inLen))));
            emit([names[op], `${n} worker${n > 1 ? "s" : ""}`, String(inFlight), String(b), ...fmt(cell)]);
          }
        }
      }
      await pool.stop();
    }
    await probes(base, data, pin);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const header = ["operation", "where", "in flight", "batch", "ops/s", "p50 ms (per call)", "main ELU", "process CPU µs/op"];
  process.stdout.write(`\n| ${header.join(" | ")} |\n| ${header.map(() => "---").join(" | ")} |\n${rows.map((r) => `| ${r.join(" | ")} |`).join("\n")}\n`);
}

/** What a worker's exit, and a C_Finalize in one worker, do to the others and to the main thread. */
async function probes(base: Baseline, data: SpikeWorkerData, pin: string): Promise<void> {
  const say = (s: string) => process.stdout.write(`probe: ${s}\n`);
  const mainProbe = async () => {
    try {
      await base.op("hmac", Buffer.alloc(32));
      return "CKR_OK";
    } catch (e) {
      return ckrName(e);
    }
  };
  const pool = await WorkerPool.start(3, { ...data, keys: "unwrap" });
  await pool.workers[0]!.terminate();
  say(`worker 0 terminated (no C_Finalize): worker 1 ${await pool.control(1, "probe")}, main ${await mainProbe()}`);
  say(`worker 1 C_Finalize: ${await pool.control(1, "finalize")}; then worker 2 ${await pool.control(2, "probe")}, main ${await mainProbe()}`);
  say(`worker 2 C_Initialize again: ${await pool.control(2, "initialize")}; then worker 2 ${await pool.control(2, "probe")} (its session and key handles are from before)`);
  base.p11.C_Finalize();
  base.open("spike", pin);
  say(`main re-opened sessions and logged in: main ${await mainProbe()} (its session-object keys were destroyed by the finalize)`);
  await pool.stop();
}

main().catch((e) => {
  process.stderr.write(`spike failed: ${e?.stack ?? e}\n`);
  process.exit(1);
});
