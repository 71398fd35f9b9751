/**
 * npm run bench: the raw device through pkcs11js in this process (same token, same pool size) next
 * to the daemon through the SDK over loopback, in the same run, and the transport's own ceiling (a
 * bare grpc-js echo server in a child process, unary and one bidi stream), and the daemon's crypto
 * stream (one CryptoStream, 1, 64 and 256 operations outstanding). Prints ops/s, p50 and p99 latency,
 * the ratios daemon ÷ raw, stream ÷ raw and daemon ÷ unary echo, CPU per operation of the daemon and
 * of the raw run, and the daemon's event-loop utilization per cell, and issue 11's targets computed
 * from them; writes the tables to docs/BENCHMARKS.md.
 *
 *   node dist/scripts/bench.js [--seconds N] [--no-write]
 */
process.env.UV_THREADPOOL_SIZE ??= "16";

import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { EncryptRequest, SignRequest } from "../src/gen/hsm/v1/crypto";
import { EncryptionAlgorithm, type HsmClient, KeySpec, KeyUsage, SigningAlgorithm, wrapForImport } from "../src/sdk";
import { CellProbe } from "./bench-cpu";
import { benchUser, startDaemon } from "./bench-daemon";
import { markdownTable, writeBenchRegion } from "./bench-doc";
import { type EchoServer, startEchoServer } from "./bench-echo";
import { measure, type Result } from "./bench-measure";
import { RawDevice, rawOps as makeRawOps } from "./bench-raw";
import { type Check, checkResult, openStream, type StreamOp, streamClient } from "./bench-stream";
import { type OpCells, STREAM_HEADER, TARGET_HEADER, streamRows, targetRows } from "./bench-targets";
import { initTokenFromFiles } from "./init-token";

const POOL = 8;
const args = process.argv.slice(2);
const SECONDS = Number(args[args.indexOf("--seconds") + 1]) > 0 && args.includes("--seconds") ? Number(args[args.indexOf("--seconds") + 1]) : 3;
const WRITE = !args.includes("--no-write");
if (args.includes("--help")) {
  process.stdout.write(
    "usage: node dist/scripts/bench.js [--seconds N] [--no-write]\n  --seconds N  measured seconds per cell (default 3)\n  --no-write   print the tables, leave docs/BENCHMARKS.md as it is\n",
  );
  process.exit(0);
}
const ROOT = resolve(__dirname, "../..");
/** Calls in flight (unary) or messages outstanding (stream) for the echo rows. */
const ECHO_IN_FLIGHT = [1, 64, 256];
/** Messages outstanding on the daemon's crypto stream. */
const STREAM_DEPTHS = [1, 64, 256];
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

