/**
 * npm run bench: the raw device through pkcs11js in this process (same token, same pool size) next
 * to the daemon through the SDK over loopback, in the same run, and the transport's own ceiling (a
 * bare grpc-js echo server in a child process, unary and one bidi stream). Prints ops/s, p50 and p99
 * latency, the ratios daemon ÷ raw and daemon ÷ unary echo, CPU per operation of the daemon and of the
 * raw run, and the daemon's event-loop utilization per cell; writes the tables to docs/BENCHMARKS.md.
 *
 *   node dist/scripts/bench.js [--seconds N] [--no-write]
 */
process.env.UV_THREADPOOL_SIZE ??= "16";

import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { EncryptionAlgorithm, KeySpec, SigningAlgorithm } from "../src/sdk";
import { CellProbe } from "./bench-cpu";
import { benchUser, startDaemon } from "./bench-daemon";
import { markdownTable, writeBenchRegion } from "./bench-doc";
import { type EchoServer, startEchoServer } from "./bench-echo";
import { measure, type Result } from "./bench-measure";
import { RawDevice, rawOps as makeRawOps } from "./bench-raw";
import { initTokenFromFiles } from "./init-token";

const POOL = 8;
const args = process.argv.slice(2);
const SECONDS = Number(args[args.indexOf("--seconds") + 1]) > 0 && args.includes("--seconds") ? Number(args[args.indexOf("--seconds") + 1]) : 3;
const WRITE = !args.includes("--no-write");
const ROOT = resolve(__dirname, "../..");
/** Calls in flight (unary) or messages outstanding (stream) for the echo rows. */
const ECHO_IN_FLIGHT = [1, 64, 256];
/** Echo payloads: the size of a Sign request (64 B) and of the AES-GCM row's plaintext (4 KiB). */
const ECHO_PAYLOADS = [64, 4096];

const fmt = (n: number | undefined, d = 0) => (n === undefined || !Number.isFinite(n) ? "" : n.toFixed(d));

/**
 * The transport ceilings: unary echo and bidi-stream echo at each payload and depth, with the echo
 * server's and this process's CPU per message. Answers the table rows and unary echo ops/s by
 * `${payload}/${inFlight}`, for the daemon rows' "÷ unary echo" column.
 */
async function echoCeilings(echo: EchoServer): Promise<{ rows: string[][]; unary: Map<string, number> }> {
  const rows: string[][] = [];
  const unary = new Map<string, number>();
  // The echo rows run first in this process: warm grpc-js's client and server code (JIT) before the first cell.
  const warm = echo.stream();
  await measure(Math.min(1, SECONDS), 64, () => echo.unary(randomBytes(64)));
  await measure(Math.min(1, SECONDS), 64, () => warm.send(randomBytes(64)));
  warm.end();
  for (const size of ECHO_PAYLOADS) {
    const payload = randomBytes(size);
    for (const inFlight of ECHO_IN_FLIGHT) {
      const u = await measure(SECONDS, inFlight, () => echo.unary(payload), 1, new CellProbe(echo.child.pid));
      const stream = echo.stream();
      const s = await measure(SECONDS, inFlight, () => stream.send(payload), 1, new CellProbe(echo.child.pid));
      stream.end();
      unary.set(`${size}/${inFlight}`, u.opsPerSec);
      const label = size >= 1024 ? `${size / 1024} KiB` : `${size} B`;
      const row = (name: string, r: Result, ratio: string) => [name, label, String(inFlight), fmt(r.opsPerSec), fmt(r.p50, 3), fmt(r.p99, 3), fmt(r.cost?.selfUs, 1), fmt(r.cost?.childUs, 1), ratio];
      rows.push(row("grpc-js unary echo", u, ""), row("grpc-js bidi-stream echo", s, (s.opsPerSec / u.opsPerSec).toFixed(2)));
      process.stdout.write(`${rows.at(-2)!.join("\t")}\n${rows.at(-1)!.join("\t")}\n`);
    }
  }
  return { rows, unary };
}

