/**
 * The self-describing ciphertext format (issue 13, docs/CIPHERTEXT.md): a small header naming the
 * key id, the key version, the algorithm and the IV, then the ciphertext. Decrypt, DecryptDataKey
 * and ReEncrypt read the key and version from it, so a caller needs neither.
 *
 * ```
 * off  len  field (integers big-endian)
 * 0    4    magic "hsm1" (68 73 6d 31)
 * 4    1    header version = 0x01
 * 5    1    kind: 1 AES-GCM ciphertext, 2 AES-CBC-PAD, 3 AES-CTR, 4 wrapped data key (AES-GCM)
 * 6    4    key version (uint32, ≥ 1)
 * 10   1    key id length k (1 … 64), then k bytes: the key id (ASCII [A-Za-z0-9_-])
 *      1    IV length n, then n bytes: the IV (GCM and data keys: 12; CBC-PAD and CTR: 16)
 *      …    the ciphertext: GCM and data keys ciphertext || 16-byte tag; CBC-PAD a multiple of 16
 * ```
 *
 * Pure: no device, no store. {@link parseCiphertextHeader} throws nothing but an INVALID_ARGUMENT
 * {@link HsmError} naming what is wrong, whatever the bytes.
 */
import { HsmError, invalid } from "../errors";
import { ID_RE } from "./validation";

/** "hsm1": the first four bytes of every self-describing ciphertext. */
export const CIPHERTEXT_MAGIC = Buffer.from("hsm1", "ascii");
/** The header version this daemon writes and reads. */
export const CIPHERTEXT_HEADER_VERSION = 1;
/** Bytes before the key id: magic, header version, kind, key version, key id length. */
const FIXED = 4 + 1 + 1 + 4 + 1;
/** A GCM tag in a blob: always the full 16 bytes (the service makes every blob). */
export const BLOB_TAG_BYTES = 16;
const MAX_KEY_VERSION = 0xffff_ffff;

/** What a blob holds, by its kind byte. */
export const CIPHERTEXT_KINDS = { AES_GCM: 1, AES_CBC_PAD: 2, AES_CTR: 3, DATA_KEY: 4 } as const;
export type CiphertextKind = keyof typeof CIPHERTEXT_KINDS;
const KIND_BY_BYTE = new Map<number, CiphertextKind>(Object.entries(CIPHERTEXT_KINDS).map(([k, v]) => [v, k as CiphertextKind]));
/** The IV length each kind takes. */
const IV_BYTES: Readonly<Record<CiphertextKind, number>> = { AES_GCM: 12, AES_CBC_PAD: 16, AES_CTR: 16, DATA_KEY: 12 };

/** A parsed (or to be encoded) self-describing ciphertext. */
export interface CiphertextHeader {
  kind: CiphertextKind;
  keyId: string;
  keyVersion: number;
  iv: Buffer;
  /** The ciphertext after the header (GCM and data keys: with the 16-byte tag at its end). */
  body: Buffer;
}

/** True when `b` starts with the format's magic (a blob, as opposed to an older format). */
export const isCiphertextBlob = (b: Uint8Array): boolean => b.length >= 4 && Buffer.from(b.buffer, b.byteOffset, 4).equals(CIPHERTEXT_MAGIC);

/** Encodes a blob; INVALID_ARGUMENT for fields the format cannot hold (never for what the service makes). */
export function encodeCiphertextHeader(h: CiphertextHeader): Buffer {
  const id = Buffer.from(h.keyId, "ascii");
  if (!ID_RE.test(h.keyId)) throw invalid(`key id "${h.keyId.slice(0, 80)}" cannot go in a ciphertext header`);
  if (!Number.isInteger(h.keyVersion) || h.keyVersion < 1 || h.keyVersion > MAX_KEY_VERSION) throw invalid(`key version ${h.keyVersion} cannot go in a ciphertext header`);
  if (h.iv.length !== IV_BYTES[h.kind]) throw invalid(`a ${h.kind} ciphertext header takes a ${IV_BYTES[h.kind]}-byte IV; got ${h.iv.length}`);
  const head = Buffer.alloc(FIXED);
  CIPHERTEXT_MAGIC.copy(head, 0);
  head[4] = CIPHERTEXT_HEADER_VERSION;
  head[5] = CIPHERTEXT_KINDS[h.kind];
  head.writeUInt32BE(h.keyVersion, 6);
  head[10] = id.length;
  return Buffer.concat([head, id, Buffer.from([h.iv.length]), h.iv, h.body]);
}

