/** The daemon's due pass of key states (issue 13, lane S): scheduled deletions and expiries. */
import type { AuditLog } from "../audit";
import type { Config } from "../config";
import { DueTimer, type KeyService } from "../keys";

/**
 * A DueTimer on this node running KeyService.duePass every lifecycle.checkIntervalMs. Every node
 * runs one; the store's compare-and-put lets one write land per key, and the node whose write landed
 * writes the audit entry (durably) to its own log. `paused`: the node serves nothing (removed).
 */
export function startKeyStateTimer(keys: KeyService, audit: AuditLog, config: Config, log: (msg: string) => void, paused: () => boolean): DueTimer {
  const timer = new DueTimer({
    name: "key states (scheduled deletions, expiries)",
    intervalMs: config.lifecycle.checkIntervalMs,
    log,
    tick: async (now) => {
      if (paused()) return;
      const done = await keys.duePass(now, (e) => audit.append(e, { sync: true }));
      for (const id of done.destroyed) log(`key ${id} destroyed: its scheduled deletion date passed`);
      for (const id of done.expired) log(`key ${id} is PENDING_IMPORT: its valid_to passed (material destroyed)`);
    },
  });
  timer.start();
  return timer;
}
