/**
 * The pure statistics of `npm run bench:scale` (scripts/bench-scale-stats.ts): replication lag
 * from commit and watermark events, Prometheus text sums, hit ratios, and the targets' verdicts.
 */
import { describe, expect, it } from "vitest";
import { hitRatio, promSum, quantile, replicationLags, type ScaleRun, targetRows } from "../../scripts/bench-scale-stats";

describe("replicationLags", () => {
  const nodes = ["n1", "n2", "n3"];

  it("takes, per other node, the first watermark at or past the key's revision", () => {
    const keys = [{ id: "a", revision: 10, at: 1000, createdOn: "n1" }];
    const marks = [
      { node: "n2", revision: 9, at: 1001 },
      { node: "n2", revision: 12, at: 1007 },
      { node: "n2", revision: 15, at: 1020 },
      { node: "n3", revision: 10, at: 1003 },
      { node: "n1", revision: 10, at: 1000 },
    ];
    const r = replicationLags(keys, marks, nodes);
    expect(r.lags.sort((x, y) => x - y)).toEqual([3, 7]);
    expect(r.missing).toBe(0);
  });

  it("counts the creator when the creator is unknown, a watermark seen first as 0, and a node that never got there as missing", () => {
    const keys = [{ id: "a", revision: 20, at: 500 }];
    const marks = [
      { node: "n1", revision: 25, at: 400 },
      { node: "n2", revision: 21, at: 650 },
      { node: "n3", revision: 19, at: 900 },
    ];
    const r = replicationLags(keys, marks, nodes);
    expect(r.lags.sort((x, y) => x - y)).toEqual([0, 150]);
    expect(r.missing).toBe(1);
  });

  it("ignores a watermark that went backwards (a stale row seen late)", () => {
    const keys = [{ id: "a", revision: 30, at: 0, createdOn: "n1" }];
    const marks = [
      { node: "n2", revision: 40, at: 5 },
      { node: "n2", revision: 29, at: 6 },
      { node: "n3", revision: 31, at: 9 },
    ];
    expect(replicationLags(keys, marks, nodes).lags.sort((x, y) => x - y)).toEqual([5, 9]);
  });
});

describe("promSum", () => {
  const text = [
    "# HELP hsmd_key_use_hits_total Key uses served by a resident object.",
    "# TYPE hsmd_key_use_hits_total counter",
    'hsmd_key_use_hits_total{kind="aes"} 7',
    'hsmd_key_use_hits_total{kind="ec"} 5',
    "hsmd_key_use_hits_total_extra 100",
    "hsmd_key_use_misses_total 3",
  ].join("\n");

  it("sums every label set of exactly that name", () => {
    expect(promSum(text, "hsmd_key_use_hits_total")).toBe(12);
    expect(promSum(text, "hsmd_key_use_misses_total")).toBe(3);
  });

  it("is undefined for a metric the text does not have", () => {
    expect(promSum(text, "hsmd_key_evictions_total")).toBeUndefined();
  });
});

describe("hitRatio and quantile", () => {
  it("is the phase's hits over its uses, undefined without counters or uses", () => {
    expect(hitRatio({ hits: 10, misses: 5 }, { hits: 40, misses: 15 })).toBe(0.75);
    expect(hitRatio({ hits: 1, misses: 1 }, { hits: 1, misses: 1 })).toBeUndefined();
    expect(hitRatio({}, { hits: 1, misses: 1 })).toBeUndefined();
  });

  it("takes the nearest rank below, NaN on an empty sample", () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(quantile(xs, 0.5)).toBe(51);
    expect(quantile(xs, 0.99)).toBe(100);
    expect(quantile([], 0.5)).toBeNaN();
  });
});

describe("targetRows", () => {
  const run = (over: Partial<ScaleRun>): ScaleRun => ({
    keys: 1_000_000,
    inflight: 32,
    ceiling: 1000,
    ceilingRecordBytes: 1500,
    fillRate: 600,
    fillFailed: 0,
    lag: { lags: Array.from({ length: 100 }, () => 10), missing: 0, marks: 300 },
    dbSize: 2e9,
    dbSizeInUse: 1.9e9,
    rss: { n1: 500 * 1024 ** 2, n2: 600 * 1024 ** 2 },
    recordBytes: { "AES-256": 700 },
    hot: { ops: 1, failed: 0, p50: 1.05, p99: 2 },
    cold: { ops: 1, failed: 0, p50: 2, p99: 4 },
    catchUp: { behind: 100_000, readyMs: 1000, signMs: 2000 },
    ...over,
  });
  const verdicts = (rows: string[][]) => rows.map((r) => r[3]);

  it("meets every target when the figures do", () => {
    expect(verdicts(targetRows(run({}), run({ keys: 10_000, hot: { ops: 1, failed: 0, p50: 1, p99: 2 } })))).toEqual(["yes", "yes", "yes", "yes", "yes", "yes"]);
  });

  it("misses each target its figure misses, and reads n/a what is unknown", () => {
    const bad = run({
      fillRate: 400,
      lag: { lags: [], missing: 3, marks: 0 },
      rss: { n1: 2 * 1024 ** 3 },
      cold: { ops: 1, failed: 0, p50: 2, p99: 6 },
      hot: { ops: 1, failed: 0, p50: 1.2, p99: 2 },
      catchUp: { behind: 100_000, readyMs: 1000, signMs: 31_000 },
    });
    expect(verdicts(targetRows(bad, run({ keys: 10_000, hot: { ops: 1, failed: 0, p50: 1, p99: 2 } })))).toEqual(["no", "n/a", "no", "no", "no", "no"]);
    expect(verdicts(targetRows(run({ catchUp: undefined })))).toEqual(["yes", "yes", "n/a", "yes", "n/a", "yes"]);
  });
});