/**
 * Parses a blob. `field` names the request field in the messages ("ciphertext_blob",
 * "wrapped_data_key"). Every problem, truncation included, is an INVALID_ARGUMENT saying what is
 * wrong; a well-formed header proves nothing about the key or the ciphertext (decryption does).
 */
export function parseCiphertextHeader(blob: Uint8Array, field = "ciphertext_blob"): CiphertextHeader {
  const b = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  const bad = (what: string) => invalid(`${field} is not a ciphertext this service made: ${what} (docs/CIPHERTEXT.md)`);
  if (b.length === 0) throw invalid(`${field} is empty`);
  if (b.length < 4 || !b.subarray(0, 4).equals(CIPHERTEXT_MAGIC)) throw bad('it does not start with "hsm1"');
  if (b.length < FIXED) throw bad(`the header is truncated (${b.length} bytes)`);
  if (b[4] !== CIPHERTEXT_HEADER_VERSION) throw bad(`header version ${b[4]} is unknown (this daemon reads version ${CIPHERTEXT_HEADER_VERSION})`);
  const kind = KIND_BY_BYTE.get(b[5]!);
  if (!kind) throw bad(`kind ${b[5]} is unknown (1 AES-GCM, 2 AES-CBC-PAD, 3 AES-CTR, 4 data key)`);
  const keyVersion = b.readUInt32BE(6);
  if (keyVersion === 0) throw bad("key version 0 (versions start at 1)");
  const idLen = b[10]!;
  if (idLen === 0) throw bad("the key id is empty");
  if (b.length < FIXED + idLen + 1) throw bad("the header is truncated in the key id");
  const keyId = b.subarray(FIXED, FIXED + idLen).toString("latin1");
  if (!ID_RE.test(keyId)) throw bad("the key id is not a key id");
  const ivAt = FIXED + idLen + 1;
  const ivLen = b[ivAt - 1]!;
  if (ivLen !== IV_BYTES[kind]) throw bad(`a ${kind} header has a ${IV_BYTES[kind]}-byte IV; this one says ${ivLen}`);
  if (b.length < ivAt + ivLen) throw bad("the header is truncated in the IV");
  const iv = Buffer.from(b.subarray(ivAt, ivAt + ivLen));
  const body = Buffer.from(b.subarray(ivAt + ivLen));
  if ((kind === "AES_GCM" || kind === "DATA_KEY") && body.length < BLOB_TAG_BYTES) throw bad(`the ciphertext is shorter than the ${BLOB_TAG_BYTES}-byte tag`);
  if (kind === "DATA_KEY" && body.length !== 16 + BLOB_TAG_BYTES && body.length !== 32 + BLOB_TAG_BYTES) throw bad("a wrapped data key holds a 16- or 32-byte key");
  if (kind === "AES_CBC_PAD" && (body.length === 0 || body.length % 16 !== 0)) throw bad("an AES-CBC-PAD ciphertext is a non-zero multiple of 16 bytes");
  return { kind, keyId, keyVersion, iv, body };
}

/** The key a blob names, or the INVALID_ARGUMENT message saying why it names none (for the access rules: never throws). */
export function blobKeyOf(blob: unknown, field: string): { keyId: string } | { error: string } {
  if (!(blob instanceof Uint8Array)) return { error: `${field} is required` };
  try {
    return { keyId: parseCiphertextHeader(blob, field).keyId };
  } catch (e) {
    return { error: e instanceof HsmError ? e.message : `${field} cannot be read` };
  }
}
