/**
 * The hsmd envelope message format, version 1: the bytes, the header encoding and the key schedule
 * (parsing in `envelope-parse.ts`, frames in `envelope-codec.ts`). docs/ENVELOPE.md describes the same format for readers who do not read TypeScript; the
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
import { createCipheriv, hkdfSync } from "node:crypto";
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

/** Sizes of the message id, the key commitment and a GCM tag. */
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

/** A parsed header with the bytes that authenticate it (what {@link parseHeader} answers). */
export interface ParsedHeader extends EnvelopeHeaderInfo {
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
export function headerTag(messageKey: Buffer, aad: Buffer): Buffer {
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
