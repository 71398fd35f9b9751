/**
 * One envelope message written ({@link MessageEncoder}) and read ({@link MessageDecoder}) frame by
 * frame, over the format and key schedule of `envelope-format.ts`.
 */
import { createCipheriv, createDecipheriv, randomBytes, timingSafeEqual } from "node:crypto";
import { ByteQueue } from "./byte-queue";
import {
  deriveMessageKeys,
  encodeHeader,
  envelopeError,
  FLAG_FINAL,
  FRAME_HEADER_BYTES,
  frameAad,
  frameIv,
  MAX_FRAMES,
  MAX_HEADER_BYTES,
  MESSAGE_ID_BYTES,
  TAG_BYTES,
  type EnvelopeHeaderInfo,
  type HeaderFields,
  type ParsedHeader,
} from "./envelope-format";
import { parseHeader } from "./envelope-parse";

/** Writes one message: its header, then its frames in order. */
export class MessageEncoder {
  readonly header: Buffer;
  readonly frameSize: number;
  private readonly messageId: Buffer;
  private readonly messageKey: Buffer;
  private seq = 1;
  private finished = false;

  /** `dataKey` is only read here (the caller zeroes it afterwards). */
  constructor(fields: Omit<HeaderFields, "messageId">, dataKey: Buffer, messageId: Buffer = randomBytes(MESSAGE_ID_BYTES)) {
    this.messageId = messageId;
    this.frameSize = fields.frameSize;
    const keys = deriveMessageKeys(dataKey, messageId);
    this.messageKey = keys.messageKey;
    this.header = encodeHeader({ ...fields, messageId }, keys);
  }

  /**
   * The next frame over `pieces` (their lengths add up to `length`): exactly frameSize bytes unless
   * `final`. One buffer: frame header || ciphertext || tag.
   */
  frame(pieces: Buffer[], length: number, final: boolean): Buffer {
    if (this.finished) throw envelopeError("the message is already finished");
    if (final ? length > this.frameSize : length !== this.frameSize) throw envelopeError(`internal: frame of ${length} bytes with frame size ${this.frameSize}`);
    if (this.seq > MAX_FRAMES) throw envelopeError(`the message has more than ${MAX_FRAMES} frames: use a larger frame size`);
    const seq = this.seq++;
    const flags = final ? FLAG_FINAL : 0;
    const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + length + TAG_BYTES);
    out.writeUInt32BE(seq, 0);
    out[4] = flags;
    out.writeUInt32BE(length, 5);
    const c = createCipheriv("aes-256-gcm", this.messageKey, frameIv(seq), { authTagLength: TAG_BYTES });
    c.setAAD(frameAad(this.messageId, seq, flags, length));
    let off = FRAME_HEADER_BYTES;
    for (const p of pieces) off += c.update(p).copy(out, off);
    off += c.final().copy(out, off);
    c.getAuthTag().copy(out, off);
    if (final) this.destroy();
    return out;
  }

  /** Zeroes the message key; no frame can be written after. */
  destroy(): void {
    this.finished = true;
    this.messageKey.fill(0);
  }
}

/**
 * Reads one message pushed in pieces: {@link header} once its bytes are in, {@link open} with the
 * unwrapped data key, then {@link nextFrame} until {@link done}, then {@link finish}. Holds at most
 * one header (≤ 1 MiB) or one frame (≤ frame size + 25 bytes) beyond what the caller pushed since.
 */
export class MessageDecoder {
  private readonly queue = new ByteQueue();
  private parsed: ParsedHeader | undefined;
  private need = 1;
  private messageKey: Buffer | undefined;
  private seq = 1;
  /** The final frame has been read. */
  done = false;

  push(chunk: Buffer): void {
    if (this.done && chunk.length > 0) throw envelopeError("trailing data after the final frame");
    this.queue.push(chunk);
  }

