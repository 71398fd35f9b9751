/**
 * The etcd store's calls to etcd: the members in the order to try them (the one that answered last,
 * then the others, then those that failed recently), one request under a deadline with retries where
 * they are safe, the mapping of a failed write to a status that says why, and the full read of the
 * cluster prefix at one revision. Keys of the store interface are relative to the prefix; here they
 * become etcd keys and back.
 */
import type { IKeyValue, IRangeResponse } from "etcd3";
import { Code, HsmError, invalid, unavailable } from "../errors";
import { asFailure, createMembers, type Member, RpcFailure } from "./etcd-member";
import { MIN_BACKOFF_MS, RANGE_PAGE, SUSPECT_MS, type EtcdStoreOptions, unmirroredPrefixes } from "./etcd-options";
import type { StoreEntry } from "./types";

/** The whole prefix at one revision (the mirrored part: keys under unmirrored prefixes are not in it). */
export interface Snapshot {
  revision: number;
  entries: StoreEntry[];
  /**
   * A resync's read only: the entries under unmirrored prefixes whose mod revision is above the
   * revision the mirror had reached (what changed there while the watch was behind, deletions aside).
   */
  unmirroredChanged?: StoreEntry[];
}

/** The refusal of every call after close. */
export function closedError(): HsmError {
  return unavailable("state store is closed");
}

/** The first key after every key that starts with `prefix` (etcd's range_end for a prefix). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // no upper bound: every key from the start
}

/** The members of one etcd cluster and the store's requests to them, for one cluster prefix. */
export class EtcdClient {
  readonly members: Member[];
  private preferred: Member;
  readonly prefixBuf: Buffer;
  /** the range of the prefix: [rangeStart, rangeEnd) */
  readonly rangeStart: Buffer;
  readonly rangeEnd: Buffer;
  /** the unmirrored prefixes (store keys, sorted, none under another) */
  readonly unmirrored: string[];
  /** the etcd ranges [start, end) of the prefix that the mirror holds: its range less the unmirrored ones */
  readonly mirroredRanges: [Buffer, Buffer][];
  private readonly stopSignal = new AbortController();
  private stopped = false;

  constructor(prefix: string, opts: Pick<EtcdStoreOptions, "endpoints" | "tls" | "unmirrored">) {
    this.prefixBuf = Buffer.from(prefix, "utf8");
    this.rangeStart = this.prefixBuf.length > 0 ? this.prefixBuf : Buffer.from([0]);
    this.rangeEnd = prefixEnd(this.prefixBuf);
    this.unmirrored = unmirroredPrefixes(opts.unmirrored);
    this.mirroredRanges = this.complement();
    this.members = createMembers(opts.endpoints, opts.tls);
    this.preferred = this.members[0]!;
  }

  /** Stopped: every call answers "state store is closed", and sleeps end at once. */
  get closed(): boolean {
    return this.stopped;
  }

  /** the member writes and the watch go to first */
  get preferredEndpoint(): string {
    return this.preferred.endpoint;
  }

  /** Refuses further calls and wakes every sleep; the connections stay until {@link closeMembers}. */
  stop(): void {
    this.stopped = true;
    this.stopSignal.abort();
  }

  /** Closes the connection to every member. */
  closeMembers(): void {
    for (const m of this.members) m.close();
  }

  /** Is this store key under an unmirrored prefix? */
  isUnmirrored(key: string): boolean {
    for (const u of this.unmirrored) if (key.startsWith(u)) return true;
    return false;
  }

  /** Does a read of the keys under `prefix` take in keys under an unmirrored prefix? */
  touchesUnmirrored(prefix: string): boolean {
    for (const u of this.unmirrored) if (prefix.startsWith(u) || u.startsWith(prefix)) return true;
    return false;
  }

