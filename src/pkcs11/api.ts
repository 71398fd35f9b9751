import type { CipherSpec, KeyAlgorithm, ObjectInventory, OaepHash, Part, PoolStats, SignSpec, TokenInfo, Usage, WrapSpec, WrappedMaterial } from "./types";

/** Whether the device is in a fault (its token view lost, e.g. after EMFILE) and the check that heals it, for /readyz. */
export interface DeviceFaults {
  /** Is a fault suspected and not yet cleared? */
  readonly faulty: boolean;
  /** Checks now (or joins the check running): true when the essential objects are found, re-initializing the module if needed. */
  check(): Promise<boolean>;
}

/**
 * What the rest of hsmd may ask of the device: `keys/`, `cluster/` and the daemon depend on this
 * interface, not on the PKCS#11 implementation ({@link Device}), so that a unit test can hand them a
 * fake device. Domain values only (key ids, parts, specs, SPKI, wrapped blobs), never a pkcs11js
 * type or a raw handle. Every failure is an HsmError; a key whose objects are not in the device
 * fails with KeyNotMaterializedError (UNAVAILABLE, transient), so that the caller materializes it
 * from its record.
 */
export interface KeyDevice {
  /** The token's facts (label, manufacturer, model, serial, slot), for /v1/status and the ready banner. */
  readonly token: TokenInfo;
  /** Device-fault status and its healing check (see FaultWatch). */
  readonly faults: DeviceFaults;

  // ---- lifecycle and health ----

  /** The token's mechanism list as read at start (CKM_* values, less device.disabledMechanisms), ascending. */
  mechanisms(): number[];
  /** Sessions of the pool: size, busy, waiting (for /metrics). */
  poolStats(): PoolStats;
  /** Health probe for /readyz: a pooled session answers C_GetSessionInfo and is logged in. */
  healthy(): Promise<boolean>;
  /** Refuses new calls, waits for running ones (up to 10 s), closes the sessions and finalizes the module. */
  close(): Promise<void>;
  /**
   * Declares an object that must exist while the node runs (the domain key): not finding it is then
   * a device fault (UNAVAILABLE, the module re-initialized), never a missing key.
   */
  markEssential(id: string, part: Part): void;
  /** Does CKM_RSA_PKCS_OAEP work with this hash on this device (probed at open, not read from the mechanism list)? */
  supportsOaep(hash: OaepHash): boolean;

  // ---- objects ----

  /** Does this process hold a handle for the key's part? No device call (the applier asks it per key). */
  cached(id: string, part: Part): boolean;
  /** Is this part of the key present in the device (a search on a cache miss)? */
  has(id: string, part: Part): Promise<boolean>;
  /** Length in bytes of a secret key, or undefined when it is not a multiple of 8 (found by wrapping it under the domain key). */
  secretLength(id: string, domainKeyId: string): Promise<number | undefined>;
  /** hsmd's objects in the token: key ids with their parts, the wrappable ones, the quarantined ones (reconcile at start). */
  inventory(): Promise<ObjectInventory>;
  /** Moves a key's objects behind the "hsmd-quarantine:" CKA_ID/CKA_LABEL prefix: no record explains them; nothing is destroyed. */
  quarantine(id: string): Promise<void>;
  /** Gives quarantined objects their key id back (a record explains them again). */
  restoreQuarantined(id: string): Promise<void>;
  /** Destroys a key's quarantined objects (the operator asked to: --purge-orphans). */
  purgeQuarantined(id: string): Promise<void>;
  /** Clears CKA_EXTRACTABLE on a key's secret or private objects in place (keys that live only in this device). */
  makeUnextractable(id: string): Promise<void>;
  /** Destroys every object of a key (all parts, a transient one too). Idempotent. */
  destroy(id: string): Promise<void>;
  /**
   * Gives every object of key `fromId` the CKA_ID and CKA_LABEL of `toId` (a rotation's new version,
   * generated under a transient id, becomes `K.vN` once its record committed).
   */
  rename(fromId: string, toId: string): Promise<void>;

  // ---- key objects ----

