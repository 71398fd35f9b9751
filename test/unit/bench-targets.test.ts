import { describe, expect, it } from "vitest";
import type { Result } from "../../scripts/bench-measure";
import { type OpCells, streamRows, targetRows } from "../../scripts/bench-targets";

const cell = (opsPerSec: number, p50: number, selfUs: number, childUs?: number, elu?: number): Result => ({ ops: opsPerSec, failed: 0, opsPerSec, p50, p99: p50 * 2, cost: { selfUs, childUs, elu } });

/** P-256 fast on the device (outruns the echo), RSA slow (device-bound). */
function cells(): OpCells[] {
  return [
    {
      name: "ECDSA P-256 sign",
      raw: new Map([
        [1, cell(4000, 0.2, 200)],
        [64, cell(10000, 6, 150)],
        [256, cell(10000, 25, 150)],
      ]),
      unary: new Map([
        [1, cell(400, 2, 0, 2000)],
        [64, cell(1000, 50, 0, 900)],
      ]),
      stream: new Map([
        [1, cell(3000, 0.3, 0, 260, 0.4)],
        [64, cell(5500, 11, 0, 170, 0.8)],
        [256, cell(6500, 39, 0, 180, 0.9)],
      ]),
      echo: new Map([
        [1, 1400],
        [64, 3300],
      ]),
    },
    {
      name: "RSA-2048 sign",
      raw: new Map([
        [1, cell(600, 1.7, 1700)],
        [64, cell(1100, 57, 1700)],
        [256, cell(1100, 230, 1700)],
      ]),
      unary: new Map([
        [1, cell(260, 3.5, 0, 3000)],
        [64, cell(700, 93, 0, 2100)],
      ]),
      stream: new Map([
        [1, cell(550, 1.9, 0, 1710, 0.1)],
        [64, cell(1050, 60, 0, 1715, 0.2)],
        [256, cell(1000, 250, 0, 1712, 0.2)],
      ]),
      echo: new Map([
        [1, 1400],
        [64, 3300],
      ]),
    },
  ];
}

describe("bench targets", () => {
  it("computes each target from the cells: best depth for throughput, worst row for CPU, latency and unary ÷ echo", () => {
    expect(targetRows(cells())).toEqual([
      ["stream ÷ raw, ECDSA P-256 sign", "≥ 0.6", "0.65 (256 outstanding)", "met"],
      ["stream ÷ raw, RSA-2048 sign", "≥ 0.9", "0.95 (64 outstanding)", "met"],
      // P-256 at 256: 180 − 150; RSA at 64: 1715 − 1700.
      ["daemon own CPU per streamed op", "≤ 25 µs", "30 µs (worst: ECDSA P-256 sign, 256 outstanding)", "not met"],
      ["added p50 at 1 outstanding (stream − raw)", "≤ 0.15 ms", "0.200 ms (worst: RSA-2048 sign)", "not met"],
      // RSA's raw device (600/s, 1100/s) is slower than the echo: left out. P-256 at 1: 400 / 1400.
      ["unary ÷ unary echo", "≥ 0.8", "0.29 (worst: ECDSA P-256 sign, 1 in flight; 2 device-bound rows left out)", "not met"],
    ]);
  });

  it("says 'not measured' rather than met when a figure is missing", () => {
    const c = cells().slice(0, 1);
    c[0]!.stream.clear();
    const rows = targetRows(c);
    expect(rows[0]).toEqual(["stream ÷ raw, ECDSA P-256 sign", "≥ 0.6", "", "not measured"]);
    expect(rows[1]![3]).toBe("not measured");
  });

  it("stream rows carry the ratio in its own column, added p50 only at 1 outstanding", () => {
    const [one, sixtyFour] = streamRows(cells().slice(0, 1), [1, 64]);
    expect(one).toEqual(["ECDSA P-256 sign", "1", "4000", "0.200", "3000", "0.300", "0.600", "0.75", "0.100", "200", "260", "60", "0.40", "0"]);
    expect(sixtyFour![7]).toBe("0.55");
    expect(sixtyFour![8]).toBe("");
  });
});
