import { type EventLoopUtilization, performance } from "node:perf_hooks";
import { Gauge, type Registry } from "prom-client";

/**
 * Registers `hsmd_event_loop_utilization`: the share of wall time (0 to 1) the event loop was busy
 * rather than waiting for I/O, from `performance.eventLoopUtilization()`, over the window since the
 * previous scrape (since registration for the first). Device work that runs on the main thread
 * (the synchronous `C_*Init` calls) shows here; a benchmark scrapes before and after a cell to read
 * the cell's own figure.
 */
export function registerEventLoopUtilization(registry: Registry): void {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  new Gauge({
    name: "hsmd_event_loop_utilization",
    help: "Share of wall time (0-1) the event loop was busy, over the window since the previous scrape.",
    registers: [registry],
    collect() {
      const now = performance.eventLoopUtilization();
      this.set(performance.eventLoopUtilization(now, last).utilization);
      last = now;
    },
  });
}
