import * as grpc from "@grpc/grpc-js";
import {
  CryptoServiceClient,
  CryptoServiceService,
  BatchDecryptRequest,
  BatchEncryptRequest,
  BatchSignRequest,
  BatchVerifyRequest,
  DecryptRequest,
  DeriveKeyRequest,
  EncryptRequest,
  GenerateRandomRequest,
  SignRequest,
  UnwrapKeyRequest,
  VerifyRequest,
  WrapKeyRequest,
  type BatchDecryptResponse,
  type BatchEncryptResponse,
  type BatchSignResponse,
  type BatchVerifyResponse,
  type DecryptResponse,
  type EncryptResponse,
  type GenerateRandomResponse,
  type SignResponse,
  type VerifyResponse,
  type WrapKeyResponse,
} from "../gen/hsm/v1/crypto";
import {
  KeyServiceClient,
  KeyServiceService,
  DeleteKeyRequest,
  GenerateKeyRequest,
  GetImportParametersRequest,
  GetKeyRequest,
  GetPublicKeyRequest,
  ImportKeyRequest,
  ImportPublicKeyRequest,
  ListKeysRequest,
  type DeleteKeyResponse,
  type GetImportParametersResponse,
  type GetPublicKeyResponse,
  type Key,
  type ListKeysResponse,
} from "../gen/hsm/v1/keys";
import { HsmClientError } from "./client-error";
import { compileHsmClientOptions, type CompiledHsmClientOptions, type HsmClientOptions } from "./client-options";

/** Per-call settings, the last argument of every {@link HsmClient} method. */
export interface CallOptions {
  /**
   * Deadline of this call in milliseconds from now; past it the call fails with DEADLINE_EXCEEDED.
   * @default the client's {@link HsmClientOptions.defaultDeadlineMs} (30_000)
   */
  deadlineMs?: number;
  /**
   * Cancels the call when aborted: it rejects with CANCELLED (DEADLINE_EXCEEDED when the reason is a
   * `TimeoutError`, as from `AbortSignal.timeout()`), and the server sees the cancellation.
   * @default none
   */
  signal?: AbortSignal;
  /**
   * Request headers (gRPC metadata), e.g. `{ "x-request-id": "…" }`. Keys are case-insensitive ASCII;
   * values are text, so binary (`-bin`) keys are refused.
   * @default {}
   */
  metadata?: Record<string, string>;
}

/** Filter of {@link HsmClient.listAllKeys}: a `ListKeysRequest` without the page token. */
export type ListKeysFilter = Omit<Partial<ListKeysRequest>, "pageToken">;

/** A batch request whose items may themselves be partial (defaults filled per item). */
export interface BatchRequestInit<T> {
  items?: Partial<T>[];
}

/** The parts of a generated method definition a unary call needs. */
interface UnaryMethod<Req, Res> {
  readonly path: string;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}

/**
 * The hsmd client: one promise-returning method per RPC of `hsm.v1.KeyService` and
 * `hsm.v1.CryptoService`, over a single shared gRPC channel.
 *
 * Requests are partial: omitted fields take their proto3 defaults. Every call has a deadline
 * ({@link HsmClientOptions.defaultDeadlineMs} unless {@link CallOptions.deadlineMs} says otherwise),
 * can be cancelled with an `AbortSignal`, and rejects only with {@link HsmClientError}.
 *
 * @example
 * const client = new HsmClient({ endpoint: "hsmd.internal:7443", tls: { ca: readFileSync("ca.pem") } });
 * const key = await client.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "signer" });
 * const { signature } = await client.sign({ keyId: key.id, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, message });
 * client.close();
 */
export class HsmClient {
  private readonly options: CompiledHsmClientOptions;
  private readonly channel: grpc.Channel;
  private readonly keys: KeyServiceClient;
  private readonly crypto: CryptoServiceClient;
  private closed = false;

  /** @throws {HsmClientError} INVALID_ARGUMENT listing every problem in `options` */
  constructor(options: HsmClientOptions) {
    this.options = compileHsmClientOptions(options);
    const { endpoint, credentials, channelOptions } = this.options;
    // channelz bookkeeping costs CPU on every call and nothing here reads it: off unless asked for.
    this.channel = new grpc.Channel(endpoint, credentials, { "grpc.enable_channelz": 0, ...channelOptions });
    // Both generated clients ride the same channel: one connection, one close().
    this.keys = new KeyServiceClient(endpoint, credentials, { channelOverride: this.channel });
    this.crypto = new CryptoServiceClient(endpoint, credentials, { channelOverride: this.channel });
  }

  /** The `"host:port"` this client talks to. */
  get endpoint(): string {
    return this.options.endpoint;
  }

  // ---- KeyService ----

  /** Generates a key inside the HSM (`GenerateKey`). */
  generateKey(request: Partial<GenerateKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(this.keys, KeyServiceService.generateKey, () => GenerateKeyRequest.fromPartial(request), options);
  }