  /** The etcd ranges of the prefix outside every unmirrored prefix (end [0]: no upper bound). */
  private complement(): [Buffer, Buffer][] {
    const unbounded = this.rangeEnd.length === 1 && this.rangeEnd[0] === 0;
    const out: [Buffer, Buffer][] = [];
    let cur = this.rangeStart;
    for (const u of this.unmirrored) {
      const start = this.etcdKey(u);
      const end = prefixEnd(start);
      if (Buffer.compare(start, cur) > 0) out.push([cur, start]);
      if (end.length === 1 && end[0] === 0) return out; // the unmirrored prefix reaches the end of the keyspace
      if (Buffer.compare(end, cur) > 0) cur = end;
    }
    if (unbounded || Buffer.compare(cur, this.rangeEnd) < 0) out.push([cur, this.rangeEnd]);
    return out;
  }

  /** The etcd key of a store key: the cluster prefix prepended. */
  etcdKey(key: string): Buffer {
    return Buffer.concat([this.prefixBuf, Buffer.from(key, "utf8")]);
  }

  /** The store key of an etcd key, or undefined when it is not under the prefix. */
  keyOf(etcdKey: Buffer): string | undefined {
    if (etcdKey.length < this.prefixBuf.length || !etcdKey.subarray(0, this.prefixBuf.length).equals(this.prefixBuf)) return undefined;
    return etcdKey.subarray(this.prefixBuf.length).toString("utf8");
  }

  /** An etcd key-value as a store entry (etcd's int64 revisions as numbers). */
  entryOf(key: string, kv: IKeyValue): StoreEntry {
    return {
      key,
      value: Buffer.from(kv.value ?? Buffer.alloc(0)),
      modRevision: Number(kv.mod_revision),
      createRevision: Number(kv.create_revision),
      version: Number(kv.version),
    };
  }

  /** Members in the order to try: the preferred one, the others, then those that failed recently. */
  order(): Member[] {
    const now = Date.now();
    const start = this.members.indexOf(this.preferred);
    const rotated = [...this.members.slice(start), ...this.members.slice(0, start)];
    const good = rotated.filter((m) => m.suspectUntil <= now);
    const bad = rotated.filter((m) => m.suspectUntil > now).sort((a, b) => a.suspectUntil - b.suspectUntil);
    return [...good, ...bad];
  }