  /** The header once all its bytes are in (unauthenticated until {@link open}), else undefined. */
  header(): EnvelopeHeaderInfo | undefined {
    if (this.parsed) return this.parsed;
    if (this.queue.length < this.need) return undefined;
    const r = parseHeader(this.queue.peek(Math.min(this.queue.length, MAX_HEADER_BYTES)));
    if ("need" in r) {
      this.need = r.need;
      return undefined;
    }
    this.queue.take(r.headerLength);
    this.parsed = r;
    return r;
  }

  /** Checks the data key against the header (commitment, then header tag); frames can then be read. */
  open(dataKey: Buffer): void {
    const h = this.parsed;
    if (!h) throw envelopeError("internal: open before the header");
    const keys = deriveMessageKeys(dataKey, h.messageId);
    if (!timingSafeEqual(keys.commitment, h.commitment)) {
      keys.messageKey.fill(0);
      throw envelopeError("key commitment mismatch: the data key does not belong to this message");
    }
    const d = createDecipheriv("aes-256-gcm", keys.messageKey, frameIv(0), { authTagLength: TAG_BYTES });
    d.setAAD(h.authenticated);
    d.setAuthTag(h.headerTag);
    try {
      d.final();
    } catch {
      keys.messageKey.fill(0);
      throw envelopeError("the header failed authentication");
    }
    this.messageKey = keys.messageKey;
  }

  /**
   * The next frame's plaintext (views or fresh buffers; possibly empty), authenticated; undefined
   * when its bytes are not all in yet. Throws INVALID_ARGUMENT on a frame out of order, malformed or
   * failing authentication.
   */
  nextFrame(): Buffer[] | undefined {
    const h = this.parsed;
    const key = this.messageKey;
    if (!h || !key) throw envelopeError("internal: frames before the header is open");
    if (this.done || this.queue.length < FRAME_HEADER_BYTES) return undefined;
    const fh = this.queue.peek(FRAME_HEADER_BYTES);
    const seq = fh.readUInt32BE(0);
    const flags = fh[4]!;
    const length = fh.readUInt32BE(5);
    const n = this.seq;
    if (seq !== n) throw envelopeError(`frame ${n} is out of order (it carries sequence number ${seq})`);
    if ((flags & ~FLAG_FINAL) !== 0) throw envelopeError(`frame ${n} has unknown flags 0x${flags.toString(16).padStart(2, "0")}`);
    const final = (flags & FLAG_FINAL) !== 0;
    if (final ? length > h.frameSize : length !== h.frameSize) {
      throw envelopeError(`frame ${n} claims ${length} bytes; a ${final ? "final frame holds at most" : "non-final frame holds exactly"} the frame size, ${h.frameSize}`);
    }
    if (this.queue.length < FRAME_HEADER_BYTES + length + TAG_BYTES) return undefined;
    this.queue.take(FRAME_HEADER_BYTES);
    const d = createDecipheriv("aes-256-gcm", key, frameIv(seq), { authTagLength: TAG_BYTES });
    d.setAAD(frameAad(h.messageId, seq, flags, length));
    const out: Buffer[] = [];
    for (const p of this.queue.takePieces(length)) out.push(d.update(p));
    d.setAuthTag(this.queue.take(TAG_BYTES));
    try {
      out.push(d.final());
    } catch {
      for (const b of out) b.fill(0);
      throw envelopeError(`frame ${n} failed authentication`);
    }
    this.seq++;
    if (final) {
      this.done = true;
      this.destroy();
      if (this.queue.length > 0) throw envelopeError("trailing data after the final frame");
    }
    return out;
  }

  /** At the end of the input: throws unless the whole message, and nothing more, was read. */
  finish(): void {
    if (this.done) return;
    if (!this.parsed) throw envelopeError(this.queue.length === 0 ? "message truncated (empty input)" : "message truncated (incomplete header)");
    if (this.queue.length === 0) throw envelopeError("message truncated (no final frame)");
    throw envelopeError(`message truncated (no final frame; frame ${this.seq} is cut short)`);
  }

  /** Zeroes the message key. */
  destroy(): void {
    this.messageKey?.fill(0);
  }
}
