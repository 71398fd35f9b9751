/**
 * The daemon's lifecycle passes (issue 13), one function per pass: each answers a DueTimer the
 * daemon starts after it serves and stops first. Every node runs every pass; each due change is a
 * compare-and-put on its record, so the cluster makes it once.
 */
import type { AuditLog } from "../audit";
import type { Config } from "../config";
import type { DueTimer, KeyService } from "../keys";

/** What a pass needs of the daemon. */
export interface TimerHost {
  readonly config: Config;
  readonly keys: KeyService;
  readonly audit: AuditLog;
}

/**
 * Scheduled rotation, every lifecycle.checkIntervalMs: each rotation this node made is audited as a
 * daemon-originated change (operation "ScheduledRotation", no user, the key id, the new version).
 */
export function rotationTimer(d: TimerHost, log?: (msg: string) => void): DueTimer {
  return d.keys.rotationTimer({
    intervalMs: d.config.lifecycle.checkIntervalMs,
    log,
    onRotated: async (keyId, version) => {
      await d.audit.append({ operation: "ScheduledRotation", keyId, status: "OK", detail: `version ${version} is the primary (automatic rotation)` }, { sync: true });
    },
  });
}
