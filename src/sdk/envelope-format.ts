/**
 * The hsmd envelope message format, version 1: the bytes, their encoding and decoding, and the key
 * schedule. docs/ENVELOPE.md describes the same format for readers who do not read TypeScript; the
 * two must agree byte for byte.
 *
 * ```
 * message = header || frame(1) || frame(2) || … || frame(n)        (frame(n) has the final flag)
 *
 * header (all integers big-endian)
 *   off  len  field
 *   0    4    magic "HSME" (48 53 4D 45)
 *   4    1    version = 0x01
 *   5    1    algorithm suite = 0x01: AES-256-GCM, 16-byte tags, message key and key commitment by
 *             HKDF-SHA256 from the data key and the message id
 *   6    32   message id: 32 random bytes, fresh for every message
 *   38   4    frame size F (uint32), 1 … 16 MiB: the plaintext bytes of every non-final frame
 *   42   2    key id length k (uint16, ≥ 1), then k bytes: the key-encryption key's id (UTF-8)
 *        4    key version (uint32) of the key-encryption key that wrapped the data key
 *        2    wrapped data key length w (uint16, ≥ 1), then w bytes: the service's wrapped data key
 *        2    encryption context entry count c (uint16), then c entries, sorted by their key's UTF-8
 *             bytes, keys unique:  uint16 key length (≥ 1) || key (UTF-8) || uint16 value length || value (UTF-8)
 *        32   key commitment = HKDF-SHA256(ikm = data key, salt = message id, info = "HSME v1 key commitment", 32)
 *        16   header tag = AES-256-GCM(message key, IV = 12 zero bytes, plaintext = empty,
 *                                      AAD = every header byte before this tag).tag
 *
 * message key = HKDF-SHA256(ikm = data key, salt = message id, info = "HSME v1 AES-256-GCM message key", 32)
 *
 * frame
 *   4    sequence number s (uint32): 1 for the first frame, then 2, 3, …
 *   1    flags: 0x01 = final frame; every other bit zero
 *   4    plaintext length L (uint32): exactly F for a non-final frame, 0 … F for the final frame
 *   L    ciphertext = AES-256-GCM(message key, IV = 8 zero bytes || s (uint32), AAD = message id || s || flags || L)
 *   16   tag
 * ```
 *
 * An empty plaintext is one final frame with L = 0; a plaintext of n·F bytes (n ≥ 1) is n frames, the
 * last one full and final. Every message has its own message key (the message id is random), so the
 * deterministic IVs never repeat under one key even when a cached data key encrypts many messages.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";

/** "HSME": the first four bytes of every envelope message. */
export const ENVELOPE_MAGIC = Buffer.from("HSME", "ascii");
/** The format version this SDK writes and reads. */
export const ENVELOPE_VERSION = 1;
/** Algorithm suite 0x01: AES-256-GCM frames under an HKDF-SHA256 message key, with key commitment. */
export const ALG_AES_256_GCM_HKDF_SHA256_COMMIT = 0x01;
/** Default plaintext bytes per frame (64 KiB). */
export const DEFAULT_FRAME_SIZE = 64 * 1024;
/** Largest frame size (16 MiB): a decryptor buffers one frame, so this bounds its memory. */
export const MAX_FRAME_SIZE = 16 * 1024 * 1024;
/** Largest header a decryptor accepts (1 MiB). */
export const MAX_HEADER_BYTES = 1024 * 1024;
/** Frame flag: this is the last frame of the message. */
export const FLAG_FINAL = 0x01;
/** Highest frame sequence number (the sequence number is a uint32; 0 is the header tag's IV). */
export const MAX_FRAMES = 0xffff_ffff;

export const MESSAGE_ID_BYTES = 32;
export const COMMITMENT_BYTES = 32;
export const TAG_BYTES = 16;
/** Data keys are AES-256. */
export const DATA_KEY_BYTES = 32;
/** Sequence number (4) + flags (1) + length (4). */
export const FRAME_HEADER_BYTES = 9;
/** Bytes a frame adds to its plaintext: its header and its tag. */
export const FRAME_OVERHEAD = FRAME_HEADER_BYTES + TAG_BYTES;

const INFO_MESSAGE_KEY = "HSME v1 AES-256-GCM message key";
const INFO_COMMITMENT = "HSME v1 key commitment";
const UINT16_MAX = 0xffff;

/** An INVALID_ARGUMENT {@link HsmClientError} whose message starts with "envelope: ". */
export function envelopeError(message: string): HsmClientError {
  return new HsmClientError(status.INVALID_ARGUMENT, `envelope: ${message}`);
}

