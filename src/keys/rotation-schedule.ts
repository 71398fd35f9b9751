/**
 * The scheduled rotation pass (issue 13): on every node, every lifecycle.checkIntervalMs, each key
 * whose rotation is due is rotated (KeyRotation.rotateIfDue). Nodes race; the compare-and-put on the
 * record's rotation.nextAt lets one version land per period, cluster-wide.
 */
import { DueTimer } from "./due-timer";
import type { KeyRecords } from "./key-records";
import type { KeyRotation } from "./key-rotation";
import { rotationDue } from "./rotation-policy";

/** What the pass works on. */
export interface RotationScheduleOptions {
  records: Pick<KeyRecords, "values">;
  rotation: Pick<KeyRotation, "rotateIfDue">;
  /** Called for each rotation this node made (the daemon audits it). */
  onRotated?: (keyId: string, version: number) => void | Promise<void>;
  log?: (msg: string) => void;
}

/**
 * One pass at `now`: every key this node knows whose rotation is due, one at a time (the device
 * generates one key at a time anyway; a pass is rare). A key that fails is logged and retried by
 * the next pass. Answers the rotations this node made.
 */
export async function rotationPass(o: RotationScheduleOptions, now: number): Promise<Array<{ keyId: string; version: number }>> {
  const due: string[] = [];
  for (const r of o.records.values()) if (rotationDue(r, now)) due.push(r.id);
  const made: Array<{ keyId: string; version: number }> = [];
  for (const keyId of due) {
    try {
      const version = await o.rotation.rotateIfDue(keyId, now);
      if (version === undefined) continue;
      made.push({ keyId, version });
      await o.onRotated?.(keyId, version);
    } catch (e) {
      o.log?.(`rotation: key ${keyId}: the scheduled rotation failed (${e instanceof Error ? e.message : String(e)}); the next pass retries`);
    }
  }
  return made;
}

/** The rotation pass on a {@link DueTimer} (the daemon starts and stops it). */
export function rotationTimer(o: RotationScheduleOptions & { intervalMs: number; now?: () => number }): DueTimer {
  return new DueTimer({ name: "rotation", intervalMs: o.intervalMs, now: o.now, log: o.log, tick: async (now) => void (await rotationPass(o, now)) });
}