  /** Waits `ms`, or less when the client stops meanwhile (a closing store does not wait out backoffs). */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopSignal.signal.aborted) return resolve();
      const signal = this.stopSignal.signal;
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  /**
   * One request, to the first member that takes it before the deadline. `idempotent` requests (reads)
   * are retried on any failure; writes only when the member certainly did not receive them.
   */
  async call<T>(what: string, service: "KV" | "Maintenance", method: string, req: unknown, deadline: number, idempotent: boolean): Promise<T> {
    const budget = Math.max(0, deadline - Date.now());
    const failures = new Map<string, string>();
    let backoff = MIN_BACKOFF_MS / 2;
    for (;;) {
      for (const m of this.order()) {
        if (this.stopped) throw closedError();
        const now = Date.now();
        if (now >= deadline) break;
        // A read gives each member a share of the budget, so one that does not answer cannot use it all.
        const attemptDeadline = idempotent ? Math.min(deadline, now + Math.max(1000, (deadline - now) / 2)) : deadline;
        try {
          const res = await m.unary<T>(service, method, req, attemptDeadline);
          this.preferred = m;
          return res;
        } catch (err) {
          if (this.stopped) throw closedError();
          const f = asFailure(err, m.endpoint);
          if (f.compacted) throw f; // the caller restarts its read
          failures.set(m.endpoint, f.details);
          m.suspectUntil = Date.now() + SUSPECT_MS;
          if (f.notSent || idempotent) continue;
          throw this.writeError(what, f, budget);
        }
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      await this.sleep(Math.min(backoff, left));
      backoff = Math.min(backoff * 2, 500);
    }
    const why = [...failures].map(([ep, d]) => `${ep}: ${d}`).join("; ") || "no member was tried";
    throw unavailable(`state store unavailable: no etcd quorum reachable (${what} got no answer within ${budget} ms; ${why})`);
  }

  /** A write that reached a member and failed there. */
  private writeError(what: string, f: RpcFailure, budget: number): HsmError {
    if (f.timedOut || f.code === 14 || f.code === 1) {
      return unavailable(`state store unavailable: no etcd quorum reachable (the ${what} was not confirmed within ${budget} ms by ${f.endpoint}: ` + `${f.details}; it may still be applied)`, f);
    }
    if (f.code === 3) return invalid(`state store rejected the ${what}: ${f.details}`);
    if (f.code === 8) return new HsmError(Code.ResourceExhausted, `state store rejected the ${what}: ${f.details}`, { cause: f });
    if (f.code === 7 || f.code === 16) {
      return unavailable(`state store unavailable: etcd at ${f.endpoint} refused access (${f.details})`, f);
    }
    return unavailable(`state store unavailable: the ${what} failed at ${f.endpoint} (${f.details})`, f);
  }

  /**
   * The mirrored part of the prefix at one revision, page by page (keys under unmirrored prefixes are
   * not read); restarts if that revision is compacted meanwhile. With `changedSince` (a resync), also
   * the entries under unmirrored prefixes modified after that revision.
   */
  async readAll(deadline: number, what: string, changedSince?: number): Promise<Snapshot> {
    for (;;) {
      const entries: StoreEntry[] = [];
      const at = { revision: 0 };
      try {
        for (const [start, end] of this.mirroredRanges) await this.readRange(start, end, at, deadline, what, false, (kv) => entries.push(kv));
        if (at.revision === 0) {
          // Nothing mirrored (every key unmirrored): still one revision to read at.
          const res = await this.call<IRangeResponse>(`${what} read`, "KV", "range", { key: this.rangeStart, range_end: this.rangeEnd, count_only: true }, deadline, true);
          at.revision = Number(res.header.revision);
        }
        const snap: Snapshot = { revision: at.revision, entries };
        if (changedSince !== undefined && this.unmirrored.length > 0) snap.unmirroredChanged = await this.readChanged(at, changedSince, deadline, what);
        return snap;
      } catch (err) {
        if (err instanceof RpcFailure && err.compacted && Date.now() < deadline) continue;
        if (err instanceof RpcFailure) throw unavailable(`state store unavailable: ${what} read failed (${err.describe()})`, err);
        throw err;
      }
    }
  }

  /** Entries under the unmirrored prefixes at `at.revision` modified after `since`: keys-only pages, then the values of those. */
  private async readChanged(at: { revision: number }, since: number, deadline: number, what: string): Promise<StoreEntry[]> {
    const changed: Buffer[] = [];
    for (const u of this.unmirrored) {
      const start = this.etcdKey(u);
      await this.readRange(start, prefixEnd(start), at, deadline, what, true, (e) => {
        if (e.modRevision > since) changed.push(this.etcdKey(e.key));
      });
    }
    const out: StoreEntry[] = [];
    for (const key of changed) {
      const res = await this.call<IRangeResponse>(`${what} read`, "KV", "range", { key, revision: at.revision }, deadline, true);
      const kv = res.kvs[0];
      const k = kv ? this.keyOf(kv.key) : undefined;
      if (kv && k !== undefined) out.push(this.entryOf(k, kv));
    }
    return out;
  }

  /** One etcd range [start, end) in pages at `at.revision` (0: the first page's, which it sets). */
  private async readRange(start: Buffer, end: Buffer, at: { revision: number }, deadline: number, what: string, keysOnly: boolean, each: (e: StoreEntry) => void): Promise<void> {
    let from = start;
    for (;;) {
      const res = await this.call<IRangeResponse>(`${what} read`, "KV", "range", { key: from, range_end: end, limit: RANGE_PAGE, revision: at.revision, keys_only: keysOnly }, deadline, true);
      if (at.revision === 0) at.revision = Number(res.header.revision);
      for (const kv of res.kvs) {
        const key = this.keyOf(kv.key);
        if (key !== undefined) each(this.entryOf(key, kv));
      }
      if (!res.more || res.kvs.length === 0) return;
      from = Buffer.concat([res.kvs[res.kvs.length - 1]!.key, Buffer.from([0])]);
    }
  }
}
