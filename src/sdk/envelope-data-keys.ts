/**
 * Data keys for envelope messages: made (GenerateDataKey) or unwrapped (DecryptDataKey) by the
 * service, or leased from a {@link DataKeyCache} partitioned per client and user; the message
 * encoder/decoder keyed with them, the key zeroed after.
 */
import { status } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";
import { KeySpec } from "../gen/hsm/v1/keys";
import type { DecryptDataKeyResponse, GenerateDataKeyResponse } from "../gen/hsm/v1/crypto";
import type { DataKeyCache, DataKeyLease, DataKeyMaterial } from "./envelope-cache";
import { MessageEncoder, type MessageDecoder } from "./envelope-codec";
import { DATA_KEY_BYTES, envelopeError, type EnvelopeHeaderInfo } from "./envelope-format";
import type { DataKeySource, EncryptSettings, EnvelopeHeaderEvent } from "./envelope-options";

/** Each client object gets a number, so that one cache never hands one client's keys to another. */
const sourceIds = new WeakMap<object, number>();
let nextSourceId = 1;

/** The cache partition of a request: the client object, its session user and `parts`, so no caller gets another's keys. */
export function partitionOf(source: DataKeySource, ...parts: string[]): string {
  let id = sourceIds.get(source);
  if (id === undefined) {
    id = nextSourceId++;
    sourceIds.set(source, id);
  }
  const user = (source as { session?: { username?: unknown } }).session?.username;
  return JSON.stringify([id, typeof user === "string" ? user : "", ...parts]);
}

/** An encryption context as a stable string (entries sorted by key), for cache partitions. */
export function contextKey(ctx: Record<string, string>): string {
  return JSON.stringify(Object.entries(ctx).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** The service's error with its status kept, and a word on what the envelope was doing. */
export function serviceError(what: string, e: unknown): HsmClientError {
  const err = HsmClientError.from(e);
  return new HsmClientError(err.code, `envelope: ${what}: ${err.details}`, { cause: err, metadata: err.metadata });
}

/** A fresh data key from the service (GenerateDataKey, AES-256), its plaintext copied out and the answer's zeroed. */
export async function generate(source: DataKeySource, s: EncryptSettings): Promise<DataKeyMaterial> {
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

/** The data key to encrypt `bytes` with: from the cache when there is one, else fresh. */
export async function encryptionKey(source: DataKeySource, s: EncryptSettings, bytes: number | undefined): Promise<DataKeyLease> {
  const fetch = () => generate(source, s);
  if (s.cache) return s.cache.forEncrypt(partitionOf(source, s.keyId, contextKey(s.encryptionContext)), bytes, fetch);
  return { material: await fetch(), charge: () => undefined };
}

/** The header's data key unwrapped by the service (DecryptDataKey under the header's context). */
export async function unwrap(source: DataKeySource, h: EnvelopeHeaderInfo): Promise<DataKeyMaterial> {
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

/** The data key of a header: from the cache when there is one, else unwrapped. */
export async function decryptionKey(source: DataKeySource, h: EnvelopeHeaderInfo, cache: DataKeyCache | undefined): Promise<DataKeyLease> {
  const fetch = () => unwrap(source, h);
  if (cache) return cache.forDecrypt(partitionOf(source, h.keyId, h.wrappedDataKey.toString("base64"), contextKey(h.encryptionContext)), fetch);
  return { material: await fetch(), charge: () => undefined };
}

/** A message encoder keyed with the lease's data key (zeroed after). */
export function newEncoder(lease: DataKeyLease, frameSize: number, s: EncryptSettings): MessageEncoder {
  const m = lease.material;
  try {
    return new MessageEncoder({ frameSize, keyId: m.keyId, keyVersion: m.keyVersion, wrappedDataKey: m.wrappedDataKey, encryptionContext: s.encryptionContext }, m.dataKey);
  } finally {
    m.dataKey.fill(0);
  }
}

/** Opens the decoder's message with the lease's key (zeroed after). */
export function openWith(decoder: MessageDecoder, lease: DataKeyLease): void {
  try {
    decoder.open(lease.material.dataKey);
  } finally {
    lease.material.dataKey.fill(0);
  }
}

/** The public view of a header (the `"header"` event and {@link readEnvelopeHeader}). */
export function headerEvent(h: EnvelopeHeaderInfo): EnvelopeHeaderEvent {
  return { keyId: h.keyId, keyVersion: h.keyVersion, encryptionContext: { ...h.encryptionContext }, frameSize: h.frameSize };
}
