/** Key algorithms the device layer can create and use (domain terms, not PKCS#11 terms). */
export type Curve = "P-256" | "P-384" | "P-521" | "secp256k1";
export type Hash = "sha256" | "sha384" | "sha512";
/** Hashes RSA-OAEP may use (SHA-1 remains common for OAEP, where its collisions do not matter). */
export type OaepHash = Hash | "sha1";

export type KeyAlgorithm = { type: "aes"; bits: 128 | 256 } | { type: "hmac"; hash: Hash } | { type: "rsa"; bits: 2048 | 3072 | 4096 } | { type: "ec"; curve: Curve } | { type: "ed25519" };

export type Usage = "encrypt" | "decrypt" | "sign" | "verify" | "wrap" | "unwrap" | "derive";

/** Which object of a key: a secret key, or the private or public half of a pair. */
export type Part = "secret" | "private" | "public";

/** A symmetric or asymmetric cipher operation. */
export type CipherSpec =
  | { name: "AES_GCM"; iv: Buffer; aad: Buffer; tagBytes: number }
  | { name: "AES_CBC_PAD"; iv: Buffer }
  | { name: "AES_CTR"; iv: Buffer }
  | { name: "RSA_OAEP"; hash: OaepHash /** modulus length in bytes */; k: number /** OAEP label L (pSourceData); empty or absent: the empty label */; label?: Buffer };

/** A signature operation. `input` says whether the data is the message or its digest. */
export type SignSpec =
  | { name: "RSA_PKCS1"; hash: Hash; input: "message" | "digest" }
  | { name: "RSA_PSS"; hash: Hash; input: "message" | "digest" }
  | { name: "ECDSA"; hash: Hash; input: "message" | "digest" }
  | { name: "EDDSA" }
  | { name: "HMAC"; hash: Hash }
  /** CKM_AES_CMAC (NIST SP 800-38B): a 16-byte tag under an AES key. */
  | { name: "AES_CMAC" };

export type WrapSpec = { name: "AES_KW" } | { name: "AES_KWP" } | { name: "RSA_OAEP"; hash: OaepHash /** OAEP label (pSourceData); empty or absent: none */; label?: Buffer };

/** Stats of the session pool, for /metrics. */
export interface PoolStats {
  size: number;
  busy: number;
  waiting: number;
}

/** Called after each device operation with its mechanism name and duration (for /metrics). */
export type DeviceObserver = (mechanism: string, seconds: number, ok: boolean) => void;

/** Wrapped material as a record stores it: the blob and how it was wrapped. */
export interface WrappedMaterial {
  /** "AES_KWP": wrapped under the domain key with CKM_AES_KEY_WRAP_PAD. */
  alg: "AES_KWP";
  /** Which domain key (its CKA_ID). */
  wrappingKeyId: string;
  blob: Buffer;
}

/** How to reach the token. The PIN is held in memory only, never logged. */
export interface DeviceOptions {
  module: string;
  tokenLabel?: string;
  slot?: number;
  pin: string;
  poolSize: number;
  /** CKA_TOKEN for hsmd's keys: persistent token objects (true) or session objects materialized on demand. */
  tokenObjects: boolean;
  /** With token objects: crypto calls use a session-object copy of the key (see cryptoHandle). @default false */
  sessionCopies?: boolean;
  /**
   * Session workers (worker_threads) that run the hot path (sign, verify, encrypt, decrypt, random)
   * off the event loop, each with its own session; 0 keeps it on the main thread's pool (pkcs11js'
   * async forms). Config device.workers. @default max(1, os.availableParallelism())
   */
  workers?: number;
  /** CKM_* names treated as absent from the token's mechanism list (config device.disabledMechanisms). @default [] */
  disabledMechanisms?: readonly string[];
  observer?: DeviceObserver;
  log?: (msg: string) => void;
  /** File descriptors the process can still open, when known (a fault is not healed while there are too few). */
  freeFds?: () => number | undefined;
}

/** Token facts for /v1/status. */
export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
  slot: string;
}

/** What the device's inventory finds: hsmd's key objects, the wrappable ones, the quarantined ones. */
export interface ObjectInventory {
  /** key id → its parts (CKA_LABEL "hsmd:<id>") */
  keys: Map<string, Set<Part>>;
  /** key ids with a secret or private object that is CKA_EXTRACTABLE or not CKA_WRAP_WITH_TRUSTED */
  weak: Set<string>;
  /** key id it had → its quarantined parts */
  quarantined: Map<string, Set<Part>>;
}