/** What a header says, once parsed (authenticated only after {@link MessageDecoder.open}). */
export interface EnvelopeHeaderInfo {
  version: number;
  algorithm: number;
  /** 32 random bytes naming the message. */
  messageId: Buffer;
  frameSize: number;
  keyId: string;
  keyVersion: number;
  wrappedDataKey: Buffer;
  encryptionContext: Record<string, string>;
  /** Bytes the header takes at the start of the message. */
  headerLength: number;
}

interface ParsedHeader extends EnvelopeHeaderInfo {
  commitment: Buffer;
  headerTag: Buffer;
  /** The header bytes the header tag authenticates (everything before it). */
  authenticated: Buffer;
}

/** The message key and the key commitment of one message. */
export interface MessageKeys {
  messageKey: Buffer;
  commitment: Buffer;
}

/** Derives a message's key and commitment from its data key and message id (HKDF-SHA256). */
export function deriveMessageKeys(dataKey: Buffer, messageId: Buffer): MessageKeys {
  if (dataKey.length !== DATA_KEY_BYTES) throw envelopeError(`the data key is ${dataKey.length} bytes; AES-256 needs ${DATA_KEY_BYTES}`);
  return {
    messageKey: Buffer.from(hkdfSync("sha256", dataKey, messageId, INFO_MESSAGE_KEY, 32)),
    commitment: Buffer.from(hkdfSync("sha256", dataKey, messageId, INFO_COMMITMENT, COMMITMENT_BYTES)),
  };
}

/** The 12-byte GCM IV of frame `seq` (the header tag uses seq 0): 8 zero bytes || seq (uint32 BE). */
export function frameIv(seq: number): Buffer {
  const iv = Buffer.alloc(12);
  iv.writeUInt32BE(seq, 8);
  return iv;
}

/** A frame's AAD: message id (32) || seq (uint32) || flags (uint8) || plaintext length (uint32). */
export function frameAad(messageId: Buffer, seq: number, flags: number, length: number): Buffer {
  const aad = Buffer.allocUnsafe(MESSAGE_ID_BYTES + FRAME_HEADER_BYTES);
  messageId.copy(aad, 0);
  aad.writeUInt32BE(seq, MESSAGE_ID_BYTES);
  aad[MESSAGE_ID_BYTES + 4] = flags;
  aad.writeUInt32BE(length, MESSAGE_ID_BYTES + 5);
  return aad;
}

/** The context's entries as UTF-8 pairs, sorted by key bytes (the header's canonical order). */
export function canonicalContext(ctx: Record<string, string>): Array<[Buffer, Buffer]> {
  const entries = Object.entries(ctx).map(([k, v]) => [Buffer.from(k, "utf8"), Buffer.from(v, "utf8")] as [Buffer, Buffer]);
  entries.sort((a, b) => Buffer.compare(a[0], b[0]));
  return entries;
}

/** A GCM tag over `aad` alone (empty plaintext): the header tag. */
function headerTag(messageKey: Buffer, aad: Buffer): Buffer {
  const c = createCipheriv("aes-256-gcm", messageKey, frameIv(0), { authTagLength: TAG_BYTES });
  c.setAAD(aad);
  c.final();
  return c.getAuthTag();
}

/** The fields of a header that the writer chooses. */
export interface HeaderFields {
  messageId: Buffer;
  frameSize: number;
  keyId: string;
  keyVersion: number;
  wrappedDataKey: Buffer;
  encryptionContext: Record<string, string>;
}

/** Encodes a complete header (with commitment and header tag) for `fields` under `keys`. */
export function encodeHeader(fields: HeaderFields, keys: MessageKeys): Buffer {
  const keyId = Buffer.from(fields.keyId, "utf8");
  if (keyId.length < 1 || keyId.length > UINT16_MAX) throw envelopeError(`the key id must be 1 to ${UINT16_MAX} UTF-8 bytes`);
  if (fields.wrappedDataKey.length < 1 || fields.wrappedDataKey.length > UINT16_MAX) throw envelopeError(`the wrapped data key must be 1 to ${UINT16_MAX} bytes`);
  const ctx = canonicalContext(fields.encryptionContext);
  if (ctx.length > UINT16_MAX) throw envelopeError(`the encryption context has more than ${UINT16_MAX} entries`);
  const parts: Buffer[] = [];
  const u8 = (n: number) => Buffer.from([n]);
  const u16 = (n: number) => {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16BE(n);
    return b;
  };
  const u32 = (n: number) => {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(n);
    return b;
  };
  parts.push(ENVELOPE_MAGIC, u8(ENVELOPE_VERSION), u8(ALG_AES_256_GCM_HKDF_SHA256_COMMIT), fields.messageId, u32(fields.frameSize));
  parts.push(u16(keyId.length), keyId, u32(fields.keyVersion >>> 0), u16(fields.wrappedDataKey.length), fields.wrappedDataKey);
  parts.push(u16(ctx.length));
  for (const [k, v] of ctx) {
    if (k.length < 1 || k.length > UINT16_MAX || v.length > UINT16_MAX) {
      throw envelopeError(`encryption context keys must be 1 to ${UINT16_MAX} UTF-8 bytes and values at most ${UINT16_MAX}`);
    }
    parts.push(u16(k.length), k, u16(v.length), v);
  }
  parts.push(keys.commitment);
  const authenticated = Buffer.concat(parts);
  if (authenticated.length + TAG_BYTES > MAX_HEADER_BYTES) throw envelopeError(`the header would be larger than ${MAX_HEADER_BYTES} bytes (key id, wrapped key and encryption context too large)`);
  return Buffer.concat([authenticated, headerTag(keys.messageKey, authenticated)]);
}

