/**
 * ReEncrypt (issue 13; KMS ReEncrypt, Vault Transit rewrap): a self-describing ciphertext under one
 * key or version becomes one under another key, or the primary version of the same key, without
 * the plaintext leaving the daemon. The HSM decrypts into daemon memory (C_Decrypt), the HSM
 * encrypts again (C_Encrypt), and the buffer is zeroed in between; the caller gets only the new blob.
 */
import { invalid } from "../errors";
import { isCiphertextBlob, parseCiphertextHeader, type CiphertextHeader } from "./ciphertext-header";
import type { KeyCrypto } from "./crypto-ops";
import { DATA_KEY_MAGIC, encryptionContextAad, type DataKeys } from "./data-keys";
import type { KeyRecords } from "./key-records";
import { algorithmOf } from "./spec";
import { checkPayload, type KeyLimits } from "./validation";

/** ReEncrypt's request (ReEncryptRequest in proto/hsm/v1/crypto.proto). */
export interface ReEncryptInput {
  /** An EncryptResponse.ciphertext_blob or a wrapped data key (either format). */
  ciphertextBlob: Uint8Array;
  /** "": the source key (its primary version). */
  destinationKeyId: string;
  /** AES-GCM: the source's AAD, and the result's ("": the source's). */
  sourceAad: Uint8Array;
  destinationAad: Uint8Array;
  /** Data keys: their encryption context (kept for the result). */
  encryptionContext: Record<string, string>;
  /** Only for an HDK1 data key, which names no key: the key it was wrapped under. */
  sourceKeyId: string;
}

/** ReEncrypt's answer: the new blob, and the key and version before and after. */
export interface ReEncryptOutput {
  ciphertextBlob: Buffer;
  sourceKeyId: string;
  sourceKeyVersion: number;
  keyId: string;
  keyVersion: number;
}

/** ReEncrypt over {@link KeyCrypto}'s blob primitives (the same checks Decrypt and Encrypt make). */
export class ReEncrypter {
  constructor(private readonly opts: { records: KeyRecords; crypto: KeyCrypto; dataKeys: DataKeys; limits: KeyLimits }) {}

  /**
   * Decrypts `req.ciphertextBlob` with the key and version its header names (decrypt usage, the
   * minimum decryption version), encrypts the plaintext with the destination's primary version
   * (encrypt usage) into a blob of the same kind, and zeroes the plaintext. A data key stays a
   * wrapped data key under the same encryption context; an AES-GCM ciphertext takes
   * `destinationAad` (default: the source's AAD); CBC-PAD and CTR take none.
   */
  async reEncrypt(req: ReEncryptInput): Promise<ReEncryptOutput> {
    const { records, crypto, dataKeys, limits } = this.opts;
    const blob = checkPayload(limits, "ciphertext_blob", Buffer.from(req.ciphertextBlob));
    const h = this.source(blob, req.sourceKeyId);
    const src = isCiphertextBlob(blob) ? crypto.headerKey(h, req.sourceKeyId, "source_key_id") : records.record(h.keyId, "source_key_id");
    const dst = req.destinationKeyId ? records.record(req.destinationKeyId, "destination_key_id") : src;
    const dalg = algorithmOf(dst.spec);
    if (dalg.type !== "aes") throw invalid(`destination key ${dst.id} is ${dalg.type.toUpperCase()}: ReEncrypt keeps the ciphertext's kind (${h.kind}), which needs an AES key`);
    const sourceAad = Buffer.from(req.sourceAad);
    const destinationAad = Buffer.from(req.destinationAad);
    const ctx = req.encryptionContext ?? {};
    let inAad: Buffer;
    let outAad: Buffer;
    if (h.kind === "DATA_KEY") {
      if (sourceAad.length || destinationAad.length) throw invalid("source_aad and destination_aad are for AES-GCM ciphertexts; a wrapped data key takes its encryption_context");
      inAad = outAad = encryptionContextAad(ctx);
    } else {
      if (Object.keys(ctx).length) throw invalid("encryption_context is for wrapped data keys; an AES-GCM ciphertext takes source_aad and destination_aad");
      if (h.kind !== "AES_GCM" && (sourceAad.length || destinationAad.length)) throw invalid(`source_aad and destination_aad are only for AES-GCM ciphertexts; this one is ${h.kind}`);
      checkPayload(limits, "source_aad", sourceAad, true);
      checkPayload(limits, "destination_aad", destinationAad, true);
      inAad = sourceAad;
      outAad = destinationAad.length ? destinationAad : sourceAad;
    }
    const pt = await crypto.decryptParsed(src, h, inAad).catch((e) => {
      throw h.kind === "DATA_KEY" ? dataKeys.openError(e, src.id, "ciphertext_blob") : e;
    });
    try {
      const { blob: out, keyVersion } = await crypto.encryptBlob(dst, h.kind, pt, outAad);
      return { ciphertextBlob: out, sourceKeyId: src.id, sourceKeyVersion: h.keyVersion, keyId: dst.id, keyVersion };
    } finally {
      pt.fill(0);
    }
  }

  /** The source as a parsed header: a self-describing blob, or an HDK1 data key with `sourceKeyId`. */
  private source(blob: Buffer, sourceKeyId: string): CiphertextHeader {
    if (isCiphertextBlob(blob) || !blob.subarray(0, 4).equals(DATA_KEY_MAGIC)) return parseCiphertextHeader(blob, "ciphertext_blob");
    if (!sourceKeyId) throw invalid("ciphertext_blob is a wrapped data key in the HDK1 format (made before ciphertext headers), which names no key: pass its key as source_key_id");
    return this.opts.dataKeys.parse(blob, sourceKeyId);
  }
}
