/**
 * A data-key cache for envelope encryption (off by default: pass one in the envelope options).
 *
 * On encrypt it holds the plaintext data keys that GenerateDataKey answered, keyed by the client
 * (object and logged-in user), the key-encryption key id and the encryption context; on decrypt it
 * holds the data keys DecryptDataKey unwrapped, keyed by the client, key id, wrapped data key and
 * context. An entry serves at most `maxMessages` messages and `maxBytes` plaintext bytes, for at
 * most `maxAgeMs` after it was fetched; then a fresh data key is fetched. Plaintext data keys are
 * zeroed when their entry leaves the cache (limits reached, expired, capacity, {@link clear}).
 *
 * Encrypt limits are never exceeded: a message is charged before it is encrypted, so its size must be
 * known (always for buffers; for streams, pass `plaintextLength`, or the stream uses a fresh data key
 * that is not cached). A message larger than `maxBytes` never uses the cache. On decrypt a message's
 * size is known only once it has been read: an entry serves a new message while its byte count is
 * below `maxBytes`, and is charged with what the message held.
 */
import { status } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";

/** Limits of a {@link DataKeyCache}. */
export interface DataKeyCacheOptions {
  /** How long an entry may be used after its data key was fetched, in milliseconds (required, > 0). */
  maxAgeMs: number;
  /** Messages one entry may serve (default 2^32). */
  maxMessages?: number;
  /** Plaintext bytes one entry may serve (default Number.MAX_SAFE_INTEGER). */
  maxBytes?: number;
  /** Entries held at most; the least recently used goes first (required, ≥ 1). */
  capacity: number;
  /** The clock, in milliseconds (default Date.now): tests inject one. */
  now?: () => number;
}

/** What a {@link DataKeyCache} has done so far. */
export interface DataKeyCacheStats {
  /** Messages served from a cached data key (no call to the service). */
  hits: number;
  /** Messages that needed a call to the service (GenerateDataKey or DecryptDataKey). */
  misses: number;
  /** Entries dropped (limit reached, expired, or pushed out by capacity); their keys zeroed. */
  evictions: number;
  /** hits / (hits + misses), 0 before any use. */
  hitRate: number;
  /** Entries held now. */
  entries: number;
}

/** A data key and what the header needs to name it. */
export interface DataKeyMaterial {
  dataKey: Buffer;
  keyId: string;
  keyVersion: number;
  wrappedDataKey: Buffer;
}

/** What a cache use hands out: a copy of the material's key (the caller zeroes it) and byte accounting. */
export interface DataKeyLease {
  material: DataKeyMaterial;
  /** Adds plaintext bytes to the entry's count (decrypt: after the message was read). */
  charge(bytes: number): void;
}

interface Entry {
  material: DataKeyMaterial;
  createdAt: number;
  messages: number;
  bytes: number;
}

function invalid(message: string): HsmClientError {
  return new HsmClientError(status.INVALID_ARGUMENT, `envelope: ${message}`);
}

function positive(name: string, value: unknown, integer: boolean, fallback?: number): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0 || (integer && !Number.isSafeInteger(value))) {
    throw invalid(`DataKeyCache ${name} must be a positive ${integer ? "integer" : "number"}; got ${String(value)}`);
  }
  return value;
}

export class DataKeyCache {
  readonly maxAgeMs: number;
  readonly maxMessages: number;
  readonly maxBytes: number;
  readonly capacity: number;
  private readonly now: () => number;
  /** Insertion order is recency order: the first entry is the least recently used. */
  private readonly entries = new Map<string, Entry>();
  private readonly pending = new Map<string, Promise<unknown>>();
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(options: DataKeyCacheOptions) {
    if (typeof options !== "object" || options === null) throw invalid("DataKeyCache needs options { maxAgeMs, capacity, maxMessages?, maxBytes? }");
    this.maxAgeMs = positive("maxAgeMs", options.maxAgeMs, false);
    this.maxMessages = positive("maxMessages", options.maxMessages, true, 2 ** 32);
    this.maxBytes = positive("maxBytes", options.maxBytes, true, Number.MAX_SAFE_INTEGER);
    this.capacity = positive("capacity", options.capacity, true);
    if (options.now !== undefined && typeof options.now !== "function") throw invalid("DataKeyCache now must be a function");
    this.now = options.now ?? Date.now;
  }

