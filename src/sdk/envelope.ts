/**
 * Envelope encryption on the client side: AES-256-GCM in this process under a fresh data key per
 * message (GenerateDataKey, or a {@link DataKeyCache}), the data key stored wrapped in the message.
 * Decryption asks the service only to unwrap the data key (DecryptDataKey); data never leaves the
 * process. Buffers ({@link encryptEnvelope}, {@link decryptEnvelope}) and Node streams
 * ({@link createEncryptStream}, {@link createDecryptStream}) write and read the same messages.
 *
 * The message format (version 1) is described byte by byte in `envelope-format.ts` and
 * docs/ENVELOPE.md.
 *
 * Every failure rejects (or, for streams, errors) with {@link HsmClientError}: INVALID_ARGUMENT for
 * bad options and for messages that are malformed, tampered with, truncated, reordered or under an
 * unexpected encryption context ("envelope: frame 3 failed authentication"); the service's own
 * status (NOT_FOUND, PERMISSION_DENIED …) when it refuses to make or unwrap a data key.
 */
import { DataKeyCache } from "./envelope-cache";
import { MessageDecoder } from "./envelope-codec";
import { MAX_HEADER_BYTES, envelopeError } from "./envelope-format";
import { parseHeader } from "./envelope-parse";
import { decryptionKey, encryptionKey, headerEvent, newEncoder, openWith } from "./envelope-data-keys";
import {
  asBuffer,
  checkExpected,
  checkSource,
  decryptSettings,
  encryptSettings,
  type DataKeySource,
  type EnvelopeDecryptOptions,
  type EnvelopeDecryptResult,
  type EnvelopeEncryptOptions,
  type EnvelopeHeaderEvent,
} from "./envelope-options";

// ---- buffers ----------------------------------------------------------------------------------------

/** Encrypts `plaintext` into one envelope message under a data key wrapped by `opts.keyId`. */
export async function encryptEnvelope(client: DataKeySource, opts: EnvelopeEncryptOptions, plaintext: Buffer | Uint8Array): Promise<Buffer> {
  const source = checkSource(client);
  const s = encryptSettings(opts);
  const pt = asBuffer("plaintext", plaintext);
  const enc = newEncoder(await encryptionKey(source, s, pt.length), s.frameSize, s);
  const F = s.frameSize;
  const frames = Math.max(1, Math.ceil(pt.length / F));
  const out: Buffer[] = [enc.header];
  for (let i = 0; i < frames; i++) {
    const piece = pt.subarray(i * F, Math.min(pt.length, (i + 1) * F));
    out.push(enc.frame([piece], piece.length, i === frames - 1));
  }
  return Buffer.concat(out);
}

/**
 * Decrypts one envelope message: asks the service to unwrap its data key (or takes it from the
 * cache), checks the header and every frame. Rejects with INVALID_ARGUMENT if anything is off.
 */
export async function decryptEnvelope(client: DataKeySource, ciphertext: Buffer | Uint8Array, opts?: EnvelopeDecryptOptions): Promise<EnvelopeDecryptResult> {
  const source = checkSource(client);
  const { expected, cache } = decryptSettings(opts);
  const ct = asBuffer("ciphertext", ciphertext);
  const decoder = new MessageDecoder();
  decoder.push(ct);
  const h = decoder.header();
  if (!h) {
    decoder.finish();
    throw envelopeError("message truncated (incomplete header)");
  }
  checkExpected(expected, h.encryptionContext);
  const lease = await decryptionKey(source, h, cache);
  openWith(decoder, lease);
  const out: Buffer[] = [];
  let bytes = 0;
  try {
    for (let f = decoder.nextFrame(); f; f = decoder.nextFrame()) {
      for (const p of f) {
        out.push(p);
        bytes += p.length;
      }
    }
    decoder.finish();
  } catch (e) {
    for (const b of out) b.fill(0);
    throw e;
  } finally {
    decoder.destroy();
  }
  lease.charge(bytes);
  return { plaintext: Buffer.concat(out, bytes), encryptionContext: { ...h.encryptionContext }, keyId: h.keyId, keyVersion: h.keyVersion };
}

/**
 * Reads a message's header without decrypting anything or calling the service: key id, key
 * version, encryption context, frame size. Not authenticated: only decryption proves it.
 */
export function readEnvelopeHeader(message: Buffer | Uint8Array): EnvelopeHeaderEvent & { headerLength: number } {
  const r = parseHeader(asBuffer("message", message).subarray(0, MAX_HEADER_BYTES));
  if ("need" in r) throw envelopeError("message truncated (incomplete header)");
  return { ...headerEvent(r), headerLength: r.headerLength };
}

export { createEncryptStream, createDecryptStream } from "./envelope-stream";
export type {
  DataKeySource,
  EnvelopeDecryptOptions,
  EnvelopeDecryptResult,
  EnvelopeEncryptOptions,
  EnvelopeEncryptStreamOptions,
  EnvelopeHeaderEvent,
} from "./envelope-options";
export { DataKeyCache };
export type { DataKeyCacheOptions, DataKeyCacheStats } from "./envelope-cache";
export type { EnvelopeHeaderInfo } from "./envelope-format";
export { DEFAULT_FRAME_SIZE, MAX_FRAME_SIZE, ENVELOPE_VERSION } from "./envelope-format";
