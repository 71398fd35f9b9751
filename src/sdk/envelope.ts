/**
 * Envelope encryption on the client side: AES-256-GCM in this process under a fresh data key per
 * message (GenerateDataKey, or a {@link DataKeyCache}), the data key stored wrapped in the message.
 * Decryption asks the service only to unwrap the data key (DecryptDataKey); data never leaves the
 * process. Buffers ({@link encryptEnvelope}, {@link decryptEnvelope}) and Node streams
 * ({@link createEncryptStream}, {@link createDecryptStream}) write and read the same messages.
 *
 * The message format (version 1) is described byte by byte in `envelope-format.ts` and
 * docs/ENVELOPE.md.
 *
 * Every failure rejects (or, for streams, errors) with {@link HsmClientError}: INVALID_ARGUMENT for
 * bad options and for messages that are malformed, tampered with, truncated, reordered or under an
 * unexpected encryption context ("envelope: frame 3 failed authentication"); the service's own
 * status (NOT_FOUND, PERMISSION_DENIED …) when it refuses to make or unwrap a data key.
 */
import { Transform, type TransformCallback } from "node:stream";
import { status } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";
import { KeySpec } from "../gen/hsm/v1/keys";
import type { DecryptDataKeyRequest, DecryptDataKeyResponse, GenerateDataKeyRequest, GenerateDataKeyResponse } from "../gen/hsm/v1/crypto";
import { DataKeyCache, type DataKeyLease, type DataKeyMaterial } from "./envelope-cache";
import {
  ByteQueue,
  DATA_KEY_BYTES,
  DEFAULT_FRAME_SIZE,
  MAX_FRAME_SIZE,
  MAX_HEADER_BYTES,
  MessageDecoder,
  MessageEncoder,
  envelopeError,
  parseHeader,
  type EnvelopeHeaderInfo,
} from "./envelope-format";

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

interface EncryptSettings {
  keyId: string;
  encryptionContext: Record<string, string>;
  frameSize: number;
  cache: DataKeyCache | undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v);
}

function checkContext(name: string, v: unknown): Record<string, string> {
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

function checkCache(v: unknown): DataKeyCache | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof DataKeyCache)) throw envelopeError("cache must be a DataKeyCache");
  return v;
}

function checkSource(client: unknown): DataKeySource {
  const c = client as Partial<DataKeySource> | null;
  if (!c || typeof c.generateDataKey !== "function" || typeof c.decryptDataKey !== "function") {
    throw envelopeError("client must be an HsmClient (or have generateDataKey and decryptDataKey)");
  }
  return c as DataKeySource;
}

function encryptSettings(opts: unknown): EncryptSettings {
  if (!isRecord(opts)) throw envelopeError("options { keyId, encryptionContext?, frameSize?, cache? } are required");
  const o = opts as Partial<EnvelopeEncryptOptions>;
  if (typeof o.keyId !== "string" || o.keyId.length === 0) throw envelopeError("keyId is required");
  const frameSize = o.frameSize ?? DEFAULT_FRAME_SIZE;
  if (!Number.isInteger(frameSize) || frameSize < 1 || frameSize > MAX_FRAME_SIZE) {
    throw envelopeError(`frameSize must be an integer from 1 to ${MAX_FRAME_SIZE}; got ${String(o.frameSize)}`);
  }
  return { keyId: o.keyId, encryptionContext: checkContext("encryptionContext", o.encryptionContext), frameSize, cache: checkCache(o.cache) };
}

function decryptSettings(opts: unknown): { expected: Record<string, string> | undefined; cache: DataKeyCache | undefined } {
  if (opts === undefined) return { expected: undefined, cache: undefined };
  if (!isRecord(opts)) throw envelopeError("decrypt options must be an object { expectedContext?, cache? }");
  const o = opts as EnvelopeDecryptOptions;
  return { expected: o.expectedContext === undefined ? undefined : checkContext("expectedContext", o.expectedContext), cache: checkCache(o.cache) };
}

// ---- data keys --------------------------------------------------------------------------------------

/** Each client object gets a number, so that one cache never hands one client's keys to another. */
const sourceIds = new WeakMap<object, number>();
let nextSourceId = 1;

function partitionOf(source: DataKeySource, ...parts: string[]): string {
  let id = sourceIds.get(source);
  if (id === undefined) {
    id = nextSourceId++;
    sourceIds.set(source, id);
  }
  const user = (source as { session?: { username?: unknown } }).session?.username;
  return JSON.stringify([id, typeof user === "string" ? user : "", ...parts]);
}

