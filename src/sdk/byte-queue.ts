/**
 * A queue of byte chunks with contiguous reads: the decoder's and the encrypt stream's only buffer.
 * Reads that fall inside one chunk are views, not copies.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private offset = 0;
  /** Bytes queued. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The first `n` bytes (n ≤ length), contiguous, left in the queue. */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first && first.length - this.offset >= n) return first.subarray(this.offset, this.offset + n);
    return Buffer.concat(this.peekPieces(n), n);
  }

  /** The first `n` bytes (n ≤ length) as views of the queued chunks, removed from the queue. */
  takePieces(n: number): Buffer[] {
    const pieces = this.peekPieces(n);
    this.skip(n);
    return pieces;
  }

  /** The first `n` bytes, contiguous, removed from the queue. */
  take(n: number): Buffer {
    const b = this.peek(n);
    this.skip(n);
    return b;
  }

  private peekPieces(n: number): Buffer[] {
    const pieces: Buffer[] = [];
    let want = n;
    let off = this.offset;
    for (const c of this.chunks) {
      if (want === 0) break;
      const piece = c.subarray(off, off + Math.min(want, c.length - off));
      pieces.push(piece);
      want -= piece.length;
      off = 0;
    }
    return pieces;
  }

  private skip(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const rest = c.length - this.offset;
      if (rest > n) {
        this.offset += n;
        return;
      }
      n -= rest;
      this.chunks.shift();
      this.offset = 0;
    }
  }
}
