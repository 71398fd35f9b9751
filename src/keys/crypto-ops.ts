/** Crypto with keys (encrypt, decrypt, sign, verify, wrap, unwrap, derive, random): each call's rules and its device work. */
import { timingSafeEqual } from "node:crypto";
import { BLOB_TAG_BYTES, encodeCiphertextHeader, parseCiphertextHeader, type CiphertextHeader, type CiphertextKind } from "./ciphertext-header";
import { freshIv } from "./iv-pool";
import { exhausted, invalid, notFound, precondition } from "../errors";
import { CURVE_BYTES, partsFromSpki, type KeyDevice, type Part, type SignSpec, type WrapSpec } from "../pkcs11";
import type { KeyFactory } from "./key-create";
import { residencyOf, type KeyRecords } from "./key-records";
import type { KeyRecord, UserRef } from "./record";
import { derToRaw, rawToDer } from "./signature";
import { versionForUse } from "./version-use";
import { HASH_LEN, algorithmOf, cipherFor, isSecret, macLengthFor, oaepLabelFor, resolveUsages, signFor, wrapFor } from "./spec";
import type {
  DecryptInput,
  DecryptOutput,
  DeriveKeyInput,
  EncryptInput,
  EncryptOutput,
  EncryptionAlgorithmName,
  Key,
  SignInput,
  SignOutput,
  UnwrapKeyInput,
  VerifyInput,
  VerifyOutput,
  WrapAlgorithmName,
  WrapKeyInput,
} from "./types";
import { checkLabel, checkPayload, checkRequestId, type KeyLimits } from "./validation";

/** What the crypto operations need. */
export interface KeyCryptoOptions {
  device: KeyDevice;
  limits: KeyLimits;
  records: KeyRecords;
  factory: KeyFactory;
}

/** Crypto with keys: encrypt, decrypt, sign, verify, wrap, unwrap, derive, random (each call's rules and its device work). */
export class KeyCrypto {
  constructor(private readonly opts: KeyCryptoOptions) {}

  private payload(name: string, b: Buffer, allowEmpty = false): Buffer {
    return checkPayload(this.opts.limits, name, b, allowEmpty);
  }

  /** A wrap algorithm with the request's oaep_label (RSA_OAEP only, limits.maxOaepLabelBytes). */
  private wrapSpec(alg: WrapAlgorithmName, oaepLabel: Uint8Array): WrapSpec {
    const spec = wrapFor(alg);
    const label = oaepLabelFor(oaepLabel, spec.name === "RSA_OAEP", `WRAP_ALGORITHM_${alg}`, this.opts.limits.maxOaepLabelBytes);
    return spec.name === "RSA_OAEP" ? { ...spec, label } : spec;
  }

