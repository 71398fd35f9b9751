export { Metrics, LATENCY_BUCKETS } from "./metrics";
export { timer } from "./timer";
export type { MetricsOptions, PoolSnapshot } from "./metrics";
