/**
 * Envelope rewrap (issue 13): an envelope message's data key re-encrypted under another key, or the
 * primary version of its own key after a rotation, by the service (ReEncrypt: the data key never
 * travels in the clear for that step), the frames (the bodies) left byte for byte as they were.
 *
 * The header names the key id, key version and wrapped data key, and is authenticated with a tag
 * under the message key, which derives from the data key (docs/ENVELOPE.md). A new wrapped key
 * therefore needs a new header tag: the rewrap unwraps the new wrapped key (DecryptDataKey, as any
 * decryption does), checks the old header's key commitment and tag with it (a forged header is
 * refused, nothing returned), writes the new header, and zeroes the key. Frames do not depend on
 * the header's key fields (their AAD is the message id, sequence number, flags and length), so they
 * are copied unchanged.
 */
import { timingSafeEqual } from "node:crypto";
import type { ReEncryptRequest, ReEncryptResponse } from "../gen/hsm/v1/crypto";
import { serviceError } from "./envelope-data-keys";
import { DATA_KEY_BYTES, MAX_HEADER_BYTES, deriveMessageKeys, encodeHeader, envelopeError, headerTag } from "./envelope-format";
import { asBuffer, checkSource, type DataKeySource } from "./envelope-options";
import { parseHeader } from "./envelope-parse";

/** What {@link rewrapEnvelope} needs of a client: data keys and ReEncrypt (an HsmClient has both). */
export interface RewrapSource extends DataKeySource {
  reEncrypt(request: Partial<ReEncryptRequest>): Promise<ReEncryptResponse>;
}

/** Options of {@link rewrapEnvelope}. */
export interface EnvelopeRewrapOptions {
  /** The key to wrap the data key under (an id, or `alias/NAME` where aliases exist). @default the message's own key: its primary version */
  destinationKeyId?: string;
}

/** A rewrapped message and the key and version before and after. */
export interface EnvelopeRewrapResult {
  message: Buffer;
  keyId: string;
  keyVersion: number;
  previousKeyId: string;
  previousKeyVersion: number;
}

/**
 * Re-wraps the data key of one envelope message (a Buffer holding the whole message, or at least
 * its header: whatever follows the header is copied as is). Rejects with INVALID_ARGUMENT for a
 * malformed or forged header, and with the service's status when it refuses the ReEncrypt or the
 * unwrap (NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION …).
 */
export async function rewrapEnvelope(client: RewrapSource, message: Buffer | Uint8Array, opts: EnvelopeRewrapOptions = {}): Promise<EnvelopeRewrapResult> {
  const source = checkSource(client);
  if (typeof client.reEncrypt !== "function") throw envelopeError("client must be an HsmClient (or have reEncrypt)");
  const m = asBuffer("message", message);
  const h = parseHeader(m.subarray(0, MAX_HEADER_BYTES));
  if ("need" in h) throw envelopeError("message truncated (incomplete header)");
  const ctx = h.encryptionContext;
  const hdk1 = h.wrappedDataKey.subarray(0, 4).toString("latin1") === "HDK1";
  let r: ReEncryptResponse;
  try {
    // An HDK1 wrapped key (before ciphertext headers) names no key: the message header does.
    r = await client.reEncrypt({ ciphertextBlob: h.wrappedDataKey, destinationKeyId: opts.destinationKeyId ?? "", encryptionContext: ctx, sourceKeyId: hdk1 ? h.keyId : "" });
  } catch (e) {
    throw serviceError(`ReEncrypt of the data key under ${h.keyId} failed`, e);
  }
  let dataKey: Buffer;
  try {
    const d = await source.decryptDataKey({ keyId: r.keyId, wrappedDataKey: r.ciphertextBlob, encryptionContext: ctx });
    dataKey = Buffer.from(d.plaintextDataKey);
    d.plaintextDataKey.fill(0);
  } catch (e) {
    throw serviceError(`DecryptDataKey under ${r.keyId} failed`, e);
  }
  const keys = (() => {
    try {
      if (dataKey.length !== DATA_KEY_BYTES) throw envelopeError(`the wrapped data key unwraps to ${dataKey.length} bytes; this format uses AES-256 data keys`);
      return deriveMessageKeys(dataKey, h.messageId);
    } finally {
      dataKey.fill(0);
    }
  })();
  try {
    if (!timingSafeEqual(keys.commitment, h.commitment) || !timingSafeEqual(headerTag(keys.messageKey, h.authenticated), h.headerTag)) {
      throw envelopeError("the header failed authentication: the message was not rewrapped");
    }
    const header = encodeHeader(
      { messageId: h.messageId, frameSize: h.frameSize, keyId: r.keyId, keyVersion: r.keyVersion, wrappedDataKey: Buffer.from(r.ciphertextBlob), encryptionContext: ctx },
      keys,
    );
    return { message: Buffer.concat([header, m.subarray(h.headerLength)]), keyId: r.keyId, keyVersion: r.keyVersion, previousKeyId: h.keyId, previousKeyVersion: h.keyVersion };
  } finally {
    keys.messageKey.fill(0);
    keys.commitment.fill(0);
  }
}
