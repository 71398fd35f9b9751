/**
 * The closed loop every `npm run bench` cell runs: `inFlight` workers each issue the next call when
 * the previous one settles, for a fixed time, after a short warm-up; an optional probe reads CPU and
 * event-loop use around the measured part only.
 */
import type { CellCost, CellProbe } from "./bench-cpu";

/** One cell's figures: operations done, their rate and latency quantiles (ms), and what the probe measured. */
export interface Result {
  ops: number;
  /** Calls whose `op` resolved `false` (a stream answer that was an error): left out of ops, rate and latency. */
  failed: number;
  opsPerSec: number;
  p50: number;
  p99: number;
  cost?: CellCost;
}

/**
 * Closed loop: `inFlight` workers each issue the next call when the previous one settles. A call
 * whose promise resolves `false` did not succeed: it is counted in `failed`, not in the figures.
 */
export async function measure(seconds: number, inFlight: number, op: () => Promise<unknown>, itemsPerOp = 1, probe?: CellProbe): Promise<Result> {
  // warm-up
  await Promise.all(Array.from({ length: Math.min(inFlight, 8) }, () => op()));
  await probe?.begin();
  const lat: number[] = [];
  let failed = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        const s = performance.now();
        if ((await op()) === false) failed++;
        else lat.push(performance.now() - s);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  const ops = lat.length * itemsPerOp;
  const cost = await probe?.end(ops);
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!;
  return { ops, failed, opsPerSec: ops / elapsed, p50: q(0.5), p99: q(0.99), cost };
}
