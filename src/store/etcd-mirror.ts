/**
 * The etcd store's local copy of its cluster prefix: the state as the watch (and full reads) told it,
 * in a map with sorted keys, plus an overlay of this node's own committed writes until the watch
 * confirms them, so that the node reads its own writes. Reads never leave the process: they keep
 * answering, with what this node knows, while etcd is unreachable. Keys under the unmirrored prefixes
 * are not held at all (their events pass through to subscribers; the store reads them from etcd).
 */
import type { IKeyValue, ITxnResponse, IWatchResponse } from "etcd3";
import { invalid } from "../errors";
import type { Snapshot } from "./etcd-client";
import { SortedKeys } from "./sorted-keys";
import type { ListOptions, Op, StoreEntry, WatchEvent } from "./types";

function copyEntry(e: StoreEntry): StoreEntry {
  return { ...e, value: Buffer.from(e.value) };
}

/** How the mirror turns etcd keys and key-values into the store's (see EtcdClient). */
export interface Keyspace {
  keyOf(etcdKey: Buffer): string | undefined;
  entryOf(key: string, kv: IKeyValue): StoreEntry;
  /** keys the mirror does not hold */
  isUnmirrored(key: string): boolean;
}

/** The mirror of one prefix; `applied` is the revision of the last watch event or full read applied. */
export class EtcdMirror {
  /** the state as of `applied`, from the watch and full reads only: what subscribers have been told */
  private readonly base = new Map<string, StoreEntry>();
  private readonly keys = new SortedKeys();
  /** own committed writes above `applied`, until the watch delivers them (null: deleted) */
  private readonly overlay = new Map<string, { entry: StoreEntry | null; revision: number }>();
  /** every change at or below this revision is in the mirror */
  applied = 0;

  constructor(private readonly keyspace: Keyspace) {}

  /** Fills the empty mirror from the full read at open. */
  load(snap: Snapshot): void {
    for (const e of snap.entries) this.setBase(e.key, e);
    this.applied = snap.revision;
  }

  /** keys in the mirror, own writes included */
  keyCount(): number {
    let keys = this.base.size;
    for (const [k, o] of this.overlay) {
      const inBase = this.base.has(k);
      if (o.entry && !inBase) keys++;
      else if (!o.entry && inBase) keys--;
    }
    return keys;
  }

  /** own committed writes not yet confirmed by the watch */
  get pendingOwnWrites(): number {
    return this.overlay.size;
  }

  /** One key (a copy), own writes first. */
  get(key: string): StoreEntry | undefined {
    const o = this.overlay.get(key);
    const e = o ? o.entry : this.base.get(key);
    return e ? copyEntry(e) : undefined;
  }

  /** Entries under prefix in key order (copies), own writes merged in; see StateStore.list. */

