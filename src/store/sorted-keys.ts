/**
 * An ordered set of strings: a list of sorted chunks (a flat, one-level B-tree). Insert and delete cost
 * O(log n + chunk size) instead of the O(n) splice of one big sorted array, which matters at a million
 * keys. Order is JavaScript string order (UTF-16 code units), which equals byte order for ASCII keys.
 */
const CHUNK = 256;

export class SortedKeys {
  private chunks: string[][] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Index of the first chunk whose last key is >= key, or chunks.length if none. */
  private chunkFor(key: string): number {
    let lo = 0;
    let hi = this.chunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.chunks[mid]!;
      if (c[c.length - 1]! < key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Adds key; false if it was already there. */
  insert(key: string): boolean {
    if (this.chunks.length === 0) {
      this.chunks.push([key]);
      this.count = 1;
      return true;
    }
    let ci = this.chunkFor(key);
    if (ci === this.chunks.length) ci -= 1;
    const chunk = this.chunks[ci]!;
    const i = lowerBound(chunk, key);
    if (chunk[i] === key) return false;
    chunk.splice(i, 0, key);
    this.count += 1;
    if (chunk.length > 2 * CHUNK) this.chunks.splice(ci + 1, 0, chunk.splice(CHUNK));
    return true;
  }

  /** Removes key; false if it was not there. */
  delete(key: string): boolean {
    const ci = this.chunkFor(key);
    if (ci === this.chunks.length) return false;
    const chunk = this.chunks[ci]!;
    const i = lowerBound(chunk, key);
    if (chunk[i] !== key) return false;
    chunk.splice(i, 1);
    this.count -= 1;
    if (chunk.length === 0) this.chunks.splice(ci, 1);
    return true;
  }

  /** Keys >= from (or > from when exclusive), in order. Do not mutate the set while iterating. */
  *from(from: string, exclusive = false): Generator<string> {
    let ci = this.chunkFor(from);
    if (ci === this.chunks.length) return;
    let i = lowerBound(this.chunks[ci]!, from);
    if (exclusive && this.chunks[ci]![i] === from) i += 1;
    for (; ci < this.chunks.length; ci++, i = 0) {
      const chunk = this.chunks[ci]!;
      for (; i < chunk.length; i++) yield chunk[i]!;
    }
  }
}

function lowerBound(a: string[], key: string): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