/** Thrown inside the parser when the buffer ends before the header does: `need` bytes are needed. */
class NeedMore {
  constructor(readonly need: number) {}
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Parses a header from the start of `buf`. Returns the header, or `{ need }` (at least that many
 * bytes are needed) when `buf` ends first. Throws INVALID_ARGUMENT for anything malformed.
 */
export function parseHeader(buf: Buffer): ParsedHeader | { need: number } {
  // Reject a wrong magic as soon as its bytes are there, without waiting for more.
  const m = Math.min(buf.length, ENVELOPE_MAGIC.length);
  if (!buf.subarray(0, m).equals(ENVELOPE_MAGIC.subarray(0, m))) throw envelopeError("not an hsmd envelope message (bad magic; expected \"HSME\")");
  let pos = 0;
  const take = (n: number): Buffer => {
    if (pos + n > MAX_HEADER_BYTES) throw envelopeError(`the header is larger than ${MAX_HEADER_BYTES} bytes`);
    if (pos + n > buf.length) throw new NeedMore(pos + n);
    const b = buf.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const u8 = () => take(1)[0]!;
  const u16 = () => take(2).readUInt16BE(0);
  const u32 = () => take(4).readUInt32BE(0);
  const text = (b: Buffer, what: string): string => {
    try {
      return utf8.decode(b);
    } catch {
      throw envelopeError(`the header's ${what} is not valid UTF-8`);
    }
  };
  try {
    take(4);
    const version = u8();
    if (version !== ENVELOPE_VERSION) throw envelopeError(`unsupported message version ${version} (this SDK reads version ${ENVELOPE_VERSION})`);
    const algorithm = u8();
    if (algorithm !== ALG_AES_256_GCM_HKDF_SHA256_COMMIT) throw envelopeError(`unsupported algorithm suite 0x${algorithm.toString(16).padStart(2, "0")}`);
    const messageId = Buffer.from(take(MESSAGE_ID_BYTES));
    const frameSize = u32();
    if (frameSize < 1 || frameSize > MAX_FRAME_SIZE) throw envelopeError(`frame size ${frameSize} is outside 1 … ${MAX_FRAME_SIZE}`);
    const keyIdLength = u16();
    if (keyIdLength < 1) throw envelopeError("the header's key id is empty");
    const keyId = text(take(keyIdLength), "key id");
    const keyVersion = u32();
    const wrappedLength = u16();
    if (wrappedLength < 1) throw envelopeError("the header's wrapped data key is empty");
    const wrappedDataKey = Buffer.from(take(wrappedLength));
    const count = u16();
    const encryptionContext: Record<string, string> = Object.create(null) as Record<string, string>;
    let previous: Buffer | undefined;
    for (let i = 0; i < count; i++) {
      const kLen = u16();
      if (kLen < 1) throw envelopeError("the header's encryption context has an empty key");
      const k = take(kLen);
      if (previous && Buffer.compare(previous, k) >= 0) throw envelopeError("the header's encryption context is not in canonical order (sorted, unique keys)");
      previous = k;
      const key = text(k, "encryption context");
      encryptionContext[key] = text(take(u16()), "encryption context");
    }
    const commitment = Buffer.from(take(COMMITMENT_BYTES));
    const authenticated = Buffer.from(buf.subarray(0, pos));
    const tag = Buffer.from(take(TAG_BYTES));
    return {
      version,
      algorithm,
      messageId,
      frameSize,
      keyId,
      keyVersion,
      wrappedDataKey,
      encryptionContext: { ...encryptionContext },
      headerLength: pos,
      commitment,
      headerTag: tag,
      authenticated,
    };
  } catch (e) {
    if (e instanceof NeedMore) return { need: e.need };
    throw e;
  }
}

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