  /**
   * Generates a key inside the device; returns the SPKI for key pairs. The secret or private part is
   * transient until {@link sealForRecord} (a key the device cannot wrap, Ed25519 on SoftHSM2, is kept at once).
   */
  generate(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<{ spki?: Buffer }>;
  /** Creates a public key object from an SPKI (import, and a pair's public half); returns its algorithm. */
  createPublic(id: string, spki: Buffer, usages: readonly Usage[]): Promise<KeyAlgorithm>;
  /**
   * Seals a new key: its transient part wrapped under the domain key (CKM_AES_KEY_WRAP_PAD) for the
   * record, then unwrapped into its kept, unextractable form. Undefined for a key that can live only
   * in this device (kept already, or CKR_KEY_NOT_WRAPPABLE).
   */
  sealForRecord(id: string, alg: KeyAlgorithm, usages: readonly Usage[], domainKeyId: string): Promise<WrappedMaterial | undefined>;
  /** Unwraps a record's material under the domain key into the device as kept objects (and the public half from `spki`). */
  materialize(id: string, alg: KeyAlgorithm, usages: readonly Usage[], material: WrappedMaterial, spki?: Buffer): Promise<void>;
  /** WrapKey of an exportable key: its record's material opened into a transient object, wrapped under the caller's key, destroyed. */
  exportWrapped(wrappingKeyId: string, wrappingPart: Part, spec: WrapSpec, alg: KeyAlgorithm, material: WrappedMaterial): Promise<Buffer>;
  /** Unwraps a caller's blob under one of hsmd's keys into a new (transient, to be sealed) key. */
  unwrap(unwrappingKeyId: string, unwrappingPart: Part, spec: WrapSpec, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void>;
  /** ECDH (CKM_ECDH1_DERIVE, CKD_NULL) of a private key with a peer's public point into a new AES key. */
  deriveEcdh(privateKeyId: string, peerPoint: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void>;
  /**
   * BYOK: `blob` = RSA-OAEP(ephemeral AES-256 key) ‖ AES-KWP(ephemeral key, material) under the
   * import key; both unwraps in the device. `hash` defaults to SHA-256 where supported, else SHA-1.
   */
  importWrapped(importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash?: OaepHash): Promise<void>;

  // ---- ceremonies (domain key, transport key) ----

  /** Finds the domain key, or generates it (AES-256, wrap/unwrap only) when `create` is set; false when absent and not created. */
  ensureDomainKey(id: string, create: boolean): Promise<boolean>;
  /** Can the domain key be handed to a joining node (CKA_EXTRACTABLE and CKA_WRAP_WITH_TRUSTED)? */
  domainKeyShareable(id: string): Promise<boolean>;
  /** Finds or generates this node's RSA-3072 transport key pair for joining; returns its SPKI. */
  ensureTransportKey(id: string): Promise<Buffer>;
  /** The OAEP hash domain-key transport uses on this device: SHA-256 where supported, else SHA-1. */
  transportOaepHash(): OaepHash;
  /** Wraps the domain key under a joiner's trusted transport public key (`trustedId`), then destroys that object. */
  wrapDomainKeyForJoiner(domainKeyId: string, trustedId: string, hash: OaepHash): Promise<Buffer>;
  /** Unwraps a domain key a member wrapped for this node under its transport key, as a token object. */
  unwrapDomainKey(transportKeyId: string, blob: Buffer, hash: OaepHash, domainKeyId: string): Promise<void>;

  // ---- crypto ----

  /** Encrypts `data` under a key's part; `outLen` bounds the output. */
  encrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer>;
  /** Decrypts; a failed tag, padding or OAEP check is INVALID_ARGUMENT. */
  decrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer>;
  /** Signs (the part defaults to secret for HMAC/CMAC, else private); ECDSA signatures come back raw (r ‖ s). */
  sign(id: string, spec: SignSpec, data: Buffer, part?: Part): Promise<Buffer>;
  /** Verifies; a signature that does not verify is `false`, not an error. */
  verify(id: string, spec: SignSpec, data: Buffer, signature: Buffer, part?: Part): Promise<boolean>;
  /** `n` random bytes from the device (C_GenerateRandom). */
  random(n: number): Promise<Buffer>;
}
