/**
 * Issue 11's targets for `npm run bench`, computed from the run's own cells (never hand-written):
 * each target's goal, this run's figure, and whether it is met. Also the stream table's rows.
 */
import type { Result } from "./bench-measure";

/** The figures of one benchmarked operation, by depth (calls in flight / messages outstanding). */
export interface OpCells {
  name: string;
  raw: Map<number, Result>;
  unary: Map<number, Result>;
  stream: Map<number, Result>;
  /** The unary echo's ops/s at the payload closest to this operation's request, by depth. */
  echo: Map<number, number>;
}

/** stream ÷ raw goals per operation (issue 11). */
export const STREAM_RATIO_GOALS: Record<string, number> = {
  "ECDSA P-256 sign": 0.6,
  "RSA-2048 sign": 0.9,
  "AES-GCM 4 KiB encrypt": 0.45,
  "HMAC-SHA256": 0.45,
};
/** Daemon own CPU per streamed operation, µs. */
export const OWN_CPU_GOAL_US = 25;
/** Latency the stream adds to the raw device's p50 at 1 outstanding, ms. */
export const ADDED_P50_GOAL_MS = 0.15;
/** Daemon unary ops/s ÷ unary echo ops/s at the same payload and depth. */
export const UNARY_ECHO_GOAL = 0.8;

const fmt = (n: number | undefined, d = 0) => (n === undefined || !Number.isFinite(n) ? "" : n.toFixed(d));

/** The daemon's own CPU per op in a cell: its CPU per op minus the raw run's at the same depth. */
export function ownCpu(d: Result | undefined, r: Result | undefined): number | undefined {
  const daemon = d?.cost?.childUs;
  const raw = r?.cost?.selfUs;
  return daemon === undefined || raw === undefined ? undefined : daemon - raw;
}

/** One row of the stream table per operation and depth. */
export function streamRows(ops: OpCells[], depths: number[]): string[][] {
  const rows: string[][] = [];
  for (const op of ops) {
    for (const n of depths) {
      const r = op.raw.get(n);
      const s = op.stream.get(n);
      if (!r || !s) continue;
      rows.push([
        op.name,
        String(n),
        fmt(r.opsPerSec),
        fmt(r.p50, 3),
        fmt(s.opsPerSec),
        fmt(s.p50, 3),
        fmt(s.p99, 3),
        fmt(s.opsPerSec / r.opsPerSec, 2),
        n === 1 ? fmt(s.p50 - r.p50, 3) : "",
        fmt(r.cost?.selfUs),
        fmt(s.cost?.childUs),
        fmt(ownCpu(s, r)),
        fmt(s.cost?.elu, 2),
        String(s.failed),
      ]);
    }
  }
  return rows;
}

/** Header of {@link streamRows}. */
export const STREAM_HEADER = [
  "operation",
  "outstanding",
  "raw ops/s",
  "raw p50 ms",
  "stream ops/s",
  "stream p50 ms",
  "stream p99 ms",
  "stream ÷ raw",
  "added p50 ms",
  "raw CPU µs/op",
  "daemon CPU µs/op",
  "daemon own CPU µs/op",
  "daemon ELU",
  "not OK",
];

/** Header of {@link targetRows}. */
export const TARGET_HEADER = ["target", "goal", "this run", "met"];

const verdict = (met: boolean | undefined) => (met === undefined ? "not measured" : met ? "met" : "not met");

/**
 * The targets table. Throughput targets take the better of 64 and 256 outstanding (named); the CPU
 * target the worst stream row at 64 and 256 outstanding (at 1 the loop idles between messages and a
 * per-op figure measures wake-ups, not work); the latency target the worst operation at 1
 * outstanding; unary ÷ unary echo the worst unary row among those whose raw device outruns the echo
 * at that depth (elsewhere the device, not the transport, caps the call).
 */
export function targetRows(ops: OpCells[]): string[][] {
  const rows: string[][] = [];
  for (const op of ops) {
    const goal = STREAM_RATIO_GOALS[op.name];
    if (goal === undefined) continue;
    let best: { ratio: number; n: number } | undefined;
    for (const n of [64, 256]) {
      const r = op.raw.get(n);
      const s = op.stream.get(n);
      if (!r || !s || !(r.opsPerSec > 0)) continue;
      const ratio = s.opsPerSec / r.opsPerSec;
      if (!best || ratio > best.ratio) best = { ratio, n };
    }
    rows.push([`stream ÷ raw, ${op.name}`, `≥ ${goal}`, best ? `${best.ratio.toFixed(2)} (${best.n} outstanding)` : "", verdict(best && best.ratio >= goal)]);
  }

  let cpu: { us: number; where: string } | undefined;
  for (const op of ops) {
    for (const n of [64, 256]) {
      const us = ownCpu(op.stream.get(n), op.raw.get(n));
      if (us !== undefined && Number.isFinite(us) && (!cpu || us > cpu.us)) cpu = { us, where: `${op.name}, ${n} outstanding` };
    }
  }
  rows.push(["daemon own CPU per streamed op", `≤ ${OWN_CPU_GOAL_US} µs`, cpu ? `${cpu.us.toFixed(0)} µs (worst: ${cpu.where})` : "", verdict(cpu && cpu.us <= OWN_CPU_GOAL_US)]);

  let added: { ms: number; where: string } | undefined;
  for (const op of ops) {
    const r = op.raw.get(1);
    const s = op.stream.get(1);
    if (!r || !s || !Number.isFinite(s.p50)) continue;
    const ms = s.p50 - r.p50;
    if (!added || ms > added.ms) added = { ms, where: op.name };
  }
  rows.push([
    "added p50 at 1 outstanding (stream − raw)",
    `≤ ${ADDED_P50_GOAL_MS} ms`,
    added ? `${added.ms.toFixed(3)} ms (worst: ${added.where})` : "",
    verdict(added && added.ms <= ADDED_P50_GOAL_MS),
  ]);

  let unary: { ratio: number; where: string } | undefined;
  let capped = 0;
  for (const op of ops) {
    for (const [n, d] of op.unary) {
      const echo = op.echo.get(n);
      const r = op.raw.get(n);
      if (!echo || !r) continue;
      if (r.opsPerSec < echo) {
        capped++;
        continue;
      }
      const ratio = d.opsPerSec / echo;
      if (!unary || ratio < unary.ratio) unary = { ratio, where: `${op.name}, ${n} in flight` };
    }
  }
  const note = capped > 0 ? `; ${capped} device-bound row${capped === 1 ? "" : "s"} left out` : "";
  rows.push(["unary ÷ unary echo", `≥ ${UNARY_ECHO_GOAL}`, unary ? `${unary.ratio.toFixed(2)} (worst: ${unary.where}${note})` : "", verdict(unary && unary.ratio >= UNARY_ECHO_GOAL)]);
  return rows;
}