  get stats(): DataKeyCacheStats {
    const total = this.hits + this.misses;
    return { hits: this.hits, misses: this.misses, evictions: this.evictions, hitRate: total ? this.hits / total : 0, entries: this.entries.size };
  }

  /** Drops every entry, zeroing its data key (not counted as evictions). */
  clear(): void {
    for (const e of this.entries.values()) e.material.dataKey.fill(0);
    this.entries.clear();
  }

  /**
   * Internal (used by the envelope functions): a data key for one message of `bytes` plaintext
   * bytes under `partition`, from the cache when an entry has room for it, else from `fetch` (the
   * fetched key is cached unless the message alone is larger than maxBytes). `bytes` undefined (a
   * stream of unknown size) fetches a key that is not cached. Strict: never beyond the limits.
   */
  async forEncrypt(partition: string, bytes: number | undefined, fetch: () => Promise<DataKeyMaterial>): Promise<DataKeyLease> {
    if (bytes === undefined || bytes > this.maxBytes) return this.uncached(fetch);
    return this.use(`e${partition}`, bytes, (e) => e.bytes + bytes <= this.maxBytes, fetch);
  }

  /**
   * Internal: an unwrapped data key for one message under `partition` (which names the wrapped key
   * and context). An entry serves while its byte count is below maxBytes; charge the message's
   * plaintext bytes with the lease once read.
   */
  async forDecrypt(partition: string, fetch: () => Promise<DataKeyMaterial>): Promise<DataKeyLease> {
    return this.use(`d${partition}`, 0, (e) => e.bytes < this.maxBytes, fetch);
  }

  private async uncached(fetch: () => Promise<DataKeyMaterial>): Promise<DataKeyLease> {
    this.misses++;
    const material = await fetch();
    return { material, charge: () => undefined };
  }

  private async use(key: string, bytes: number, fits: (e: Entry) => boolean, fetch: () => Promise<DataKeyMaterial>): Promise<DataKeyLease> {
    for (;;) {
      this.sweep();
      const e = this.entries.get(key);
      if (e) {
        if (e.messages < this.maxMessages && fits(e)) {
          e.messages++;
          e.bytes += bytes;
          this.entries.delete(key);
          this.entries.set(key, e);
          this.hits++;
          return this.lease(e);
        }
        this.evict(key, e);
      }
      const inflight = this.pending.get(key);
      if (inflight) {
        // Another message is fetching this entry: wait for it, then look again.
        await inflight.catch(() => undefined);
        continue;
      }
      this.misses++;
      const p = fetch();
      this.pending.set(key, p);
      let material: DataKeyMaterial;
      try {
        material = await p;
      } finally {
        this.pending.delete(key);
      }
      const entry: Entry = { material, createdAt: this.now(), messages: 1, bytes };
      const old = this.entries.get(key);
      if (old) this.evict(key, old);
      this.entries.set(key, entry);
      while (this.entries.size > this.capacity) {
        const [lruKey, lru] = this.entries.entries().next().value as [string, Entry];
        this.evict(lruKey, lru);
      }
      return this.lease(entry);
    }
  }

  private lease(e: Entry): DataKeyLease {
    return {
      material: { ...e.material, dataKey: Buffer.from(e.material.dataKey) },
      charge: (n) => {
        e.bytes += n;
      },
    };
  }

  /** Drops expired entries (so their keys do not linger in memory). */
  private sweep(): void {
    const now = this.now();
    for (const [k, e] of this.entries) if (now - e.createdAt >= this.maxAgeMs) this.evict(k, e);
  }

  private evict(key: string, e: Entry): void {
    if (this.entries.get(key) === e) this.entries.delete(key);
    e.material.dataKey.fill(0);
    this.evictions++;
  }
}