  list(prefix: string, opts: ListOptions = {}): StoreEntry[] {
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 0)) throw invalid(`list limit must be >= 0, got ${String(opts.limit)}`);
    const out: StoreEntry[] = [];
    if (limit === 0) return out;
    const after = opts.startAfter;
    const fromBase = after !== undefined && after >= prefix ? this.keys.from(after, true) : this.keys.from(prefix);
    const nextBase = (): string | undefined => {
      const r = fromBase.next();
      return r.done || !r.value.startsWith(prefix) ? undefined : r.value;
    };
    const own = [...this.overlay.keys()].filter((k) => k.startsWith(prefix) && (after === undefined || k > after)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    let b = nextBase();
    let i = 0;
    while (out.length < limit) {
      const ok = own[i];
      if (b === undefined && ok === undefined) break;
      if (ok !== undefined && (b === undefined || ok <= b)) {
        const e = this.overlay.get(ok)!.entry;
        if (e) out.push(copyEntry(e));
        i++;
        if (ok === b) b = nextBase();
      } else {
        const k = b!;
        if (!this.overlay.has(k)) out.push(copyEntry(this.base.get(k)!));
        b = nextBase();
      }
    }
    return out;
  }

  /** How many keys are under prefix, own writes included. */
  count(prefix: string): number {
    let n = 0;
    if (prefix === "") n = this.base.size;
    else {
      for (const k of this.keys.from(prefix)) {
        if (!k.startsWith(prefix)) break;
        n++;
      }
    }
    for (const [k, o] of this.overlay) {
      if (!k.startsWith(prefix)) continue;
      const inBase = this.base.has(k);
      if (o.entry && !inBase) n++;
      else if (!o.entry && inBase) n--;
    }
    return n;
  }

  /**
   * The current state under prefix as events, one put per key in modRevision order: what a subscriber
   * that knows nothing (watch from 0) needs to converge.
   */
  currentAsEvents(prefix: string): WatchEvent[] {
    const out: WatchEvent[] = [];
    for (const k of this.keys.from(prefix)) {
      if (!k.startsWith(prefix)) break;
      const e = this.base.get(k)!;
      out.push({ revision: e.modRevision, type: "put", key: k, value: e.value });
    }
    out.sort((a, b) => a.revision - b.revision || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return out;
  }

  private setBase(key: string, entry: StoreEntry | null): void {
    if (entry) {
      if (!this.base.has(key)) this.keys.insert(key);
      this.base.set(key, entry);
    } else if (this.base.delete(key)) {
      this.keys.delete(key);
    }
  }

  /** Applies a batch of watch events in order (duplicates skipped); answers the events to publish. */
  applyEvents(events: IWatchResponse["events"]): WatchEvent[] {
    const floor = this.applied; // a revision is applied whole, so anything at or below it is a duplicate
    const out: WatchEvent[] = [];
    for (const ev of events) {
      const revision = Number(ev.kv.mod_revision);
      if (!(revision > floor)) continue;
      const key = this.keyspace.keyOf(ev.kv.key);
      if (key === undefined) continue;
      if (revision > this.applied) this.applied = revision;
      if (this.keyspace.isUnmirrored(key)) {
        // Delivered to subscribers, not held.
        out.push(String(ev.type).toUpperCase() === "DELETE" ? { revision, type: "delete", key } : { revision, type: "put", key, value: Buffer.from(ev.kv.value ?? Buffer.alloc(0)) });
        continue;
      }
      if (String(ev.type).toUpperCase() === "DELETE") {
        this.setBase(key, null);
        out.push({ revision, type: "delete", key });
      } else {
        const entry = this.keyspace.entryOf(key, ev.kv);
        this.setBase(key, entry);
        out.push({ revision, type: "put", key, value: entry.value });
      }
      const own = this.overlay.get(key);
      if (own && own.revision <= revision) this.overlay.delete(key);
    }
    return out;
  }

  /**
   * Converges on a full read made after the watch fell behind: answers synthetic put/delete events at
   * the read revision for every difference, in key order.
   */
  applySnapshot(snap: Snapshot): WatchEvent[] {
    const R = snap.revision;
    const fresh = new Map<string, StoreEntry>();
    for (const e of snap.entries) fresh.set(e.key, e);
    const diff: { key: string; entry: StoreEntry | null }[] = [];
    for (const k of this.base.keys()) if (!fresh.has(k)) diff.push({ key: k, entry: null });
    for (const e of snap.entries) {
      const old = this.base.get(e.key);
      if (!old || old.modRevision !== e.modRevision || old.createRevision !== e.createRevision) diff.push({ key: e.key, entry: e });
    }
    diff.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const out: WatchEvent[] = [];
    for (const d of diff) {
      this.setBase(d.key, d.entry);
      out.push(d.entry ? { revision: R, type: "put", key: d.key, value: d.entry.value } : { revision: R, type: "delete", key: d.key });
    }
    // Under unmirrored prefixes the mirror knows nothing to diff against: what changed is passed on.
    for (const e of snap.unmirroredChanged ?? []) out.push({ revision: R, type: "put", key: e.key, value: e.value });
    for (const [k, o] of this.overlay) if (o.revision <= R) this.overlay.delete(k);
    if (R > this.applied) this.applied = R;
    return out;
  }

  /** Records a committed own write in the overlay (unless the watch already delivered it). */
  applyOwnWrite(ops: Op[], res: ITxnResponse, revision: number): void {
    if (revision <= this.applied) return; // the watch was faster
    ops.forEach((op, i) => {
      if (this.keyspace.isUnmirrored(op.key)) return; // read from etcd, which has it
      const cur = this.overlay.get(op.key);
      if (cur && cur.revision >= revision) return;
      if (op.type === "put") {
        const prev = res.responses[i]?.response_put?.prev_kv;
        this.overlay.set(op.key, {
          revision,
          entry: {
            key: op.key,
            value: op.value,
            modRevision: revision,
            createRevision: prev ? Number(prev.create_revision) : revision,
            version: prev ? Number(prev.version) + 1 : 1,
          },
        });
      } else if (Number(res.responses[i]?.response_delete_range?.deleted ?? 0) > 0) {
        this.overlay.set(op.key, { revision, entry: null });
      }
    });
  }
}