/** Imports secret `material` (AES or HMAC) through BYOK, wrapped for the daemon's import key, and answers the key's id. */
async function importSecret(client: HsmClient, spec: KeySpec, material: Buffer, usages: KeyUsage[], label: string): Promise<string> {
  const p = await client.getImportParameters({});
  const wrapped = wrapForImport(Buffer.from(p.publicKeySpki), material, p.wrappingAlgorithm);
  return (await client.importKey({ spec, label, usages, importKeyId: p.importKeyId, wrappedKeyMaterial: wrapped })).id;
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
    // AES and HMAC keys imported from known material, so that their answers can be checked with Node's crypto.
    const aesKey = randomBytes(32);
    const hmacKey = randomBytes(32);
    const kA = await importSecret(client, KeySpec.KEY_SPEC_AES_256, aesKey, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], "bench-aes");
    const kH = await importSecret(client, KeySpec.KEY_SPEC_HMAC_SHA256, hmacKey, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY], "bench-hmac");
    const signP = SignRequest.fromPartial({ keyId: kP.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg });
    const signR = SignRequest.fromPartial({ keyId: kR.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256, message: msg });
    const encA = EncryptRequest.fromPartial({ keyId: kA, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: block });
    const macH = SignRequest.fromPartial({ keyId: kH, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: msg });
    const daemonOps: Record<string, () => Promise<unknown>> = {
      "ECDSA P-256 sign": () => client.sign(signP),
      "RSA-2048 sign": () => client.sign(signR),
      "AES-GCM 4 KiB encrypt": () => client.encrypt(encA),
      "HMAC-SHA256": () => client.sign(macH),
    };
    const streamOps: Record<string, StreamOp> = {
      "ECDSA P-256 sign": { $case: "sign", value: signP },
      "RSA-2048 sign": { $case: "sign", value: signR },
      "AES-GCM 4 KiB encrypt": { $case: "encrypt", value: encA },
      "HMAC-SHA256": { $case: "sign", value: macH },
    };
    const checks: Record<string, Check> = {
      "ECDSA P-256 sign": { kind: "ecdsa", publicKeyPem: (await client.getPublicKey({ keyId: kP.id })).pem, message: msg },
      "RSA-2048 sign": { kind: "rsa-pkcs1", publicKeyPem: (await client.getPublicKey({ keyId: kR.id })).pem, message: msg },
      "AES-GCM 4 KiB encrypt": { kind: "aes-gcm", key: aesKey, plaintext: block },
      "HMAC-SHA256": { kind: "hmac-sha256", key: hmacKey, message: msg },
    };
    /** The echo payload each daemon row's request is closest to. */
    const payloadOf = (name: string) => (name.startsWith("AES-GCM 4 KiB") ? 4096 : 64);

    const echoRows = await echoCeilings(echo);
    const rawProbe = () => new CellProbe();
    const daemonProbe = () => new CellProbe(child.pid, admin);
    const cells: OpCells[] = Object.keys(rawOps).map((name) => ({ name, raw: new Map(), unary: new Map(), stream: new Map(), echo: new Map() }));
    const rows: string[][] = [];
    for (const op of cells) {
      for (const inFlight of [1, 64]) {
        const r = await measure(SECONDS, inFlight, rawOps[op.name]!, 1, rawProbe());
        const d = await measure(SECONDS, inFlight, daemonOps[op.name]!, 1, daemonProbe());
        const echoOps = echoRows.unary.get(`${payloadOf(op.name)}/${inFlight}`);
        op.raw.set(inFlight, r);
        op.unary.set(inFlight, d);
        if (echoOps !== undefined) op.echo.set(inFlight, echoOps);
        rows.push(daemonRow(op.name, String(inFlight), r, d, echoOps, inFlight === 1));
        process.stdout.write(`${rows[rows.length - 1]!.join("\t")}\n`);
      }
    }
    // Batched P-256 sign: 64 signatures per BatchSign call, 4 calls in flight, against raw at 64 in flight.
    const batchItems = Array.from({ length: 64 }, () => ({ keyId: kP.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message: msg }));
    const rb = await measure(SECONDS, 64, rawOps["ECDSA P-256 sign"]!, 1, rawProbe());
    const db = await measure(SECONDS, 4, () => client.batchSign({ items: batchItems }), 64, daemonProbe());
    rows.push(daemonRow("ECDSA P-256 sign, batches of 64", "4×64", rb, db, undefined, false));

    // The crypto stream: one CryptoStream per cell through the generated client, N operations
    // outstanding, only OK answers counted; raw at 256 in flight measured here (1 and 64 above).
    const sc = streamClient(grpc);
    const token = client.exportSession()!.token;
    for (const op of cells) {
      const first = openStream(sc, token);
      checkResult(op.name, await first.send(streamOps[op.name]!), checks[op.name]!);
      await first.end();
      for (const n of STREAM_DEPTHS) {
        if (!op.raw.has(n)) op.raw.set(n, await measure(SECONDS, n, rawOps[op.name]!, 1, rawProbe()));
        const stream = openStream(sc, token);
        let firstError: string | undefined;
        const req = streamOps[op.name]!;
        const s = await measure(
          SECONDS,
          n,
          () =>
            stream.send(req).then((r) => {
              if (r.$case !== "error") return true;
              firstError ??= `${r.value.code}: ${r.value.message}`;
              return false;
            }),
          1,
          daemonProbe(),
        );
        await stream.end();
        op.stream.set(n, s);
        if (firstError) process.stderr.write(`${op.name} at ${n} outstanding: ${s.failed} answers not OK, the first ${firstError}\n`);
        process.stdout.write(`${streamRows([op], [n])[0]?.join("\t") ?? ""}\n`);
      }
    }
    sc.close();
    const streamTable = markdownTable(STREAM_HEADER, streamRows(cells, STREAM_DEPTHS));
    const targetTable = markdownTable(TARGET_HEADER, targetRows(cells));

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
    process.stdout.write(`\n${echoTable}\n\n${table}\n\n${streamTable}\n\n${targetTable}\n`);
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
- **stream**: the same operations on the daemon's crypto stream (\`CryptoService.CryptoStream\`), driven through the generated client directly: one stream per cell, authenticated once by the session token in its metadata, each message authorized by the daemon as a unary call is; "outstanding" is operations sent and not yet answered on that one stream (closed loop: an answer lets the next one go). Only OK answers are counted ("not OK" counts the others). The first answer of each operation is checked against Node's crypto (signatures verified with the public key, AES-GCM decrypted and HMAC recomputed with the imported key material) before its cells. **stream ÷ raw** compares with raw at the same depth (raw at 256 is measured for these rows); **added p50** is stream p50 − raw p50 at 1 outstanding; **daemon own CPU** as above, against the raw run at the same depth.
- AES and HMAC keys are imported from known material (ImportKey), the others generated; unary and stream rows use the same keys.
- The machine is shared and noisy: read ratios from the same run, not absolute figures across runs.

Targets (not tests): P-256 ratio ≥ 0.5, RSA-2048 ≥ 0.9, batched P-256 ≥ 0.85, added latency at 1 in flight ≤ 0.3 ms p50 (the unary rows). Issue 11's targets are computed from this run in the table below.

### Issue 11 targets (this run)

The throughput targets take the better of 64 and 256 outstanding; the CPU target the worst stream row at 64 and 256 outstanding (at 1 the daemon idles between messages, and a per-op figure measures its wake-ups); the latency target the worst operation at 1 outstanding; unary ÷ unary echo the worst unary row among those whose raw device outruns the unary echo at that depth (where it does not, the device caps the call, not the transport).

${targetTable}

### Transport ceilings (same run)

${echoTable}

### Raw device and daemon

${table}

### Crypto stream (same run)

${streamTable}`,
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
