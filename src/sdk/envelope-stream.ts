/**
 * Envelope encryption as Node streams: {@link createEncryptStream} and {@link createDecryptStream},
 * the same messages as the buffer functions of `envelope.ts`, memory bounded by one frame.
 */
import { Transform, type TransformCallback } from "node:stream";
import type { DataKeyCache, DataKeyLease } from "./envelope-cache";
import { ByteQueue } from "./byte-queue";
import { MessageDecoder, type MessageEncoder } from "./envelope-codec";
import { envelopeError } from "./envelope-format";
import { decryptionKey, encryptionKey, headerEvent, newEncoder, openWith } from "./envelope-data-keys";
import {
  asBuffer,
  checkExpected,
  checkSource,
  decryptSettings,
  encryptSettings,
  type DataKeySource,
  type EncryptSettings,
  type EnvelopeDecryptOptions,
  type EnvelopeEncryptStreamOptions,
} from "./envelope-options";

class EncryptStream extends Transform {
  private readonly source: DataKeySource;
  private readonly settings: EncryptSettings;
  private readonly declared: number | undefined;
  private readonly queue = new ByteQueue();
  private encoder: MessageEncoder | undefined;
  private starting: Promise<void> | undefined;
  private seen = 0;

  constructor(source: DataKeySource, settings: EncryptSettings, declared: number | undefined) {
    super();
    this.source = source;
    this.settings = settings;
    this.declared = declared;
  }

  private start(): Promise<void> {
    this.starting ??= encryptionKey(this.source, this.settings, this.declared).then((lease) => {
      this.encoder = newEncoder(lease, this.settings.frameSize, this.settings);
      if (this.destroyed) this.encoder.destroy();
      else this.push(this.encoder.header);
    });
    return this.starting;
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    let b: Buffer;
    try {
      b = typeof chunk === "string" ? Buffer.from(chunk, _encoding) : asBuffer("a chunk", chunk);
      this.seen += b.length;
      if (this.declared !== undefined && this.seen > this.declared) throw envelopeError(`the input is longer than the declared plaintextLength, ${this.declared}`);
    } catch (e) {
      callback(e as Error);
      return;
    }
    const go = () => {
      const enc = this.encoder!;
      const F = this.settings.frameSize;
      this.queue.push(b);
      // Keep the last frame's bytes until the end: only then is it known to be the final frame.
      while (this.queue.length > F) this.push(enc.frame(this.queue.takePieces(F), F, false));
    };
    if (this.encoder) {
      try {
        go();
        callback();
      } catch (e) {
        callback(e as Error);
      }
      return;
    }
    this.start()
      .then(go)
      .then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.start()
      .then(() => {
        if (this.declared !== undefined && this.seen !== this.declared) throw envelopeError(`the input ended after ${this.seen} bytes; plaintextLength declared ${this.declared}`);
        const n = this.queue.length;
        this.push(this.encoder!.frame(this.queue.takePieces(n), n, true));
      })
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.encoder?.destroy();
    callback(error);
  }
}

class DecryptStream extends Transform {
  private readonly source: DataKeySource;
  private readonly expected: Record<string, string> | undefined;
  private readonly cache: DataKeyCache | undefined;
  private readonly decoder = new MessageDecoder();
  private lease: DataKeyLease | undefined;
  private bytes = 0;

  constructor(source: DataKeySource, expected: Record<string, string> | undefined, cache: DataKeyCache | undefined) {
    super();
    this.source = source;
    this.expected = expected;
    this.cache = cache;
  }

  /** Opens the header when its bytes are in, then releases every complete, authenticated frame. */
  private async pump(): Promise<void> {
    if (!this.lease) {
      const h = this.decoder.header();
      if (!h) return;
      checkExpected(this.expected, h.encryptionContext);
      const lease = await decryptionKey(this.source, h, this.cache);
      this.lease = lease;
      openWith(this.decoder, lease);
      this.emit("header", headerEvent(h));
    }
    for (let f = this.decoder.nextFrame(); f; f = this.decoder.nextFrame()) {
      for (const p of f) {
        this.bytes += p.length;
        if (p.length) this.push(p);
      }
    }
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.decoder.push(asBuffer("a chunk", chunk));
    } catch (e) {
      callback(e as Error);
      return;
    }
    this.pump().then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.pump()
      .then(() => {
        this.decoder.finish();
        this.lease?.charge(this.bytes);
      })
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.decoder.destroy();
    callback(error);
  }
}

/**
 * A Transform that encrypts what is written to it into one envelope message. Memory stays bounded
 * (one frame and what the stream's buffers hold), and it respects backpressure. The data key is
 * fetched when the first byte (or the end) arrives.
 */
export function createEncryptStream(client: DataKeySource, opts: EnvelopeEncryptStreamOptions): Transform {
  const source = checkSource(client);
  const s = encryptSettings(opts);
  const declared = opts.plaintextLength;
  if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0)) throw envelopeError(`plaintextLength must be a non-negative integer; got ${String(declared)}`);
  return new EncryptStream(source, s, declared);
}

/**
 * A Transform that decrypts one envelope message written to it. It emits `"header"`
 * ({@link EnvelopeHeaderEvent}) once the header is authenticated, and each frame's plaintext once
 * that frame is authenticated; a truncated message fails only at the end, so treat the output as
 * provisional until the stream ends without an error.
 */
export function createDecryptStream(client: DataKeySource, opts?: EnvelopeDecryptOptions): Transform {
  const source = checkSource(client);
  const { expected, cache } = decryptSettings(opts);
  return new DecryptStream(source, expected, cache);
}
