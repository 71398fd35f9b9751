/** Envelope encryption's data keys (GenerateDataKey, DecryptDataKey) and the encryption context's AAD. */
import { Code, HsmError, invalid } from "../errors";
import type { KeyDevice } from "../pkcs11";
import { isCiphertextBlob, parseCiphertextHeader, type CiphertextHeader } from "./ciphertext-header";
import type { KeyCrypto } from "./crypto-ops";
import type { KeyRecords } from "./key-records";
import type { KeyRecord } from "./record";
import { algorithmOf } from "./spec";
import type { DataKeyInput, DataKeyOutput, DecryptDataKeyInput, DecryptDataKeyOutput } from "./types";

/** First bytes of a wrapped data key in the format before ciphertext headers (read, no longer written). */
export const DATA_KEY_MAGIC = Buffer.from("HDK1", "ascii");
const MAX_CONTEXT_ENTRIES = 64;

/**
 * The encryption context as AAD: its entries sorted by key, as JSON pairs, so that the same map
 * always gives the same bytes (and maps that differ in any key or value never do).
 */
export function encryptionContextAad(ctx: Record<string, string>): Buffer {
  const entries = Object.entries(ctx ?? {});
  if (entries.length > MAX_CONTEXT_ENTRIES) throw invalid(`encryption_context has more than ${MAX_CONTEXT_ENTRIES} entries`);
  for (const [k, v] of entries) {
    if (k.length < 1 || k.length > 256) throw invalid("encryption_context keys must be 1 to 256 characters");
    if (typeof v !== "string" || v.length > 1024) throw invalid(`encryption_context value of ${k.slice(0, 40)} must be at most 1024 characters`);
  }
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Buffer.from(JSON.stringify(entries), "utf8");
}

/** Envelope encryption's data keys (KMS's GenerateDataKey): made in the HSM, wrapped under an AES key with AES-GCM. */
export class DataKeys {
  constructor(private readonly opts: { device: KeyDevice; records: KeyRecords; crypto: KeyCrypto }) {}

  /**
   * A fresh data key from the HSM's random generator, wrapped under the primary version of the
   * key-encryption key with AES-GCM (the service's IV), the encryption context bound as AAD, in the
   * self-describing form (docs/CIPHERTEXT.md, kind 4: DecryptDataKey needs no key id).
   * `withPlaintext` false answers only the wrapped key (GenerateDataKeyWithoutPlaintext).
   */
  async generateDataKey(req: DataKeyInput, withPlaintext: boolean): Promise<DataKeyOutput> {
    const r = this.dataKek(req.keyId);
    const spec = req.spec ?? "AES_256";
    if (spec !== "AES_256" && spec !== "AES_128") throw invalid("spec must be KEY_SPEC_AES_256 (the default) or KEY_SPEC_AES_128 for a data key");
    const aad = encryptionContextAad(req.encryptionContext);
    const dk = await this.opts.device.random(spec === "AES_256" ? 32 : 16);
    try {
      const { blob, keyVersion } = await this.opts.crypto.encryptBlob(r, "DATA_KEY", dk, aad);
      return { keyId: r.id, keyVersion, spec, plaintextDataKey: withPlaintext ? Buffer.from(dk) : Buffer.alloc(0), wrappedDataKey: blob };
    } finally {
      dk.fill(0);
    }
  }

  /**
   * Unwraps a data key made by {@link generateDataKey}: exactly the same encryption context. The
   * key and version come from the blob's header (`keyId` may be empty, or must name the same key);
   * a data key in the format before headers (HDK1) needs `keyId`, and opens with its version 1.
   */
  async decryptDataKey(req: DecryptDataKeyInput): Promise<DecryptDataKeyOutput> {
    const blob = Buffer.from(req.wrappedDataKey);
    if (blob.length === 0) throw invalid("wrapped_data_key is required");
    const h = this.parse(blob, req.keyId);
    const r = isCiphertextBlob(blob) ? this.opts.crypto.headerKey(h, req.keyId, "key_id") : this.dataKek(h.keyId);
    if (algorithmOf(r.spec).type !== "aes") throw invalid(`data keys are wrapped under an AES key; ${r.id} is ${algorithmOf(r.spec).type.toUpperCase()}`);
    const aad = encryptionContextAad(req.encryptionContext);
    try {
      const plaintext = await this.opts.crypto.decryptParsed(r, h, aad);
      return { keyId: r.id, keyVersion: h.keyVersion, plaintextDataKey: plaintext };
    } catch (e) {
      throw this.openError(e, r.id);
    }
  }

  /** A failed unwrap as people read it: the device's INVALID_ARGUMENT (the tag did not verify) says why it can fail. */
  openError(e: unknown, keyId: string, field = "wrapped_data_key"): unknown {
    if (e instanceof HsmError && e.code === Code.InvalidArgument) {
      return invalid(`${field} does not open under key ${keyId} with this encryption context: a different key, a different context, or a damaged blob`);
    }
    return e;
  }

  /**
   * A wrapped data key as a parsed header: the self-describing form (kind 4 only), or the HDK1
   * format (magic "HDK1" || IV (12) || ciphertext || tag), which names no key: `keyId`, version 1.
   */
  parse(blob: Buffer, keyId: string): CiphertextHeader {
    if (isCiphertextBlob(blob)) {
      const h = parseCiphertextHeader(blob, "wrapped_data_key");
      if (h.kind !== "DATA_KEY") throw invalid(`wrapped_data_key is a ciphertext of kind ${h.kind}, not a wrapped data key: decrypt it with Decrypt`);
      return h;
    }
    if (blob.length !== 4 + 12 + 16 + 16 && blob.length !== 4 + 12 + 32 + 16) throw invalid("wrapped_data_key is not a data key this service wrapped (wrong length)");
    if (!blob.subarray(0, 4).equals(DATA_KEY_MAGIC)) throw invalid("wrapped_data_key is not a data key this service wrapped (unknown format)");
    if (!keyId) throw invalid("key_id is required for a wrapped data key in the HDK1 format (made before ciphertext headers): it names no key");
    return { kind: "DATA_KEY", keyId, keyVersion: 1, iv: blob.subarray(4, 16), body: blob.subarray(16) };
  }

  /** A key-encryption key for data keys: AES, with encrypt and decrypt usages. */
  private dataKek(id: string): KeyRecord {
    const r = this.opts.records.record(id);
    if (algorithmOf(r.spec).type !== "aes") throw invalid(`data keys are wrapped under an AES key; ${r.id} is ${algorithmOf(r.spec).type.toUpperCase()}`);
    return r;
  }
}
