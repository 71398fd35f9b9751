/**
 * States and metadata of keys (issue 13): enable, disable, schedule and cancel deletion, description
 * and tags, and the due pass. Every change is a compare-and-put of the record (updateRecord), so it
 * replicates to every node as a record write and never loses a concurrent change.
 */
import { invalid } from "../errors";
import type { StateStore } from "../store";
import { type DueAuditEntry, type DuePassDeps, type DuePassResult, duePass } from "./deletion-schedule";
import type { KeyRecords } from "./key-records";
import { type DeletionWindow, deletionCancelled, disabled, enabled, scheduledForDeletion, windowDays } from "./key-states";
import { checkDescription, checkTagKey, checkTags, withDescription, withTags, withoutTags } from "./key-tags";
import { toApiKey, type KeyRecord } from "./record";
import { updateRecord } from "./record-update";
import type { Key } from "./types";
import { checkKeyId } from "./validation";

/** Default lifecycle bounds (config.lifecycle's defaults: KMS's). */
export const DEFAULT_DELETION_WINDOW: DeletionWindow = Object.freeze({ dayMs: 86_400_000, deletionWindowDays: Object.freeze({ min: 7, max: 30 }) });

/** What {@link KeyLifecycle} needs. */
export interface KeyLifecycleOptions {
  store: StateStore;
  records: KeyRecords;
  window?: DeletionWindow;
  /** A destroyed key's aliases go with its record (deletion-schedule.ts). */
  aliases?: DuePassDeps["aliases"];
  /** The clock (tests). @default Date.now */
  now?: () => number;
  log?: (msg: string) => void;
}

/** Key states and metadata: the rules of each change; the access layer has checked the caller owns the key. */
export class KeyLifecycle {
  private readonly window: DeletionWindow;
  private readonly now: () => number;

  constructor(private readonly opts: KeyLifecycleOptions) {
    this.window = opts.window ?? DEFAULT_DELETION_WINDOW;
    this.now = opts.now ?? Date.now;
  }

  private async change(keyId: string, fn: (r: KeyRecord) => KeyRecord | undefined, viewerId?: string): Promise<Key> {
    checkKeyId(keyId);
    const { record } = await updateRecord(this.opts, keyId, fn);
    return toApiKey(record, viewerId);
  }

  /** EnableKey: DISABLED → ENABLED (ENABLED: no change). */
  enableKey(keyId: string, viewerId?: string): Promise<Key> {
    return this.change(keyId, enabled, viewerId);
  }

  /** DisableKey: ENABLED → DISABLED (DISABLED: no change). */
  disableKey(keyId: string, viewerId?: string): Promise<Key> {
    return this.change(keyId, disabled, viewerId);
  }

  /** ScheduleKeyDeletion: PENDING_DELETION for `days` (0: the max of lifecycle.deletionWindowDays). */
  scheduleKeyDeletion(keyId: string, days: number, viewerId?: string): Promise<Key> {
    const d = windowDays(days, this.window);
    const date = new Date(this.now() + d * this.window.dayMs).toISOString();
    return this.change(keyId, (r) => scheduledForDeletion(r, date), viewerId);
  }

  /** CancelKeyDeletion: back to the state the key had when its deletion was scheduled. */
  cancelKeyDeletion(keyId: string, viewerId?: string): Promise<Key> {
    return this.change(keyId, deletionCancelled, viewerId);
  }

  /** UpdateKeyDescription ("" removes it). */
  updateKeyDescription(keyId: string, description: string, viewerId?: string): Promise<Key> {
    const d = checkDescription(description);
    return this.change(keyId, (r) => withDescription(r, d), viewerId);
  }

  /** TagKey: adds or replaces tags (at least one). */
  tagKey(keyId: string, tags: Record<string, string>, viewerId?: string): Promise<Key> {
    const t = checkTags(tags);
    if (Object.keys(t).length === 0) throw invalid("tags is empty: give at least one tag to add");
    return this.change(keyId, (r) => withTags(r, t), viewerId);
  }

  /** UntagKey: removes tags by key (unknown keys: no-op). */
  untagKey(keyId: string, tagKeys: string[], viewerId?: string): Promise<Key> {
    for (const k of tagKeys) checkTagKey(k, "tag_keys entry");
    return this.change(keyId, (r) => withoutTags(r, tagKeys), viewerId);
  }

  /** One due pass at `now` (deletions and expiries that fell due); see deletion-schedule.ts. */
  duePass(now: number, audit?: (e: DueAuditEntry) => Promise<unknown>): Promise<DuePassResult> {
    return duePass({ store: this.opts.store, records: this.opts.records, audit, log: this.opts.log, aliases: this.opts.aliases }, now);
  }
}