  async encrypt(req: EncryptInput): Promise<EncryptOutput> {
    const { records, device, limits } = this.opts;
    const r = records.record(req.keyId);
    const alg = algorithmOf(r.spec);
    const c = cipherFor(req.algorithm, alg);
    records.needUsage(r, "encrypt");
    const pt = this.payload("plaintext", Buffer.from(req.plaintext), c.name !== "RSA_OAEP");
    const label = oaepLabelFor(req.oaepLabel, c.name === "RSA_OAEP", `ENCRYPTION_ALGORITHM_${req.algorithm}`, limits.maxOaepLabelBytes);
    const aad = Buffer.from(req.aad);
    let iv = Buffer.from(req.iv);
    if (c.name !== "AES_GCM" && aad.length) throw invalid("aad is only for AES_GCM");
    if (c.name === "AES_GCM") {
      if (iv.length) throw invalid("iv must be empty for AES_GCM: the service generates a fresh 12-byte IV for every encryption");
      this.payload("aad", aad, true);
      iv = freshIv(12);
    } else if (c.name === "AES_CBC_PAD" || c.name === "AES_CTR") {
      if (iv.length === 0) iv = freshIv(16);
      else if (iv.length !== 16) throw invalid(`iv must be 16 bytes for ${c.name}; got ${iv.length}`);
    } else if (iv.length) {
      throw invalid("iv is not used with RSA_OAEP");
    }
    let outLen = pt.length + 32;
    const k = alg.type === "rsa" ? alg.bits / 8 : 0;
    if (c.name === "RSA_OAEP") {
      const max = k - 2 * HASH_LEN[c.hash!] - 2;
      if (pt.length > max) throw invalid(`plaintext is ${pt.length} bytes; RSA-OAEP with this key and hash takes at most ${max}`);
      outLen = k;
    }
    const spec = c.name === "AES_GCM" ? { name: c.name, iv, aad, tagBytes: 16 } : c.name === "RSA_OAEP" ? { name: c.name, hash: c.hash!, k, label } : { name: c.name, iv };
    const part: Part = r.publicKeySpki ? "public" : "secret";
    const version = r.currentVersion;
    const ct = await records.withKey(r, (id) => device.encrypt(id, part, spec, pt, outLen), version);
    if (c.name === "RSA_OAEP") return { keyId: r.id, ciphertext: ct, iv: Buffer.alloc(0), keyVersion: version, ciphertextBlob: Buffer.alloc(0) };
    // The blob and the raw output are two views of one encryption (GCM AAD: the caller's only; docs/CIPHERTEXT.md).
    const ciphertextBlob = encodeCiphertextHeader({ kind: c.name, keyId: r.id, keyVersion: version, iv, body: ct });
    return { keyId: r.id, ciphertext: ct, iv, keyVersion: version, ciphertextBlob };
  }

  /**
   * Decrypt: a self-describing ciphertext (`ciphertextBlob`, docs/CIPHERTEXT.md) with the key and
   * version its header names, or a raw one with `keyId` and `keyVersion` (0: the primary version).
   */
  async decrypt(req: DecryptInput): Promise<DecryptOutput> {
    const { records } = this.opts;
    const blob = Buffer.from(req.ciphertextBlob ?? []);
    if (blob.length > 0) return this.decryptBlob(req, blob);
    if (!req.algorithm) throw invalid("algorithm is required for a raw ciphertext (or pass the ciphertext_blob Encrypt returned)");
    const r = records.record(req.keyId);
    const version = req.keyVersion || r.currentVersion;
    const plaintext = await this.decryptRaw(r, version, { ...req, algorithm: req.algorithm });
    return { keyId: r.id, plaintext, keyVersion: version };
  }

  /** Decrypt of a self-describing ciphertext: everything but the AAD comes from its header. */
  private async decryptBlob(req: DecryptInput, blob: Buffer): Promise<DecryptOutput> {
    this.payload("ciphertext_blob", blob);
    const h = parseCiphertextHeader(blob, "ciphertext_blob");
    if (h.kind === "DATA_KEY") throw invalid("ciphertext_blob is a wrapped data key: unwrap it with DecryptDataKey");
    // The raw fields may come along (a client passing a whole EncryptResponse back), but only as the
    // blob's own: anything else is ambiguous.
    const same = (given: Uint8Array, own: Buffer) => given.length === 0 || Buffer.from(given).equals(own);
    if (req.algorithm && req.algorithm !== h.kind) throw invalid(`algorithm ${req.algorithm} is not the ciphertext_blob's (${h.kind}): leave it unspecified`);
    if (!same(req.ciphertext, h.body) || !same(req.iv, h.iv) || (req.tagLength && req.tagLength !== 16)) {
      throw invalid("ciphertext, iv and tag_length must be empty with ciphertext_blob (or the blob's own): its header holds them");
    }
    if (req.keyVersion && req.keyVersion !== h.keyVersion) throw invalid(`key_version ${req.keyVersion} is not the ciphertext_blob's: its header names version ${h.keyVersion}`);
    const r = this.headerKey(h, req.keyId, "key_id");
    const plaintext = await this.decryptParsed(r, h, Buffer.from(req.aad));
    return { keyId: r.id, plaintext, keyVersion: h.keyVersion };
  }

