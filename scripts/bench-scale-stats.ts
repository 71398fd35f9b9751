/**
 * The pure part of `npm run bench:scale`: replication lag from the keys' commit events and the
 * nodes' watermark events, Prometheus text parsing, the figures of one run (ScaleRun), and the
 * issue's targets computed from them (goal, result, met) — no I/O, unit-tested.
 */

/** A node's watermark as the bench saw it change: `hsmd/<cluster>/watermarks/<node>` = {revision, at}. */
export interface WatermarkEvent {
  node: string;
  revision: number;
  /** When the bench saw the row change (ms, Date.now()). */
  at: number;
}

/** A key create the bench saw in its watch on `keys/`: the commit revision and when it was seen. */
export interface KeySeen {
  id: string;
  revision: number;
  at: number;
  /** The node the create went through (its own watermark is not a replication). */
  createdOn?: string;
}

/** Lags (ms) of every sampled key on every other node, and how many (key, node) pairs never reached it. */
export interface LagResult {
  lags: number[];
  missing: number;
  /** Watermark changes seen (0: the daemons publish no watermark rows, the lag is unknown). */
  marks: number;
}

/**
 * For each key and each node other than its creator: the first time that node's watermark was seen
 * at or past the key's revision, less the time the key's commit was seen (0 when the watermark was
 * seen first). A pair whose watermark never got there counts in `missing`.
 */
export function replicationLags(keys: KeySeen[], marks: WatermarkEvent[], nodes: string[]): LagResult {
  const byNode = new Map<string, { revs: number[]; ats: number[] }>();
  for (const node of nodes) {
    const own = marks.filter((m) => m.node === node).sort((a, b) => a.at - b.at);
    const revs: number[] = [];
    const ats: number[] = [];
    let high = -1;
    // A watermark only moves up: keep the running maximum so the search below can bisect.
    for (const m of own) {
      if (m.revision <= high) continue;
      high = m.revision;
      revs.push(m.revision);
      ats.push(m.at);
    }
    byNode.set(node, { revs, ats });
  }
  const lags: number[] = [];
  let missing = 0;
  for (const k of keys) {
    for (const node of nodes) {
      if (node === k.createdOn) continue;
      const { revs, ats } = byNode.get(node)!;
      let lo = 0;
      let hi = revs.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (revs[mid]! >= k.revision) hi = mid;
        else lo = mid + 1;
      }
      if (lo === revs.length) missing++;
      else lags.push(Math.max(0, ats[lo]! - k.at));
    }
  }
  return { lags, missing, marks: marks.length };
}

/** The p-quantile (0..1) of a sample, nearest rank below; NaN when empty. */
export function quantile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
}

/**
 * The sum of a metric's samples (every label set) in Prometheus text exposition; undefined when the
 * text has no sample of that name.
 */
export function promSum(text: string, name: string): number | undefined {
  let sum: number | undefined;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || line.startsWith("#")) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue;
    const value = Number(
      rest
        .replace(/^\{[^}]*\}/, "")
        .trim()
        .split(/\s+/)[0],
    );
    if (Number.isFinite(value)) sum = (sum ?? 0) + value;
  }
  return sum;
}

/** Hits ÷ (hits + misses) over a phase, from counters read before and after; undefined without counters or uses. */
export function hitRatio(before: { hits?: number; misses?: number }, after: { hits?: number; misses?: number }): number | undefined {
  if (before.hits === undefined || after.hits === undefined || before.misses === undefined || after.misses === undefined) return undefined;
  const hits = after.hits - before.hits;
  const misses = after.misses - before.misses;
  return hits + misses > 0 ? hits / (hits + misses) : undefined;
}

/** Latency quantiles of one sign phase (ms) and the cache's hit ratio over it. */
export interface SignFigures {
  ops: number;
  failed: number;
  p50: number;
  p99: number;
  hitRatio?: number;
  /** Device objects evicted over the phase, summed over the nodes. */
  evictions?: number;
}

/** The catch-up of a node stopped while `behind` keys were created elsewhere (ms from its start). */
export interface CatchUpFigures {
  behind: number;
  /** Until its /readyz answered 200. */
  readyMs: number;
  /** Until a sign through it alone of the last key created while it was down succeeded. */
  signMs: number;
  /** Until its watermark (its /v1/status applied revision without one) reached the last creation's revision. */
  appliedMs?: number;
}

/** Everything one run at N keys measured. */
export interface ScaleRun {
  keys: number;
  inflight: number;
  /** Raw etcd create-if-absent txn puts per second of the record size. */
  ceiling: number;
  ceilingRecordBytes: number;
  fillRate: number;
  fillFailed: number;
  lag: LagResult;
  /** Largest member's dbSize and dbSizeInUse, bytes. */
  dbSize: number;
  dbSizeInUse: number;
  /** VmRSS of each daemon after the fill and the sign phases, bytes. */
  rss: Record<string, number>;
  /** Value bytes of the records in etcd, mean by key kind (and of an idempotency entry). */
  recordBytes: Record<string, number>;
  hot: SignFigures;
  cold: SignFigures;
  /** Each node's device object budget and resident objects after the cold phase (undefined: not reported). */
  objects?: Record<string, { budget: number; resident: number }>;
  catchUp?: CatchUpFigures;
}

const GiB = 1024 ** 3;

/** A number with `digits` decimals, "n/a" when unknown. */
export function fmt(x: number | undefined, digits = 1): string {
  return x === undefined || !Number.isFinite(x) ? "n/a" : x.toFixed(digits);
}

/** Bytes in MiB (or GiB past 1 GiB), "n/a" when unknown. */
export function fmtBytes(x: number | undefined): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x >= GiB ? `${(x / GiB).toFixed(2)} GiB` : `${(x / 1024 ** 2).toFixed(1)} MiB`;
}

