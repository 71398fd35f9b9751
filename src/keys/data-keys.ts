/** Envelope encryption's data keys (GenerateDataKey, DecryptDataKey) and the encryption context's AAD. */
import { Code, HsmError, invalid } from "../errors";
import type { KeyDevice } from "../pkcs11";
import type { KeyCrypto } from "./crypto-ops";
import type { KeyRecords } from "./key-records";
import type { KeyRecord } from "./record";
import { algorithmOf } from "./spec";
import type { DataKeyInput, DataKeyOutput, DecryptDataKeyInput, DecryptDataKeyOutput } from "./types";

/** First bytes of a wrapped data key: the format's name and version. */
const DATA_KEY_MAGIC = Buffer.from("HDK1", "ascii");
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
   * A fresh data key from the HSM's random generator, wrapped under the key-encryption key with
   * AES-GCM (the service's IV), the encryption context bound as AAD. `withPlaintext` false answers
   * only the wrapped key (GenerateDataKeyWithoutPlaintext).
   */
  async generateDataKey(req: DataKeyInput, withPlaintext: boolean): Promise<DataKeyOutput> {
    const r = this.dataKek(req.keyId);
    const spec = req.spec ?? "AES_256";
    if (spec !== "AES_256" && spec !== "AES_128") throw invalid("spec must be KEY_SPEC_AES_256 (the default) or KEY_SPEC_AES_128 for a data key");
    const aad = encryptionContextAad(req.encryptionContext);
    const dk = await this.opts.device.random(spec === "AES_256" ? 32 : 16);
    try {
      const { ciphertext, iv } = await this.opts.crypto.encrypt({ keyId: r.id, algorithm: "AES_GCM", plaintext: dk, aad, iv: Buffer.alloc(0), oaepLabel: Buffer.alloc(0) });
      return {
        keyId: r.id,
        keyVersion: r.currentVersion,
        spec,
        plaintextDataKey: withPlaintext ? Buffer.from(dk) : Buffer.alloc(0),
        wrappedDataKey: Buffer.concat([DATA_KEY_MAGIC, iv, ciphertext]),
      };
    } finally {
      dk.fill(0);
    }
  }

  /** Unwraps a data key made by {@link generateDataKey}: the same key, and exactly the same encryption context. */
  async decryptDataKey(req: DecryptDataKeyInput): Promise<DecryptDataKeyOutput> {
    const r = this.dataKek(req.keyId);
    const blob = Buffer.from(req.wrappedDataKey);
    if (blob.length === 0) throw invalid("wrapped_data_key is required");
    if (blob.length !== 4 + 12 + 16 + 16 && blob.length !== 4 + 12 + 32 + 16) throw invalid("wrapped_data_key is not a data key this service wrapped (wrong length)");
    if (!blob.subarray(0, 4).equals(DATA_KEY_MAGIC)) throw invalid("wrapped_data_key is not a data key this service wrapped (unknown format)");
    const aad = encryptionContextAad(req.encryptionContext);
    try {
      const { plaintext } = await this.opts.crypto.decrypt({
        keyId: r.id,
        algorithm: "AES_GCM",
        ciphertext: blob.subarray(16),
        iv: blob.subarray(4, 16),
        aad,
        tagLength: 16,
        oaepLabel: Buffer.alloc(0),
        ciphertextBlob: Buffer.alloc(0),
        keyVersion: 0,
      });
      return { keyId: r.id, keyVersion: r.currentVersion, plaintextDataKey: plaintext };
    } catch (e) {
      if (e instanceof HsmError && e.code === Code.InvalidArgument) {
        throw invalid(`wrapped_data_key does not open under key ${r.id} with this encryption context: a different key, a different context, or a damaged blob`);
      }
      throw e;
    }
  }

  /** A key-encryption key for data keys: AES, with encrypt and decrypt usages. */
  private dataKek(id: string): KeyRecord {
    const r = this.opts.records.record(id);
    if (algorithmOf(r.spec).type !== "aes") throw invalid(`data keys are wrapped under an AES key; ${r.id} is ${algorithmOf(r.spec).type.toUpperCase()}`);
    return r;
  }
}