  /**
   * The record of the key a header names; `named` (a request's key field, may be empty) must be the
   * same key: INVALID_ARGUMENT naming both otherwise.
   */
  headerKey(h: CiphertextHeader, named: string, field: string): KeyRecord {
    const { records } = this.opts;
    const r = records.record(h.keyId, "the ciphertext header's key id");
    if (named && records.record(named, field).id !== r.id) {
      throw invalid(`${field} ${named} is not the key the ciphertext names (${h.keyId}): leave ${field} empty, or name that key`);
    }
    return r;
  }

  /** The plaintext of a parsed blob under `r` (the version its header names); GCM kinds with `aad`. */
  decryptParsed(r: KeyRecord, h: CiphertextHeader, aad: Buffer): Promise<Buffer> {
    const gcm = h.kind === "AES_GCM" || h.kind === "DATA_KEY";
    const algorithm = gcm ? "AES_GCM" : h.kind === "AES_CBC_PAD" ? "AES_CBC_PAD" : "AES_CTR";
    return this.decryptRaw(r, h.keyVersion, { algorithm, ciphertext: h.body, iv: h.iv, aad, tagLength: gcm ? BLOB_TAG_BYTES : 0, oaepLabel: Buffer.alloc(0) });
  }

  /** Decrypts a raw ciphertext with one version of a key, in the HSM. */
  private async decryptRaw(r: KeyRecord, version: number, req: Omit<DecryptInput, "keyId" | "ciphertextBlob" | "keyVersion" | "algorithm"> & { algorithm: EncryptionAlgorithmName }): Promise<Buffer> {
    const { records, device, limits } = this.opts;
    const alg = algorithmOf(r.spec);
    const c = cipherFor(req.algorithm, alg);
    records.needUsage(r, "decrypt");
    if (r.publicOnly) throw precondition(`key ${r.id} is a public key: it cannot decrypt`);
    versionForUse(r, version, "decrypt");
    const ct = this.payload("ciphertext", Buffer.from(req.ciphertext), c.name === "AES_CTR");
    const label = oaepLabelFor(req.oaepLabel, c.name === "RSA_OAEP", `ENCRYPTION_ALGORITHM_${req.algorithm}`, limits.maxOaepLabelBytes);
    const aad = Buffer.from(req.aad);
    const iv = Buffer.from(req.iv);
    let spec;
    if (c.name === "AES_GCM") {
      const tag = req.tagLength || 16;
      if (tag < 12 || tag > 16) throw invalid(`tag_length must be 12 to 16 bytes; got ${tag}`);
      if (iv.length === 0) throw invalid("iv is required for AES_GCM decrypt: pass the one Encrypt returned");
      if (iv.length > 128) throw invalid("iv is longer than 128 bytes");
      if (ct.length < tag) throw invalid(`ciphertext is shorter than the ${tag}-byte tag`);
      this.payload("aad", aad, true);
      spec = { name: c.name, iv, aad, tagBytes: tag };
    } else {
      if (aad.length) throw invalid("aad is only for AES_GCM");
      if (req.tagLength) throw invalid("tag_length is only for AES_GCM");
      if (c.name === "RSA_OAEP") {
        if (iv.length) throw invalid("iv is not used with RSA_OAEP");
        spec = { name: c.name, hash: c.hash!, k: (alg as { bits: number }).bits / 8, label };
      } else {
        if (iv.length !== 16) throw invalid(`iv must be 16 bytes for ${c.name}; got ${iv.length}`);
        if (c.name === "AES_CBC_PAD" && ct.length % 16 !== 0) throw invalid("AES_CBC_PAD ciphertext must be a multiple of 16 bytes");
        spec = { name: c.name, iv };
      }
    }
    const part: Part = r.publicKeySpki ? "private" : "secret";
    return records.withKey(r, (id) => device.decrypt(id, part, spec as never, ct, ct.length + 32), version);
  }

