/** Automatic rotation's rules (issue 13): the period's bounds, when the next rotation is due. */
import { invalid } from "../errors";
import type { KeyRecord } from "./record";
import { stateOf } from "./record";

/**
 * The lifecycle timing rotation needs (config.lifecycle: src/config's LifecycleConfig has these
 * fields; keys/ does not import config/).
 */
export interface RotationTiming {
  /** Length of one "day" of rotation periods, in ms. */
  readonly dayMs: number;
  /** Automatic rotation period bounds, in days (as KMS: 90 to 2560). */
  readonly rotationPeriodDays: { readonly min: number; readonly max: number };
}

/** One real day, KMS' bounds. */
export const DEFAULT_ROTATION_TIMING: RotationTiming = Object.freeze({ dayMs: 86_400_000, rotationPeriodDays: Object.freeze({ min: 90, max: 2560 }) });

/**
 * A record's `rotation` for a period of `days` set at `now` (ms): undefined for 0 (off); the next
 * rotation is due a period from now. INVALID_ARGUMENT outside the configured bounds.
 */
export function rotationFor(t: RotationTiming, days: number, now: number): KeyRecord["rotation"] {
  if (days === 0) return undefined;
  const { min, max } = t.rotationPeriodDays;
  if (!Number.isInteger(days) || days < min || days > max) throw invalid(`rotation_period_days must be 0 (off) or ${min} to ${max} days (lifecycle.rotationPeriodDays); got ${days}`);
  return { periodDays: days, nextAt: new Date(now + days * t.dayMs).toISOString() };
}

/**
 * When the rotation after the one due at `r.rotation.nextAt` is due: a period later, so the schedule
 * keeps its rhythm; if that is already past (the cluster was down for periods), a period from `now`
 * (one rotation, not a burst of catch-up rotations).
 */
export function nextRotationAt(t: RotationTiming, rotation: NonNullable<KeyRecord["rotation"]>, now: number): string {
  const period = rotation.periodDays * t.dayMs;
  const next = Date.parse(rotation.nextAt) + period;
  return new Date(next > now ? next : now + period).toISOString();
}

/** Is an automatic rotation of the record due at `now` (ms)? Only ENABLED, GENERATED keys rotate. */
export function rotationDue(r: KeyRecord, now: number): boolean {
  return !!r.rotation && Date.parse(r.rotation.nextAt) <= now && stateOf(r) === "ENABLED" && r.origin === "GENERATED";
}
