/**
 * The etcd store's reads that go to etcd itself rather than to the mirror: keys under the unmirrored
 * prefixes (one key, a page-by-page listing at one revision, a count), the state of a prefix at one
 * revision for a watch from 0, and the probe of etcd's history (is a revision still there, or
 * compacted). Every read is linearizable (it goes through the etcd leader and quorum), so a node reads
 * its own committed writes; each is bounded by a deadline and answers UNAVAILABLE, saying why, when
 * no member answers in time.
 */
import type { IRangeResponse } from "etcd3";
import { invalid, unavailable } from "../errors";
import { type EtcdClient, prefixEnd } from "./etcd-client";
import { RpcFailure } from "./etcd-member";
import { RANGE_PAGE } from "./etcd-options";
import type { ListOptions, StoreEntry } from "./types";

/** Reads of one cluster prefix straight from etcd. */
export class EtcdReads {
  /** the highest revision etcd has told this store it compacted (0: none known) */
  knownCompactRevision = 0;

  constructor(private readonly client: EtcdClient) {}

  /** One key, linearizable. */
  async get(key: string, deadline: number): Promise<StoreEntry | undefined> {
    const res = await this.client.call<IRangeResponse>("read", "KV", "range", { key: this.client.etcdKey(key) }, deadline, true);
    const kv = res.kvs[0];
    return kv ? this.client.entryOf(key, kv) : undefined;
  }

  /**
   * Entries under `prefix` in key order, read page by page (never more than {@link RANGE_PAGE} keys in
   * one response) at the revision of the first page; a compaction meanwhile restarts the read.
   */
  async list(prefix: string, opts: ListOptions, deadline: number): Promise<StoreEntry[]> {
    const limit = opts.limit ?? Infinity;
    if (!(limit >= 0)) throw invalid(`list limit must be >= 0, got ${String(opts.limit)}`);
    if (limit === 0) return [];
    return (await this.range(prefix, opts.startAfter, limit, deadline, "list")).entries;
  }

  /** The keys under `prefix` (a count range: etcd sends the number, not the keys). */
  async count(prefix: string, deadline: number): Promise<number> {
    const res = await this.client.call<IRangeResponse>("count", "KV", "range", { ...this.bounds(prefix), count_only: true }, deadline, true);
    return Number(res.count);
  }

  /** Every entry under `prefix` at one revision (paged), and that revision: a watch from 0 starts from it. */
  state(prefix: string, deadline: number): Promise<{ revision: number; entries: StoreEntry[] }> {
    return this.range(prefix, undefined, Infinity, deadline, "watch");
  }

  /**
   * Whether etcd still has every change after `revision` under this prefix: a keys-only range of one
   * key at that revision succeeds (at or above the compact revision), or etcd answers that it was
   * compacted (false) or that it is a future revision (false: not this etcd's history).
   */
  async hasHistorySince(revision: number, deadline: number): Promise<boolean> {
    if (!Number.isSafeInteger(revision) || revision < 0) throw invalid(`hasHistorySince revision must be a non-negative integer, got ${String(revision)}`);
    const at = Math.max(1, revision); // revision 0 in a range means "current": a node at 0 needs revision 1 on
    if (at < this.knownCompactRevision) return false;
    try {
      await this.client.call<IRangeResponse>("history probe", "KV", "range", { ...this.bounds(""), limit: 1, keys_only: true, revision: at }, deadline, true);
      return true;
    } catch (err) {
      if (err instanceof RpcFailure && err.futureRevision) return false;
      if (err instanceof RpcFailure && err.compacted) {
        this.knownCompactRevision = Math.max(this.knownCompactRevision, at + 1);
        return false;
      }
      throw err;
    }
  }

  /** [key, range_end) of the store keys under `prefix`. */
  private bounds(prefix: string): { key: Buffer; range_end: Buffer } {
    const key = this.client.etcdKey(prefix);
    return { key: key.length > 0 ? key : Buffer.from([0]), range_end: prefixEnd(key) };
  }

  private async range(prefix: string, startAfter: string | undefined, limit: number, deadline: number, what: string): Promise<{ revision: number; entries: StoreEntry[] }> {
    const { key: first, range_end } = this.bounds(prefix);
    const from = startAfter !== undefined && startAfter >= prefix ? Buffer.concat([this.client.etcdKey(startAfter), Buffer.from([0])]) : first;
    for (;;) {
      const entries: StoreEntry[] = [];
      let revision = 0;
      let start = from;
      try {
        while (entries.length < limit) {
          const page = Math.min(RANGE_PAGE, limit - entries.length);
          const res = await this.client.call<IRangeResponse>(what, "KV", "range", { key: start, range_end, limit: page, revision }, deadline, true);
          if (revision === 0) revision = Number(res.header.revision);
          for (const kv of res.kvs) {
            const key = this.client.keyOf(kv.key);
            if (key !== undefined) entries.push(this.client.entryOf(key, kv));
          }
          if (!res.more || res.kvs.length === 0) break;
          start = Buffer.concat([res.kvs[res.kvs.length - 1]!.key, Buffer.from([0])]);
        }
        return { revision, entries };
      } catch (err) {
        if (err instanceof RpcFailure && err.compacted && revision > 0 && Date.now() < deadline) continue; // the first page's revision went meanwhile
        if (err instanceof RpcFailure) throw unavailable(`state store unavailable: ${what} read failed (${err.describe()})`, err);
        throw err;
      }
    }
  }
}