function contextKey(ctx: Record<string, string>): string {
  return JSON.stringify(Object.entries(ctx).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** The service's error with its status kept, and a word on what the envelope was doing. */
function serviceError(what: string, e: unknown): HsmClientError {
  const err = HsmClientError.from(e);
  return new HsmClientError(err.code, `envelope: ${what}: ${err.details}`, { cause: err, metadata: err.metadata });
}

async function generate(source: DataKeySource, s: EncryptSettings): Promise<DataKeyMaterial> {
  let r: GenerateDataKeyResponse;
  try {
    r = await source.generateDataKey({ keyId: s.keyId, spec: KeySpec.KEY_SPEC_AES_256, encryptionContext: s.encryptionContext });
  } catch (e) {
    throw serviceError(`GenerateDataKey under ${s.keyId} failed`, e);
  }
  const dataKey = Buffer.from(r.plaintextDataKey);
  r.plaintextDataKey.fill(0);
  if (dataKey.length !== DATA_KEY_BYTES) {
    dataKey.fill(0);
    throw new HsmClientError(status.INTERNAL, `envelope: GenerateDataKey answered a ${dataKey.length}-byte data key; AES-256 needs ${DATA_KEY_BYTES}`);
  }
  return { dataKey, keyId: r.keyId || s.keyId, keyVersion: r.keyVersion, wrappedDataKey: Buffer.from(r.wrappedDataKey) };
}

async function encryptionKey(source: DataKeySource, s: EncryptSettings, bytes: number | undefined): Promise<DataKeyLease> {
  const fetch = () => generate(source, s);
  if (s.cache) return s.cache.forEncrypt(partitionOf(source, s.keyId, contextKey(s.encryptionContext)), bytes, fetch);
  return { material: await fetch(), charge: () => undefined };
}

async function unwrap(source: DataKeySource, h: EnvelopeHeaderInfo): Promise<DataKeyMaterial> {
  let r: DecryptDataKeyResponse;
  try {
    r = await source.decryptDataKey({ keyId: h.keyId, wrappedDataKey: h.wrappedDataKey, encryptionContext: h.encryptionContext });
  } catch (e) {
    throw serviceError(`DecryptDataKey under ${h.keyId} failed`, e);
  }
  const dataKey = Buffer.from(r.plaintextDataKey);
  r.plaintextDataKey.fill(0);
  if (dataKey.length !== DATA_KEY_BYTES) {
    dataKey.fill(0);
    throw envelopeError(`the wrapped data key unwraps to ${dataKey.length} bytes; this format uses AES-256 data keys`);
  }
  return { dataKey, keyId: h.keyId, keyVersion: h.keyVersion, wrappedDataKey: h.wrappedDataKey };
}

async function decryptionKey(source: DataKeySource, h: EnvelopeHeaderInfo, cache: DataKeyCache | undefined): Promise<DataKeyLease> {
  const fetch = () => unwrap(source, h);
  if (cache) return cache.forDecrypt(partitionOf(source, h.keyId, h.wrappedDataKey.toString("base64"), contextKey(h.encryptionContext)), fetch);
  return { material: await fetch(), charge: () => undefined };
}

/** Throws INVALID_ARGUMENT unless `actual` holds every entry of `expected` with the same value. */
function checkExpected(expected: Record<string, string> | undefined, actual: Record<string, string>): void {
  if (!expected) return;
  for (const [k, v] of Object.entries(expected)) {
    if (!Object.prototype.hasOwnProperty.call(actual, k)) throw envelopeError(`encryption context mismatch: the message has no ${JSON.stringify(k)} (expected ${JSON.stringify(v)})`);
    if (actual[k] !== v) throw envelopeError(`encryption context mismatch: ${JSON.stringify(k)} is ${JSON.stringify(actual[k])} in the message, expected ${JSON.stringify(v)}`);
  }
}

function asBuffer(name: string, v: unknown): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw envelopeError(`${name} must be a Buffer or Uint8Array`);
}

function newEncoder(lease: DataKeyLease, frameSize: number, s: EncryptSettings): MessageEncoder {
  const m = lease.material;
  try {
    return new MessageEncoder({ frameSize, keyId: m.keyId, keyVersion: m.keyVersion, wrappedDataKey: m.wrappedDataKey, encryptionContext: s.encryptionContext }, m.dataKey);
  } finally {
    m.dataKey.fill(0);
  }
}

/** Opens the decoder's message with the lease's key (zeroed after). */
function openWith(decoder: MessageDecoder, lease: DataKeyLease): void {
  try {
    decoder.open(lease.material.dataKey);
  } finally {
    lease.material.dataKey.fill(0);
  }
}

function headerEvent(h: EnvelopeHeaderInfo): EnvelopeHeaderEvent {
  return { keyId: h.keyId, keyVersion: h.keyVersion, encryptionContext: { ...h.encryptionContext }, frameSize: h.frameSize };
}

// ---- buffers ----------------------------------------------------------------------------------------

/** Encrypts `plaintext` into one envelope message under a data key wrapped by `opts.keyId`. */
export async function encryptEnvelope(client: DataKeySource, opts: EnvelopeEncryptOptions, plaintext: Buffer | Uint8Array): Promise<Buffer> {
  const source = checkSource(client);
  const s = encryptSettings(opts);
  const pt = asBuffer("plaintext", plaintext);
  const enc = newEncoder(await encryptionKey(source, s, pt.length), s.frameSize, s);
  const F = s.frameSize;
  const frames = Math.max(1, Math.ceil(pt.length / F));
  const out: Buffer[] = [enc.header];
  for (let i = 0; i < frames; i++) {
    const piece = pt.subarray(i * F, Math.min(pt.length, (i + 1) * F));
    out.push(enc.frame([piece], piece.length, i === frames - 1));
  }
  return Buffer.concat(out);
}

/**
 * Decrypts one envelope message: asks the service to unwrap its data key (or takes it from the
 * cache), checks the header and every frame. Rejects with INVALID_ARGUMENT if anything is off.
 */
export async function decryptEnvelope(client: DataKeySource, ciphertext: Buffer | Uint8Array, opts?: EnvelopeDecryptOptions): Promise<EnvelopeDecryptResult> {
  const source = checkSource(client);
  const { expected, cache } = decryptSettings(opts);
  const ct = asBuffer("ciphertext", ciphertext);
  const decoder = new MessageDecoder();
  decoder.push(ct);
  const h = decoder.header();
  if (!h) {
    decoder.finish();
    throw envelopeError("message truncated (incomplete header)");
  }
  checkExpected(expected, h.encryptionContext);
  const lease = await decryptionKey(source, h, cache);
  openWith(decoder, lease);
  const out: Buffer[] = [];
  let bytes = 0;
  try {
    for (let f = decoder.nextFrame(); f; f = decoder.nextFrame()) {
      for (const p of f) {
        out.push(p);
        bytes += p.length;
      }
    }
    decoder.finish();
  } catch (e) {
    for (const b of out) b.fill(0);
    throw e;
  } finally {
    decoder.destroy();
  }
  lease.charge(bytes);
  return { plaintext: Buffer.concat(out, bytes), encryptionContext: { ...h.encryptionContext }, keyId: h.keyId, keyVersion: h.keyVersion };
}

/**
 * Reads a message's header without decrypting anything or calling the service: key id, key
 * version, encryption context, frame size. Not authenticated: only decryption proves it.
 */
export function readEnvelopeHeader(message: Buffer | Uint8Array): EnvelopeHeaderEvent & { headerLength: number } {
  const r = parseHeader(asBuffer("message", message).subarray(0, MAX_HEADER_BYTES));
  if ("need" in r) throw envelopeError("message truncated (incomplete header)");
  return { ...headerEvent(r), headerLength: r.headerLength };
}

// ---- streams ----------------------------------------------------------------------------------------

class EncryptStream extends Transform {
  private readonly source: DataKeySource;
  private readonly settings: EncryptSettings;
  private readonly declared: number | undefined;
  private readonly queue = new ByteQueue();
  private encoder: MessageEncoder | undefined;
  private starting: Promise<void> | undefined;
  private seen = 0;

  constructor(source: DataKeySource, settings: EncryptSettings, declared: number | undefined) {
    super();
    this.source = source;
    this.settings = settings;
    this.declared = declared;
  }

  private start(): Promise<void> {
    this.starting ??= encryptionKey(this.source, this.settings, this.declared).then((lease) => {
      this.encoder = newEncoder(lease, this.settings.frameSize, this.settings);
      if (this.destroyed) this.encoder.destroy();
      else this.push(this.encoder.header);
    });
    return this.starting;
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    let b: Buffer;
    try {
      b = typeof chunk === "string" ? Buffer.from(chunk, _encoding) : asBuffer("a chunk", chunk);
      this.seen += b.length;
      if (this.declared !== undefined && this.seen > this.declared) throw envelopeError(`the input is longer than the declared plaintextLength, ${this.declared}`);
    } catch (e) {
      callback(e as Error);
      return;
    }
    const go = () => {
      const enc = this.encoder!;
      const F = this.settings.frameSize;
      this.queue.push(b);
      // Keep the last frame's bytes until the end: only then is it known to be the final frame.
      while (this.queue.length > F) this.push(enc.frame(this.queue.takePieces(F), F, false));
    };
    if (this.encoder) {
      try {
        go();
        callback();
      } catch (e) {
        callback(e as Error);
      }
      return;
    }
    this.start().then(go).then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.start()
      .then(() => {
        if (this.declared !== undefined && this.seen !== this.declared) throw envelopeError(`the input ended after ${this.seen} bytes; plaintextLength declared ${this.declared}`);
        const n = this.queue.length;
        this.push(this.encoder!.frame(this.queue.takePieces(n), n, true));
      })
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.encoder?.destroy();
    callback(error);
  }
}

class DecryptStream extends Transform {
  private readonly source: DataKeySource;
  private readonly expected: Record<string, string> | undefined;
  private readonly cache: DataKeyCache | undefined;
  private readonly decoder = new MessageDecoder();
  private lease: DataKeyLease | undefined;
  private bytes = 0;

  constructor(source: DataKeySource, expected: Record<string, string> | undefined, cache: DataKeyCache | undefined) {
    super();
    this.source = source;
    this.expected = expected;
    this.cache = cache;
  }

  /** Opens the header when its bytes are in, then releases every complete, authenticated frame. */
  private async pump(): Promise<void> {
    if (!this.lease) {
      const h = this.decoder.header();
      if (!h) return;
      checkExpected(this.expected, h.encryptionContext);
      const lease = await decryptionKey(this.source, h, this.cache);
      this.lease = lease;
      openWith(this.decoder, lease);
      this.emit("header", headerEvent(h));
    }
    for (let f = this.decoder.nextFrame(); f; f = this.decoder.nextFrame()) {
      for (const p of f) {
        this.bytes += p.length;
        if (p.length) this.push(p);
      }
    }
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.decoder.push(asBuffer("a chunk", chunk));
    } catch (e) {
      callback(e as Error);
      return;
    }
    this.pump().then(() => callback(), callback);
  }

  override _flush(callback: TransformCallback): void {
    this.pump()
      .then(() => {
        this.decoder.finish();
        this.lease?.charge(this.bytes);
      })
      .then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.decoder.destroy();
    callback(error);
  }
}

