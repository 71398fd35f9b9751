import { availableParallelism } from "node:os";

/**
 * The default number of session workers: one per core but one (the main thread still runs gRPC,
 * auth and audit), at least one. Measured in docs/spikes/worker-device.md: past one worker per core
 * nothing is gained.
 */
export function defaultWorkerCount(): number {
  return Math.max(1, availableParallelism() - 1);
}