  /**
   * Encrypts `pt` with the primary version of AES key `r` into a self-describing ciphertext of
   * `kind` (ReEncrypt, data keys): a fresh IV; the GCM kinds bind `aad`.
   */
  async encryptBlob(r: KeyRecord, kind: CiphertextKind, pt: Buffer, aad: Buffer): Promise<{ blob: Buffer; keyVersion: number }> {
    const { records, device } = this.opts;
    const alg = algorithmOf(r.spec);
    if (alg.type !== "aes") throw invalid(`key ${r.id} is ${alg.type.toUpperCase()}: this ciphertext needs an AES key`);
    records.needUsage(r, "encrypt");
    const gcm = kind === "AES_GCM" || kind === "DATA_KEY";
    if (!gcm && aad.length) throw invalid("aad is only for AES_GCM");
    const iv = freshIv(gcm ? 12 : 16);
    const spec = gcm ? { name: "AES_GCM" as const, iv, aad, tagBytes: BLOB_TAG_BYTES } : { name: kind as "AES_CBC_PAD" | "AES_CTR", iv };
    const version = r.currentVersion;
    const body = await records.withKey(r, (id) => device.encrypt(id, "secret", spec, pt, pt.length + 32), version);
    return { blob: encodeCiphertextHeader({ kind, keyId: r.id, keyVersion: version, iv, body }), keyVersion: version };
  }

  private signInput(req: SignInput, r: KeyRecord) {
    const alg = algorithmOf(r.spec);
    const digest = req.messageType === "DIGEST";
    const spec = signFor(req.algorithm, alg, digest);
    const msg = this.payload("message", Buffer.from(req.message), spec.name === "HMAC" || spec.name === "EDDSA" || !digest);
    if (digest && "hash" in spec && msg.length !== HASH_LEN[spec.hash]) {
      throw invalid(`message is a ${spec.hash.toUpperCase()} digest and must be ${HASH_LEN[spec.hash]} bytes; got ${msg.length}`);
    }
    if (req.signatureFormat === "RAW" && spec.name !== "ECDSA") throw invalid("signature_format RAW applies to ECDSA only");
    const macLength = macLengthFor(req.macLength, spec, `SIGNING_ALGORITHM_${req.algorithm}`);
    return { alg, spec, msg, macLength };
  }

  async sign(req: SignInput): Promise<SignOutput> {
    const { records, device } = this.opts;
    const r = records.record(req.keyId);
    const { spec, msg, macLength } = this.signInput(req, r);
    records.needUsage(r, "sign");
    if (r.publicOnly) throw precondition(`key ${r.id} is a public key: it cannot sign`);
    let sig = await records.withKey(r, (id) => device.sign(id, spec, msg));
    if (spec.name === "ECDSA" && req.signatureFormat === "DER") sig = rawToDer(sig);
    // A truncated HMAC tag is the leftmost bytes of the full one (RFC 2104 §5).
    if (macLength !== undefined) sig = sig.subarray(0, macLength);
    return { keyId: r.id, signature: sig, keyVersion: r.currentVersion };
  }