/**
 * A Transform that encrypts what is written to it into one envelope message. Memory stays bounded
 * (one frame and what the stream's buffers hold), and it respects backpressure. The data key is
 * fetched when the first byte (or the end) arrives.
 */
export function createEncryptStream(client: DataKeySource, opts: EnvelopeEncryptStreamOptions): Transform {
  const source = checkSource(client);
  const s = encryptSettings(opts);
  const declared = opts.plaintextLength;
  if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0)) throw envelopeError(`plaintextLength must be a non-negative integer; got ${String(declared)}`);
  return new EncryptStream(source, s, declared);
}

/**
 * A Transform that decrypts one envelope message written to it. It emits `"header"`
 * ({@link EnvelopeHeaderEvent}) once the header is authenticated, and each frame's plaintext once
 * that frame is authenticated; a truncated message fails only at the end, so treat the output as
 * provisional until the stream ends without an error.
 */
export function createDecryptStream(client: DataKeySource, opts?: EnvelopeDecryptOptions): Transform {
  const source = checkSource(client);
  const { expected, cache } = decryptSettings(opts);
  return new DecryptStream(source, expected, cache);
}

export { DataKeyCache };
export type { DataKeyCacheOptions, DataKeyCacheStats } from "./envelope-cache";
export type { EnvelopeHeaderInfo } from "./envelope-format";
export { DEFAULT_FRAME_SIZE, MAX_FRAME_SIZE, ENVELOPE_VERSION } from "./envelope-format";