  /** Reads one key's metadata (`GetKey`); NOT_FOUND when there is no such key. */
  getKey(request: Partial<GetKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(this.keys, KeyServiceService.getKey, () => GetKeyRequest.fromPartial(request), options);
  }

  /** Lists one page of keys (`ListKeys`); see {@link listAllKeys} to walk every page. */
  listKeys(request: Partial<ListKeysRequest> = {}, options?: CallOptions): Promise<ListKeysResponse> {
    return this.call(this.keys, KeyServiceService.listKeys, () => ListKeysRequest.fromPartial(request), options);
  }

  /**
   * Every key matching `filter`, fetching `ListKeys` pages lazily as the iteration proceeds (each
   * page is one call with its own deadline; `options.signal` covers them all). Stop early with `break`.
   */
  async *listAllKeys(filter: ListKeysFilter = {}, options?: CallOptions): AsyncGenerator<Key, void, undefined> {
    let pageToken = "";
    do {
      const page = await this.listKeys({ ...filter, pageToken }, options);
      for (const key of page.keys) yield key;
      if (page.nextPageToken !== "" && page.nextPageToken === pageToken) {
        throw new HsmClientError(grpc.status.INTERNAL, "ListKeys returned the page token it was given: paging would never end");
      }
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
  }

  /** Deletes a key and destroys its HSM objects (`DeleteKey`). */
  deleteKey(request: Partial<DeleteKeyRequest>, options?: CallOptions): Promise<DeleteKeyResponse> {
    return this.call(this.keys, KeyServiceService.deleteKey, () => DeleteKeyRequest.fromPartial(request), options);
  }

  /** An asymmetric key's public key as SPKI DER, PEM and JWK (`GetPublicKey`). */
  getPublicKey(request: Partial<GetPublicKeyRequest>, options?: CallOptions): Promise<GetPublicKeyResponse> {
    return this.call(this.keys, KeyServiceService.getPublicKey, () => GetPublicKeyRequest.fromPartial(request), options);
  }

  /** Imports a public key only (SPKI DER, PEM or JWK) for verify/encrypt/wrap (`ImportPublicKey`). */
  importPublicKey(request: Partial<ImportPublicKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(
      this.keys,
      KeyServiceService.importPublicKey,
      () => ImportPublicKeyRequest.fromPartial(request),
      options,
    );
  }

  /** The import wrapping key for BYOK (`GetImportParameters`); feed its `publicKeySpki` to {@link wrapForImport}. */
  getImportParameters(
    request: Partial<GetImportParametersRequest> = {},
    options?: CallOptions,
  ): Promise<GetImportParametersResponse> {
    return this.call(
      this.keys,
      KeyServiceService.getImportParameters,
      () => GetImportParametersRequest.fromPartial(request),
      options,
    );
  }

  /** Imports key material wrapped with {@link wrapForImport} (`ImportKey`, BYOK). */
  importKey(request: Partial<ImportKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(this.keys, KeyServiceService.importKey, () => ImportKeyRequest.fromPartial(request), options);
  }

  // ---- CryptoService ----

  /** Encrypts in the HSM (`Encrypt`): AES-GCM/CBC-PAD/CTR or RSA-OAEP. */
  encrypt(request: Partial<EncryptRequest>, options?: CallOptions): Promise<EncryptResponse> {
    return this.call(this.crypto, CryptoServiceService.encrypt, () => EncryptRequest.fromPartial(request), options);
  }

  /** Decrypts in the HSM (`Decrypt`). */
  decrypt(request: Partial<DecryptRequest>, options?: CallOptions): Promise<DecryptResponse> {
    return this.call(this.crypto, CryptoServiceService.decrypt, () => DecryptRequest.fromPartial(request), options);
  }

  /** Signs a message or digest, or computes an HMAC (`Sign`). */
  sign(request: Partial<SignRequest>, options?: CallOptions): Promise<SignResponse> {
    return this.call(this.crypto, CryptoServiceService.sign, () => SignRequest.fromPartial(request), options);
  }

  /** Verifies a signature or HMAC (`Verify`); a bad signature is `valid: false`, not an error. */
  verify(request: Partial<VerifyRequest>, options?: CallOptions): Promise<VerifyResponse> {
    return this.call(this.crypto, CryptoServiceService.verify, () => VerifyRequest.fromPartial(request), options);
  }

  /** Wraps an exportable key under another key (`WrapKey`). */
  wrapKey(request: Partial<WrapKeyRequest>, options?: CallOptions): Promise<WrapKeyResponse> {
    return this.call(this.crypto, CryptoServiceService.wrapKey, () => WrapKeyRequest.fromPartial(request), options);
  }

  /** Unwraps a blob into a new key (`UnwrapKey`). */
  unwrapKey(request: Partial<UnwrapKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(this.crypto, CryptoServiceService.unwrapKey, () => UnwrapKeyRequest.fromPartial(request), options);
  }

  /** Derives an AES key with ECDH (`DeriveKey`). */
  deriveKey(request: Partial<DeriveKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(this.crypto, CryptoServiceService.deriveKey, () => DeriveKeyRequest.fromPartial(request), options);
  }

  /** Random bytes from the HSM's generator (`GenerateRandom`). */
  generateRandom(request: Partial<GenerateRandomRequest>, options?: CallOptions): Promise<GenerateRandomResponse> {
    return this.call(
      this.crypto,
      CryptoServiceService.generateRandom,
      () => GenerateRandomRequest.fromPartial(request),
      options,
    );
  }

  /** Many signs in one call (`BatchSign`); each result is `{ $case: "ok" }` or a per-item `{ $case: "error" }`. */
  batchSign(request: BatchRequestInit<SignRequest>, options?: CallOptions): Promise<BatchSignResponse> {
    return this.call(this.crypto, CryptoServiceService.batchSign, () => BatchSignRequest.fromPartial(request), options);
  }

  /** Many verifies in one call (`BatchVerify`), with per-item results. */
  batchVerify(request: BatchRequestInit<VerifyRequest>, options?: CallOptions): Promise<BatchVerifyResponse> {
    return this.call(
      this.crypto,
      CryptoServiceService.batchVerify,
      () => BatchVerifyRequest.fromPartial(request),
      options,
    );
  }

  /** Many encryptions in one call (`BatchEncrypt`), with per-item results. */
  batchEncrypt(request: BatchRequestInit<EncryptRequest>, options?: CallOptions): Promise<BatchEncryptResponse> {
    return this.call(
      this.crypto,
      CryptoServiceService.batchEncrypt,
      () => BatchEncryptRequest.fromPartial(request),
      options,
    );
  }

  /** Many decryptions in one call (`BatchDecrypt`), with per-item results. */
  batchDecrypt(request: BatchRequestInit<DecryptRequest>, options?: CallOptions): Promise<BatchDecryptResponse> {
    return this.call(
      this.crypto,
      CryptoServiceService.batchDecrypt,
      () => BatchDecryptRequest.fromPartial(request),
      options,
    );
  }

  /**
   * Closes the channel. Calls in flight fail; later calls reject with FAILED_PRECONDITION.
   * Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.channel.close();
  }

  /** Runs one unary call with a deadline, metadata and abort wiring; rejects only with HsmClientError. */
  private call<Req, Res>(
    client: grpc.Client,
    method: UnaryMethod<Req, Res>,
    build: () => Req,
    options: CallOptions = {},
  ): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      if (this.closed) {
        reject(new HsmClientError(grpc.status.FAILED_PRECONDITION, "the HsmClient is closed"));
        return;
      }
      const { signal } = options;
      if (signal?.aborted) {
        reject(abortErrorOf(signal));
        return;
      }
      let request: Req;
      let metadata: grpc.Metadata;
      let deadline: Date;
      try {
        request = build();
        metadata = metadataOf(options.metadata);
        deadline = this.deadlineOf(options.deadlineMs);
      } catch (err) {
        reject(HsmClientError.from(err, grpc.status.INVALID_ARGUMENT));
        return;
      }

      let onAbort: (() => void) | undefined;
      const done = (): void => {
        if (onAbort !== undefined) signal?.removeEventListener("abort", onAbort);
      };
      let call: grpc.ClientUnaryCall;
      try {
        call = client.makeUnaryRequest(
          method.path,
          method.requestSerialize,
          method.responseDeserialize,
          request,
          metadata,
          { deadline },
          (err, response) => {
            done();
            if (err) {
              reject(signal?.aborted && err.code === grpc.status.CANCELLED ? abortErrorOf(signal) : HsmClientError.from(err));
            } else if (response === undefined) {
              reject(new HsmClientError(grpc.status.INTERNAL, "the server sent no response message"));
            } else {
              resolve(response);
            }
          },
        );
      } catch (err) {
        reject(HsmClientError.from(err, grpc.status.UNAVAILABLE));
        return;
      }
      if (signal !== undefined) {
        onAbort = () => call.cancel();
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  private deadlineOf(deadlineMs: number | undefined): Date {
    const ms = deadlineMs ?? this.options.defaultDeadlineMs;
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms <= 0) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, "deadlineMs: must be a finite number greater than 0");
    }
    return new Date(Date.now() + ms);
  }
}

/** grpc-js metadata from plain text headers; grpc-js validates the keys and throws on bad ones. */
function metadataOf(headers: Record<string, string> | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (headers === undefined) return metadata;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase().endsWith("-bin")) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, `metadata ${key}: binary (-bin) headers are not supported`);
    }
    metadata.set(key, value);
  }
  return metadata;
}

/** CANCELLED for an aborted signal, DEADLINE_EXCEEDED when its reason is a TimeoutError. */
function abortErrorOf(signal: AbortSignal): HsmClientError {
  const reason: unknown = signal.reason;
  const timedOut = typeof reason === "object" && reason !== null && (reason as { name?: unknown }).name === "TimeoutError";
  return new HsmClientError(
    timedOut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED,
    timedOut ? "the call's abort signal timed out" : "the call was aborted",
    { cause: reason },
  );
}
