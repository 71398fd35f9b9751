/**
 * Starts a monotonic stopwatch and returns a function giving the seconds elapsed since, read from
 * `process.hrtime.bigint()` so that wall-clock adjustments never produce negative or skewed durations.
 * Cheap enough to wrap every RPC and every device call.
 */
export function timer(): () => number {
  const start = process.hrtime.bigint();
  return () => Number(process.hrtime.bigint() - start) / 1e9;
}
