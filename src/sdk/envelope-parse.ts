/**
 * Parsing and validation of an envelope header (format in `envelope-format.ts`): every length and
 * field checked, `{ need }` when the bytes end first.
 */
import {
  ALG_AES_256_GCM_HKDF_SHA256_COMMIT,
  COMMITMENT_BYTES,
  ENVELOPE_MAGIC,
  ENVELOPE_VERSION,
  envelopeError,
  MAX_FRAME_SIZE,
  MAX_HEADER_BYTES,
  MESSAGE_ID_BYTES,
  TAG_BYTES,
  type ParsedHeader,
} from "./envelope-format";
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
  if (!buf.subarray(0, m).equals(ENVELOPE_MAGIC.subarray(0, m))) throw envelopeError('not an hsmd envelope message (bad magic; expected "HSME")');
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
