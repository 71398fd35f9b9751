/**
 * A bounded cache of wrapped material: the blobs (wrapped under the domain key, never clear keys)
 * that this node's slim records leave in the store, kept for the keys most recently materialized or
 * applied so that a re-materialization seldom reads the store. Bounded by bytes, least recently used
 * dropped first.
 */
import type { WrappedMaterial } from "../pkcs11";

/** Bytes an entry is charged beyond its blob (the map entry, the object, the key id). */
const ENTRY_OVERHEAD = 160;

/** The default bound: 16 MiB (about 40,000 AES-256 blobs or 10,000 RSA-2048 ones). */
export const DEFAULT_MATERIAL_CACHE_BYTES = 16 * 1024 * 1024;

interface CachedMaterial {
  version: number;
  material: WrappedMaterial;
  bytes: number;
}

/** Wrapped material by key id and version, within a byte budget (see the module comment). */
export class MaterialCache {
  private readonly map = new Map<string, CachedMaterial>();
  private used = 0;

  constructor(readonly maxBytes: number = DEFAULT_MATERIAL_CACHE_BYTES) {}

  /** Bytes the cache holds now (blobs and overhead). */
  get bytes(): number {
    return this.used;
  }

  /** Entries the cache holds now. */
  get size(): number {
    return this.map.size;
  }

  /** The material of a key's version, if cached (and marks it recently used). */
  get(id: string, version: number): WrappedMaterial | undefined {
    const e = this.map.get(id);
    if (!e || e.version !== version) return undefined;
    this.map.delete(id);
    this.map.set(id, e);
    return e.material;
  }

  /** Caches a key's version's material, replacing what it held for the key; drops the oldest entries past the bound. */
  put(id: string, version: number, material: WrappedMaterial): void {
    this.delete(id);
    const bytes = material.blob.length + id.length + material.wrappingKeyId.length + ENTRY_OVERHEAD;
    if (bytes > this.maxBytes) return;
    this.map.set(id, { version, material, bytes });
    this.used += bytes;
    for (const [k, e] of this.map) {
      if (this.used <= this.maxBytes) break;
      this.map.delete(k);
      this.used -= e.bytes;
    }
  }

  /** Forgets a key's material (its record was deleted). */
  delete(id: string): void {
    const e = this.map.get(id);
    if (!e) return;
    this.map.delete(id);
    this.used -= e.bytes;
  }
}
