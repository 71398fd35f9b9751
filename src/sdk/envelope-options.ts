/**
 * The envelope functions' options, what they need of a client, and the checks that turn untyped
 * caller input into settings (INVALID_ARGUMENT "envelope: …" for anything wrong).
 */
import type { DecryptDataKeyRequest, DecryptDataKeyResponse, GenerateDataKeyRequest, GenerateDataKeyResponse } from "../gen/hsm/v1/crypto";
import { DataKeyCache } from "./envelope-cache";
import { DEFAULT_FRAME_SIZE, MAX_FRAME_SIZE, envelopeError } from "./envelope-format";

/** What the envelope functions need of a client: {@link HsmClient} is one. */
export interface DataKeySource {
  generateDataKey(request: Partial<GenerateDataKeyRequest>): Promise<GenerateDataKeyResponse>;
  decryptDataKey(request: Partial<DecryptDataKeyRequest>): Promise<DecryptDataKeyResponse>;
}

/** Options of {@link encryptEnvelope} and {@link createEncryptStream}. */
export interface EnvelopeEncryptOptions {
  /** The key-encryption key: an AES key with encrypt and decrypt usages that the caller may use. */
  keyId: string;
  /**
   * Bound to the wrapped data key and stored in the clear in the header: who decrypts must be allowed
   * the same map (the service checks it when it unwraps). Never put secrets here.
   */
  encryptionContext?: Record<string, string>;
  /** Plaintext bytes per frame, 1 … 16 MiB (default 64 KiB). */
  frameSize?: number;
  /** A data-key cache (default: none, a fresh data key for every message). */
  cache?: DataKeyCache;
}

/** Options of {@link createEncryptStream}. */
export interface EnvelopeEncryptStreamOptions extends EnvelopeEncryptOptions {
  /**
   * The plaintext's size in bytes, when known: the stream fails if the input differs. With a cache,
   * only a stream of declared size can use a cached data key (the cache must charge a message's
   * bytes before it is encrypted); without it the stream uses a fresh data key.
   */
  plaintextLength?: number;
}

/** Options of {@link decryptEnvelope} and {@link createDecryptStream}. */
export interface EnvelopeDecryptOptions {
  /**
   * Entries the message's encryption context must hold, with these values (it may hold more).
   * Checked before the service is asked to unwrap anything.
   */
  expectedContext?: Record<string, string>;
  /** A data-key cache for unwrapped data keys (default: none). */
  cache?: DataKeyCache;
}

/** What {@link decryptEnvelope} answers. */
export interface EnvelopeDecryptResult {
  plaintext: Buffer;
  /** The message's encryption context (authenticated). */
  encryptionContext: Record<string, string>;
  /** The key-encryption key the data key was wrapped under. */
  keyId: string;
  keyVersion: number;
}

/** What a decrypt stream emits as `"header"` once the header is authenticated. */
export interface EnvelopeHeaderEvent {
  keyId: string;
  keyVersion: number;
  encryptionContext: Record<string, string>;
  frameSize: number;
}

// ---- options --------------------------------------------------------------------------------------

/** Encrypt options once checked, defaults applied. */
export interface EncryptSettings {
  keyId: string;
  encryptionContext: Record<string, string>;
  frameSize: number;
  cache: DataKeyCache | undefined;
}

/** A plain object (not null, an array or a Buffer). */
export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v);
}

/** An encryption context checked: an object of non-empty keys and string values. */
export function checkContext(name: string, v: unknown): Record<string, string> {
  if (v === undefined) return {};
  if (!isRecord(v)) throw envelopeError(`${name} must be an object of string values`);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (k.length === 0) throw envelopeError(`${name} keys must not be empty`);
    if (typeof val !== "string") throw envelopeError(`${name}.${k} must be a string; got ${typeof val}`);
    out[k] = val;
  }
  return out;
}

/** The `cache` option checked: undefined or a {@link DataKeyCache}. */
export function checkCache(v: unknown): DataKeyCache | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof DataKeyCache)) throw envelopeError("cache must be a DataKeyCache");
  return v;
}

/** The client argument checked: anything with generateDataKey and decryptDataKey. */
export function checkSource(client: unknown): DataKeySource {
  const c = client as Partial<DataKeySource> | null;
  if (!c || typeof c.generateDataKey !== "function" || typeof c.decryptDataKey !== "function") {
    throw envelopeError("client must be an HsmClient (or have generateDataKey and decryptDataKey)");
  }
  return c as DataKeySource;
}

/** Encrypt options checked into {@link EncryptSettings} (INVALID_ARGUMENT otherwise). */
export function encryptSettings(opts: unknown): EncryptSettings {
  if (!isRecord(opts)) throw envelopeError("options { keyId, encryptionContext?, frameSize?, cache? } are required");
  const o = opts as Partial<EnvelopeEncryptOptions>;
  if (typeof o.keyId !== "string" || o.keyId.length === 0) throw envelopeError("keyId is required");
  const frameSize = o.frameSize ?? DEFAULT_FRAME_SIZE;
  if (!Number.isInteger(frameSize) || frameSize < 1 || frameSize > MAX_FRAME_SIZE) {
    throw envelopeError(`frameSize must be an integer from 1 to ${MAX_FRAME_SIZE}; got ${String(o.frameSize)}`);
  }
  return { keyId: o.keyId, encryptionContext: checkContext("encryptionContext", o.encryptionContext), frameSize, cache: checkCache(o.cache) };
}

/** Decrypt options checked: the expected context and the cache, both optional. */
export function decryptSettings(opts: unknown): { expected: Record<string, string> | undefined; cache: DataKeyCache | undefined } {
  if (opts === undefined) return { expected: undefined, cache: undefined };
  if (!isRecord(opts)) throw envelopeError("decrypt options must be an object { expectedContext?, cache? }");
  const o = opts as EnvelopeDecryptOptions;
  return { expected: o.expectedContext === undefined ? undefined : checkContext("expectedContext", o.expectedContext), cache: checkCache(o.cache) };
}

/** Throws INVALID_ARGUMENT unless `actual` holds every entry of `expected` with the same value. */
export function checkExpected(expected: Record<string, string> | undefined, actual: Record<string, string>): void {
  if (!expected) return;
  for (const [k, v] of Object.entries(expected)) {
    if (!Object.hasOwn(actual, k)) throw envelopeError(`encryption context mismatch: the message has no ${JSON.stringify(k)} (expected ${JSON.stringify(v)})`);
    if (actual[k] !== v) throw envelopeError(`encryption context mismatch: ${JSON.stringify(k)} is ${JSON.stringify(actual[k])} in the message, expected ${JSON.stringify(v)}`);
  }
}

/** A Buffer view of a Buffer or Uint8Array argument (INVALID_ARGUMENT otherwise). */
export function asBuffer(name: string, v: unknown): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw envelopeError(`${name} must be a Buffer or Uint8Array`);
}