  /** Verifies with the version `keyVersion` names (0: the primary): one below min_decryption_version or gone is refused. */
  async verify(req: VerifyInput): Promise<VerifyOutput> {
    const { records, device } = this.opts;
    const r = records.record(req.keyId);
    const { alg, spec, msg, macLength } = this.signInput(req, r);
    records.needUsage(r, "verify");
    const keyVersion = versionForUse(r, req.keyVersion, "verify");
    let sig: Buffer = Buffer.from(req.signature);
    if (sig.length === 0) throw invalid("signature is empty");
    if (sig.length > 2048) throw invalid("signature is longer than any supported key's signature");
    if (macLength !== undefined) return { keyId: r.id, valid: await this.verifyTruncated(r, spec, msg, sig, macLength, keyVersion), keyVersion };
    if (spec.name === "ECDSA") {
      const size = CURVE_BYTES[(alg as { curve: keyof typeof CURVE_BYTES }).curve];
      if (req.signatureFormat === "DER") {
        const raw = derToRaw(sig, size);
        if (!raw) return { keyId: r.id, valid: false, keyVersion };
        sig = raw;
      } else if (sig.length !== 2 * size) {
        return { keyId: r.id, valid: false, keyVersion };
      }
    }
    const valid = await records.withKey(r, (id) => device.verify(id, spec, msg, sig), keyVersion);
    return { keyId: r.id, valid, keyVersion };
  }

  /**
   * A truncated HMAC tag (RFC 2104 §5): the device verifies full-length tags only (C_Verify answers
   * CKR_SIGNATURE_LEN_RANGE), so the full MAC is computed in the HSM (C_Sign, hence the key's sign
   * usage) and its leftmost `macLength` bytes compared with the tag in constant time. A tag of
   * another length than `macLength` is `false`, as any malformed signature.
   */
  private async verifyTruncated(r: KeyRecord, spec: SignSpec, msg: Buffer, tag: Buffer, macLength: number, version: number): Promise<boolean> {
    if (!r.usages.includes("sign")) {
      throw precondition(
        `key ${r.id} cannot verify a truncated tag (mac_length): the device checks full-length tags only, so the MAC is computed in the HSM and compared on the host, which needs the key's sign usage (its usages: ${r.usages.join(", ")})`,
      );
    }
    const full = await this.opts.records.withKey(r, (id) => this.opts.device.sign(id, spec, msg), version);
    try {
      return tag.length === macLength && timingSafeEqual(full.subarray(0, macLength), tag);
    } finally {
      full.fill(0);
    }
  }

