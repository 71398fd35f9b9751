/**
 * The daemon's start of key replication: the watermarks followed (and an older hsmd's per-key
 * coverage rows migrated away), the records loaded, in a cluster the catch-up from where this node
 * left off (src/cluster/catch-up.ts), then the applier following the store from the load revision.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { type Applier, type Watermarks, catchUp } from "../cluster";
import type { KeyService } from "../keys";
import type { StateStore } from "../store";

/** Where this node left off, from its local `applied-revision` file (undefined when it has none). */
export function appliedRevisionFile(dataDir: string): number | undefined {
  const text = readFileSync(join(dataDir, "applied-revision"), { encoding: "utf8", flag: "a+" }).trim();
  const n = Number.parseInt(text, 10);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** What {@link startReplication} works on. */
export interface StartReplication {
  store: StateStore;
  keys: KeyService;
  applier: Applier;
  /** In a cluster (absent on a single node). */
  watermarks?: Watermarks;
  dataDir: string;
  /** `hsmd start --full-check`. */
  fullCheck?: boolean;
  log: (msg: string) => void;
}

/**
 * Loads the records and starts the applier from the revision they were read at; in a cluster, first
 * proves what changed since this node's watermark (its row, else the local file), or every record
 * when the store cannot tell or the operator asked. The watermark advances only once that is done.
 */
export async function startReplication(o: StartReplication): Promise<void> {
  const { store, keys, applier, watermarks, log } = o;
  if (watermarks) {
    await watermarks.start();
    await watermarks.removeLegacyCoverage();
  }
  const loadedAt = await keys.start();
  if (watermarks) {
    const row = await watermarks.ownFromStore();
    const since = row ?? appliedRevisionFile(o.dataDir);
    log(`applier: last applied revision ${since ?? "unknown"} (${row !== undefined ? "watermark row" : "applied-revision file"}), store at ${store.revision()}`);
    await catchUp({ store, records: keys.records, since, fullCheck: o.fullCheck, failures: applier.applyFailures, log });
  }
  applier.start(loadedAt);
}