const met = (ok: boolean | undefined) => (ok === undefined ? "n/a" : ok ? "yes" : "no");

/**
 * The issue's targets (goal, this run's result, met) for the run at N, with the comparison run (the
 * hot-sign goal needs it). A figure that is unknown reads n/a and is neither met nor missed.
 */
export function targetRows(run: ScaleRun, compare?: ScaleRun): string[][] {
  const ratio = run.ceiling > 0 ? run.fillRate / run.ceiling : Number.NaN;
  const lagP99 = quantile(run.lag.lags, 0.99);
  const rssMax = Math.max(...Object.values(run.rss));
  const catchUp = run.catchUp ? run.catchUp.signMs / 1000 : undefined;
  const hotDelta = compare && Number.isFinite(compare.hot.p50) && compare.hot.p50 > 0 ? run.hot.p50 / compare.hot.p50 - 1 : undefined;
  const n = run.keys.toLocaleString("en-US");
  return [
    ["fill rate ÷ etcd ceiling", "≥ 0.5", `${fmt(ratio, 2)} (${fmt(run.fillRate, 0)} / ${fmt(run.ceiling, 0)} per s)`, met(Number.isFinite(ratio) ? ratio >= 0.5 : undefined)],
    ["replication lag p99", "≤ 50 ms", `${fmt(lagP99)} ms`, met(Number.isFinite(lagP99) ? lagP99 <= 50 : undefined)],
    [
      `catch-up of ${run.catchUp?.behind.toLocaleString("en-US") ?? "-"} keys`,
      "≤ 30 s (of 100,000)",
      catchUp === undefined ? "n/a" : `${fmt(catchUp)} s`,
      met(catchUp === undefined ? undefined : catchUp <= 30),
    ],
    ["cold sign p99", "≤ 5 ms", `${fmt(run.cold.p99, 2)} ms`, met(Number.isFinite(run.cold.p99) ? run.cold.p99 <= 5 : undefined)],
    [
      `hot sign p50 at ${n} vs ${compare ? compare.keys.toLocaleString("en-US") : "-"}`,
      "within 10 %",
      hotDelta === undefined ? "n/a" : `${fmt(run.hot.p50, 2)} vs ${fmt(compare!.hot.p50, 2)} ms (${hotDelta >= 0 ? "+" : ""}${fmt(hotDelta * 100)} %)`,
      met(hotDelta === undefined ? undefined : Math.abs(hotDelta) <= 0.1),
    ],
    ["RSS per daemon (largest)", "≤ 1 GiB", fmtBytes(rssMax), met(Number.isFinite(rssMax) ? rssMax <= GiB : undefined)],
  ];
}

/** The figures of each run as rows (one column per run), for the results table. */
export function resultRows(runs: ScaleRun[]): string[][] {
  const row = (name: string, f: (r: ScaleRun) => string) => [name, ...runs.map(f)];
  const kinds = [...new Set(runs.flatMap((r) => Object.keys(r.recordBytes)))];
  return [
    row("raw etcd ceiling (txn puts/s)", (r) => `${fmt(r.ceiling, 0)} (${r.ceilingRecordBytes} B, ${r.inflight} in flight)`),
    row("fill (creations/s)", (r) => `${fmt(r.fillRate, 0)} (${fmt(r.fillRate / r.ceiling, 2)} of ceiling)${r.fillFailed ? `, ${r.fillFailed} failed` : ""}`),
    row("replication lag p50 / p99 ms", (r) =>
      r.lag.marks === 0
        ? "n/a (no watermark rows)"
        : `${fmt(quantile(r.lag.lags, 0.5))} / ${fmt(quantile(r.lag.lags, 0.99))} (n=${r.lag.lags.length}${r.lag.missing ? `, ${r.lag.missing} never reached` : ""})`,
    ),
    row("etcd DB size (in use)", (r) => `${fmtBytes(r.dbSize)} (${fmtBytes(r.dbSizeInUse)})`),
    row("daemon RSS", (r) =>
      Object.entries(r.rss)
        .map(([k, v]) => `${k} ${fmtBytes(v)}`)
        .join(", "),
    ),
    ...kinds.map((k) => row(`bytes per record: ${k}`, (r) => fmt(r.recordBytes[k], 0))),
    row("hot sign p50 / p99 ms", (r) => `${fmt(r.hot.p50, 2)} / ${fmt(r.hot.p99, 2)}${r.hot.failed ? ` (${r.hot.failed} failed)` : ""}`),
    row("cold sign p50 / p99 ms", (r) => `${fmt(r.cold.p50, 2)} / ${fmt(r.cold.p99, 2)}${r.cold.failed ? ` (${r.cold.failed} failed)` : ""}`),
    row("hit ratio hot / cold", (r) => `${fmt(r.hot.hitRatio, 3)} / ${fmt(r.cold.hitRatio, 3)}`),
    row("device objects resident / budget", (r) =>
      r.objects
        ? Object.entries(r.objects)
            .map(([k, v]) => `${k} ${v.resident} / ${v.budget}`)
            .join(", ")
        : "n/a",
    ),
    row("evictions during hot / cold", (r) => `${fmt(r.hot.evictions, 0)} / ${fmt(r.cold.evictions, 0)}`),
    row("catch-up: behind, ready / sign / applied s", (r) =>
      r.catchUp
        ? `${r.catchUp.behind}: ${fmt(r.catchUp.readyMs / 1000)} / ${fmt(r.catchUp.signMs / 1000)} / ${fmt(r.catchUp.appliedMs === undefined ? undefined : r.catchUp.appliedMs / 1000)}`
        : "n/a",
    ),
  ];
}