  async wrapKey(req: WrapKeyInput): Promise<{ wrappedKey: Buffer }> {
    const { records, device } = this.opts;
    const w = records.record(req.wrappingKeyId, "wrapping_key_id");
    const k = records.record(req.keyId);
    const spec = this.wrapSpec(req.algorithm, req.oaepLabel);
    records.needUsage(w, "wrap");
    const walg = algorithmOf(w.spec);
    const kalg = algorithmOf(k.spec);
    if (!k.exportable) throw precondition(`key ${k.id} is not exportable: it was created with exportable=false`);
    if (k.publicOnly) throw invalid(`key ${k.id} is a public key: fetch it with GetPublicKey instead`);
    if ((spec.name === "AES_KW" || spec.name === "AES_KWP") && walg.type !== "aes") throw invalid(`${spec.name} needs an AES wrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name === "RSA_OAEP" && walg.type !== "rsa") throw invalid(`RSA_OAEP needs an RSA wrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name !== "AES_KWP" && !isSecret(kalg)) throw invalid(`${spec.name} wraps secret keys only; use AES_KWP for a private key`);
    records.needEnabled(k);
    if (residencyOf(k) !== "wrapped") throw precondition(`key ${k.id} exists only in the device that generated it (the device cannot wrap ${kalg.type} keys): it cannot be exported`);
    await records.checkUsable(k);
    // Exported from the record's copy (read from the store), through a transient object (the key's kept objects cannot be wrapped).
    const material = await records.material(k);
    if (!material) throw notFound(`key ${k.id} not found`);
    const blob = await records.withKey(w, (wid) => device.exportWrapped(wid, walg.type === "rsa" ? "public" : "secret", spec, kalg, material));
    return { wrappedKey: blob };
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async unwrapKey(req: UnwrapKeyInput, owner?: UserRef): Promise<Key> {
    const { records, device, limits, factory } = this.opts;
    const w = records.record(req.unwrappingKeyId, "unwrapping_key_id");
    const spec = this.wrapSpec(req.algorithm, req.oaepLabel);
    const alg = algorithmOf(req.spec);
    const label = checkLabel(limits, req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = checkRequestId(limits, req.requestId);
    records.needUsage(w, "unwrap");
    if (w.publicOnly) throw precondition(`key ${w.id} is a public key: it cannot unwrap`);
    const walg = algorithmOf(w.spec);
    if ((spec.name === "AES_KW" || spec.name === "AES_KWP") && walg.type !== "aes") throw invalid(`${spec.name} needs an AES unwrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name === "RSA_OAEP" && walg.type !== "rsa") throw invalid(`RSA_OAEP needs an RSA unwrapping key; ${w.id} is ${walg.type.toUpperCase()}`);
    if (spec.name !== "AES_KWP" && !isSecret(alg)) throw invalid(`${spec.name} unwraps secret keys only; use AES_KWP for a private key`);
    const blob = this.payload("wrapped_key", Buffer.from(req.wrappedKey));
    if (spec.name === "AES_KW" && (blob.length % 8 !== 0 || blob.length < 24)) throw invalid("an AES_KW blob is a multiple of 8 bytes and at least 24");
    const spki = isSecret(alg) ? undefined : factory.checkPairSpki(alg, Buffer.from(req.publicKeySpki));
    const part: Part = walg.type === "rsa" ? "private" : "secret";
    return factory.create({ label, spec: req.spec, usages, state: "ENABLED", origin: "UNWRAPPED", publicOnly: false, exportable: req.exportable, requestId, owner }, async (id) => {
      await records.withKey(w, (wid) => device.unwrap(wid, part, spec, blob, id, alg, usages));
      if (spki) await factory.provePair(id, alg, usages, spki, (tmp) => device.unwrap(w.id, part, spec, blob, tmp, alg, ["sign"]));
      return spki;
    });
  }

  /** `owner`: the crypto user the new key belongs to (absent only in device-level tests). */
  async deriveKey(req: DeriveKeyInput, owner?: UserRef): Promise<Key> {
    const { records, device, limits, factory } = this.opts;
    const p = records.record(req.privateKeyId, "private_key_id");
    const palg = algorithmOf(p.spec);
    if (palg.type !== "ec") throw invalid(`ECDH needs an EC private key; ${p.id} is ${palg.type.toUpperCase()}`);
    records.needUsage(p, "derive");
    if (p.publicOnly) throw precondition(`key ${p.id} is a public key: it cannot derive`);
    const alg = algorithmOf(req.spec);
    if (alg.type !== "aes") throw invalid("spec must be KEY_SPEC_AES_128 or KEY_SPEC_AES_256 for a derived key");
    const label = checkLabel(limits, req.label);
    const usages = resolveUsages(alg, req.usages);
    const requestId = checkRequestId(limits, req.requestId);
    const peer = partsFromSpki(this.payload("peer_public_key_spki", Buffer.from(req.peerPublicKeySpki)));
    if (peer.alg.type !== "ec" || peer.alg.curve !== palg.curve) throw invalid(`peer_public_key_spki must be an EC key on ${palg.curve}`);
    return factory.create({ label, spec: req.spec, usages, state: "ENABLED", origin: "DERIVED", publicOnly: false, exportable: req.exportable, requestId, owner }, async (id) => {
      await records.withKey(p, (pid) => device.deriveEcdh(pid, peer.point!, id, alg, usages));
      return undefined;
    });
  }

  /** Random bytes from the HSM's generator (C_GenerateRandom), at most limits.maxRandomBytes. */
  async generateRandom(length: number): Promise<{ random: Buffer }> {
    if (length === 0) throw invalid("length must be at least 1");
    if (length > this.opts.limits.maxRandomBytes) throw exhausted(`length ${length} is over the limit of ${this.opts.limits.maxRandomBytes} bytes (limits.maxRandomBytes)`);
    return { random: await this.opts.device.random(length) };
  }
}
