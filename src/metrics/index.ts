/** Prometheus metrics of the daemon. */
export { Metrics, LATENCY_BUCKETS } from "./metrics";
export { timer } from "./timer";
export type { MetricsOptions, PoolSnapshot } from "./metrics";
export type { KeyObjectsSnapshot } from "./key-objects";