/** One row of the daemon table: raw and daemon figures side by side, CPU per op, ELU, and both ratios. */
function daemonRow(name: string, inFlight: string, r: Result, d: Result, echoOpsPerSec: number | undefined, addedP50: boolean): string[] {
  const rawCpu = r.cost?.selfUs;
  const daemonCpu = d.cost?.childUs;
  return [
    name,
    inFlight,
    fmt(r.opsPerSec),
    fmt(r.p50, 3),
    fmt(r.p99, 3),
    fmt(d.opsPerSec),
    fmt(d.p50, 3),
    fmt(d.p99, 3),
    (d.opsPerSec / r.opsPerSec).toFixed(2),
    addedP50 ? (d.p50 - r.p50).toFixed(3) : "",
    fmt(rawCpu),
    fmt(daemonCpu),
    rawCpu !== undefined && daemonCpu !== undefined ? fmt(daemonCpu - rawCpu) : "",
    fmt(d.cost?.elu, 2),
    fmt(echoOpsPerSec),
    echoOpsPerSec ? (d.opsPerSec / echoOpsPerSec).toFixed(2) : "",
  ];
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), "hsmd-bench-"));
  const conf = join(dir, "softhsm2.conf");
  mkdirSync(join(dir, "tokens"));
  writeFileSync(conf, `directories.tokendir = ${join(dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const pin = "bench-" + Math.random().toString(36).slice(2);
  const pinFile = join(dir, "pin");
  writeFileSync(pinFile, pin, { mode: 0o600 });
  process.env.SOFTHSM2_CONF = conf;
  const soPinFile = join(dir, "so-pin");
  writeFileSync(soPinFile, pin + "so", { mode: 0o600 });
  initTokenFromFiles(process.env, "bench", pinFile, soPinFile);

  const { child, grpc, admin } = await startDaemon(ROOT, dir, conf, pinFile, POOL);
  const echo = await startEchoServer(ROOT);
  const raw = new RawDevice("bench", pin, POOL);
  const client = await benchUser(grpc, join(dir, "data"));
  try {
    const msg = Buffer.from("benchmark message");
    const block = randomBytes(4096);
    // Raw keys: session objects in this process.
    const rawOps = makeRawOps(raw, msg, block);
    const kP = await client.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "bench-p256" });
    const kR = await client.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "bench-rsa" });
    const kA = await client.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "bench-aes" });
    const kH = await client.generateKey({ spec: KeySpec.KEY_SPEC_HMAC_SHA256, label: "bench-hmac" });
    const daemonOps: Record<string, () => Promise<unknown>> = {
      "ECDSA P-256 sign": () => client.sign({ keyId: kP.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg }),
      "RSA-2048 sign": () => client.sign({ keyId: kR.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256, message: msg }),
      "AES-GCM 4 KiB encrypt": () => client.encrypt({ keyId: kA.id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: block }),
      "HMAC-SHA256": () => client.sign({ keyId: kH.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: msg }),
    };
    /** The echo payload each daemon row's request is closest to. */
    const payloadOf = (name: string) => (name.startsWith("AES-GCM 4 KiB") ? 4096 : 64);

    const echoRows = await echoCeilings(echo);
    const rawProbe = () => new CellProbe();
    const daemonProbe = () => new CellProbe(child.pid, admin);
    const rows: string[][] = [];
    for (const name of Object.keys(rawOps)) {
      for (const inFlight of [1, 64]) {
        const r = await measure(SECONDS, inFlight, rawOps[name]!, 1, rawProbe());
        const d = await measure(SECONDS, inFlight, daemonOps[name]!, 1, daemonProbe());
        rows.push(daemonRow(name, String(inFlight), r, d, echoRows.unary.get(`${payloadOf(name)}/${inFlight}`), inFlight === 1));
        process.stdout.write(`${rows[rows.length - 1]!.join("\t")}\n`);
      }
    }
    // Batched P-256 sign: 64 signatures per BatchSign call, 4 calls in flight, against raw at 64 in flight.
    const batchItems = Array.from({ length: 64 }, () => ({ keyId: kP.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg }));
    const rb = await measure(SECONDS, 64, rawOps["ECDSA P-256 sign"]!, 1, rawProbe());
    const db = await measure(SECONDS, 4, () => client.batchSign({ items: batchItems }), 64, daemonProbe());
    rows.push(daemonRow("ECDSA P-256 sign, batches of 64", "4×64", rb, db, undefined, false));

    const header = [
      "operation",
      "in flight",
      "raw ops/s",
      "raw p50 ms",
      "raw p99 ms",
      "daemon ops/s",
      "daemon p50 ms",
      "daemon p99 ms",
      "daemon ÷ raw",
      "added p50 ms",
      "raw CPU µs/op",
      "daemon CPU µs/op",
      "daemon own CPU µs/op",
      "daemon ELU",
      "unary echo ops/s",
      "daemon ÷ unary echo",
    ];
    const table = markdownTable(header, rows);
    const echoHeader = ["transport", "payload", "in flight", "ops/s", "p50 ms", "p99 ms", "client CPU µs/op", "server CPU µs/op", "stream ÷ unary"];
    const echoTable = markdownTable(echoHeader, echoRows.rows);
    process.stdout.write(`\n${echoTable}\n\n${table}\n`);
    if (WRITE) {
      writeBenchRegion(
        join(ROOT, "docs/BENCHMARKS.md"),
        `Measured by \`npm run bench\` (scripts/bench.ts) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}, SoftHSM2 token, session pool ${POOL} on both sides, ${SECONDS} s per cell.

- **raw**: pkcs11js in the benchmark's own process, async calls over a pool of ${POOL} sessions, keys as session objects; the ceiling for this device.
- **daemon**: hsmd in a child process, called through the SDK over loopback gRPC (plaintext dev mode) by a logged-in crypto user; each call authenticates the session, checks the caller's access to the key, validates, runs the same mechanism on a pooled session, appends its audit entry and answers.
- **unary echo / bidi-stream echo**: the transport's ceiling, in the same process layout: a bare grpc-js server with no work (scripts/echo-server.ts, Buffer serializers, no proto) in a child process, called from the benchmark's process. The stream rows send every message on one bidi stream with a 4-byte id in front and match the echoes by id; "in flight" there is messages outstanding. Payloads: 64 B (a Sign request's size) and 4 KiB (the AES-GCM row).
- in flight: concurrent calls in a closed loop. The batched row sends BatchSign calls of 64 items, 4 in flight, and compares signatures per second with raw at 64 in flight.
- **CPU µs/op**: user + system CPU over the measured part of the cell (warm-up excluded), all threads, divided by the operations done: the daemon's (or the echo server's) from \`/proc/<pid>/stat\`, the raw run's (or the echo client's) from \`process.cpuUsage()\` of the benchmark's process. The raw run's CPU is the device's own work, so **daemon own CPU** = daemon CPU/op − raw CPU/op is what hsmd adds around it (gRPC, auth, audit, the synchronous \`C_*Init\` on the event loop counted in both).
- **daemon ELU**: the daemon's \`hsmd_event_loop_utilization\` over the cell (its /metrics scraped at the start and the end of the measured part): the share of time its event loop was busy.
- **daemon ÷ unary echo**: the daemon's ops/s over the unary echo's at the same payload and in flight, i.e. how close the daemon's unary calls come to the transport's ceiling.
- The machine is shared and noisy: read ratios from the same run, not absolute figures across runs.

Targets (not tests): P-256 ratio ≥ 0.5, RSA-2048 ≥ 0.9, batched P-256 ≥ 0.85, added latency at 1 in flight ≤ 0.3 ms p50. Issue 11's: unary ÷ unary-echo ceiling ≥ 0.8; daemon own CPU ≤ 25 µs per streamed op (stream rows to come with the crypto stream).

### Transport ceilings (same run)

${echoTable}

### Raw device and daemon

${table}`,
      );
      process.stdout.write("wrote docs/BENCHMARKS.md\n");
    }
  } finally {
    client.close();
    raw.close();
    await echo.close();
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${e?.stack ?? e}\n`);
  process.exit(1);
});
