/**
 * The key materializer's series: how many device objects it may keep and keeps for keys, and how
 * uses fare (hits, misses: unwraps, evictions, apply-time proofs). Read from a source once per scrape.
 */
import { Counter, Gauge, type Registry } from "prom-client";

/** What the key materializer reports at scrape time (KeyRecords.stats()). */
export interface KeyObjectsSnapshot {
  budget: number;
  resident: number;
  hits: number;
  misses: number;
  evictions: number;
  proofs: number;
}

/**
 * Registers `hsmd_key_objects_budget` and `hsmd_key_objects_resident` (gauges) and
 * `hsmd_key_use_hits_total`, `hsmd_key_use_misses_total`, `hsmd_key_evictions_total`,
 * `hsmd_key_proofs_total` (counters, monotonic since start) in `registry`, read from `fn`. A source
 * that throws keeps the previous scrape's values.
 */
export function registerKeyObjects(registry: Registry, fn: () => KeyObjectsSnapshot): void {
  let last: KeyObjectsSnapshot | undefined;
  const read = (): KeyObjectsSnapshot | undefined => {
    try {
      last = fn();
    } catch {
      // keep the previous values
    }
    return last;
  };
  const gauge = (name: string, help: string, pick: (s: KeyObjectsSnapshot) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const s = read();
        if (s) this.set(pick(s));
      },
    });
  const counter = (name: string, help: string, pick: (s: KeyObjectsSnapshot) => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const s = read();
        if (!s) return;
        this.reset();
        this.inc(pick(s));
      },
    });
  gauge("hsmd_key_objects_budget", "Device objects hsmd may keep materialized for keys (device.objectBudget; a key pair is 2).", (s) => s.budget);
  gauge("hsmd_key_objects_resident", "Device objects held for keys now (resident, being unwrapped or being destroyed).", (s) => s.resident);
  counter("hsmd_key_use_hits_total", "Key uses that found the key materialized in the device.", (s) => s.hits);
  counter("hsmd_key_use_misses_total", "Keys unwrapped into the device from their records for a use (or an explicit materialization).", (s) => s.misses);
  counter("hsmd_key_evictions_total", "Keys destroyed in the device to make room within device.objectBudget.", (s) => s.evictions);
  counter("hsmd_key_proofs_total", "New records unwrapped once at apply time to prove this node can use them.", (s) => s.proofs);
}
