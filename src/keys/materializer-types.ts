/**
 * The materializer's vocabulary: its budget defaults, its options and counters, its entries, and
 * how many device objects a key takes (see materializer.ts).
 */
import type { KeyDevice, WrappedMaterial } from "../pkcs11";
import type { KeyRecord } from "./record";
import { versionOf } from "./versions";
import { algorithmOf, isSecret } from "./spec";

/** The default budget of device objects for keys (config device.objectBudget) when the profile sets no maxObjects. */
export const DEFAULT_OBJECT_BUDGET = 20_000;
/** The smallest budget accepted: below it, a handful of concurrent uses would queue on each other. */
export const MIN_OBJECT_BUDGET = 16;

/** The device calls the materializer makes (a unit test may hand a fake). */
export type MaterializerDevice = Pick<KeyDevice, "materialize" | "createPublic" | "destroy">;

/** What a {@link Materializer} is built from. */
export interface MaterializerOptions {
  device: MaterializerDevice;
  /** Device objects kept for keys (each part counts: a key pair is 2). */
  budget: number;
  /** A version's wrapped material (from the record, a cache or the store); undefined when it has none. */
  material: (r: KeyRecord, version: number) => Promise<WrappedMaterial | undefined>;
  log?: (msg: string) => void;
}

/** The materializer's counters (for /metrics and the bench). */
export interface MaterializerStats {
  /** device.objectBudget */
  budget: number;
  /** Device objects counted as held for keys now (resident, being loaded or being destroyed). */
  resident: number;
  /** Uses that found their key resident. */
  hits: number;
  /** Unwraps of a key into the device for a use or an explicit materialization. */
  misses: number;
  /** Keys destroyed to make room. */
  evictions: number;
  /** Apply-time proofs of new records (one unwrap each). */
  proofs: number;
}

/** Where an entry's key stands. */
export type State = "loading" | "resident" | "evicting";

/** One key version the device holds (or is about to hold, or is destroying). */
export interface Entry {
  /** The version's device object id (versions.ts deviceIdOf: the key id for version 1, `K.vN` past it). */
  readonly id: string;
  /** Device objects it takes. */
  readonly cost: number;
  /** Lives only in this device: never evicted. */
  readonly local: boolean;
  state: State;
  /** Uses running on it now (and its own load). */
  pins: number;
  /** Its objects are counted in `used`. */
  counted: boolean;
  /** The record was deleted while it loaded: destroyed once the load ends. */
  forgotten: boolean;
  /** Settles when the load (resolves or rejects) or the eviction (resolves) is done. */
  settled: Promise<void>;
}

/** Device objects a record's key takes: 1 for a secret or public-only key, 2 for a pair. */
export const objectsOf = (r: KeyRecord): number => (r.publicOnly || isSecret(algorithmOf(r.spec)) ? 1 : 2);

/** A key version that lives only in its device (residency "device"); default: the primary version. */
export const isLocal = (r: KeyRecord, version = r.currentVersion) => versionOf(r, version)?.residency === "device";
