/** The `hsm.v1.KeyService` calls of an {@link HsmClient}. */
import * as grpc from "@grpc/grpc-js";
import {
  KeyServiceService,
  DeleteKeyRequest,
  GenerateKeyRequest,
  GetImportParametersRequest,
  GetKeyRequest,
  GetPublicKeyRequest,
  ImportKeyRequest,
  ImportPublicKeyRequest,
  ListKeysRequest,
  ListKeyVersionsRequest,
  RotateKeyRequest,
  SetMinDecryptionVersionRequest,
  TrimKeyVersionsRequest,
  UpdateRotationPolicyRequest,
  type ListKeyVersionsResponse,
  type DeleteKeyResponse,
  type GetImportParametersResponse,
  type GetPublicKeyResponse,
  type Key,
  type ListKeysResponse,
  ShareKeyRequest,
  UnshareKeyRequest,
} from "../gen/hsm/v1/keys";
import { HsmClientError } from "./client-error";
import { HsmClientStreams } from "./client-stream";
import type { CallOptions, ListKeysFilter } from "./client-types";

/** KeyService: generate, import, read, list, share and delete keys. */
export abstract class HsmKeyCalls extends HsmClientStreams {
  /** Lets another crypto user use a key you own (`ShareKey`); may need a quorum. */
  shareKey(request: Partial<ShareKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.shareKey, () => ShareKeyRequest.fromPartial(request), options);
  }

  /** Stops sharing a key you own with a crypto user (`UnshareKey`). */
  unshareKey(request: Partial<UnshareKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.unshareKey, () => UnshareKeyRequest.fromPartial(request), options);
  }

  /** Generates a key inside the HSM (`GenerateKey`). Retried after a transient error only when it carries a `requestId`. */
  generateKey(request: Partial<GenerateKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.generateKey, () => GenerateKeyRequest.fromPartial(request), options);
  }

  /** Reads one key's metadata (`GetKey`); NOT_FOUND when there is no such key. */
  getKey(request: Partial<GetKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.getKey, () => GetKeyRequest.fromPartial(request), options);
  }

  /** Lists one page of keys (`ListKeys`); see {@link listAllKeys} to walk every page. */
  listKeys(request: Partial<ListKeysRequest> = {}, options?: CallOptions): Promise<ListKeysResponse> {
    return this.call(KeyServiceService.listKeys, () => ListKeysRequest.fromPartial(request), options);
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
    return this.call(KeyServiceService.deleteKey, () => DeleteKeyRequest.fromPartial(request), options);
  }

  /** An asymmetric key's public key as SPKI DER, PEM and JWK (`GetPublicKey`). */
  getPublicKey(request: Partial<GetPublicKeyRequest>, options?: CallOptions): Promise<GetPublicKeyResponse> {
    return this.call(KeyServiceService.getPublicKey, () => GetPublicKeyRequest.fromPartial(request), options);
  }

  // ---- versions (issue 13) ----

  /** A new primary version of a key you own (`RotateKey`); old versions keep verifying and decrypting. Retried after a transient error only when it carries a `requestId`. */
  rotateKey(request: Partial<RotateKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.rotateKey, () => RotateKeyRequest.fromPartial(request), options);
  }

  /** Every version of a key, oldest first, with its public key (`ListKeyVersions`). */
  listKeyVersions(request: Partial<ListKeyVersionsRequest>, options?: CallOptions): Promise<ListKeyVersionsResponse> {
    return this.call(KeyServiceService.listKeyVersions, () => ListKeyVersionsRequest.fromPartial(request), options);
  }

  /** Automatic rotation every `rotationPeriodDays` (0 turns it off) (`UpdateRotationPolicy`). */
  updateRotationPolicy(request: Partial<UpdateRotationPolicyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.updateRotationPolicy, () => UpdateRotationPolicyRequest.fromPartial(request), options);
  }

  /** The floor below which versions no longer decrypt or verify (`SetMinDecryptionVersion`). */
  setMinDecryptionVersion(request: Partial<SetMinDecryptionVersionRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.setMinDecryptionVersion, () => SetMinDecryptionVersionRequest.fromPartial(request), options);
  }

  /** Destroys every version below the floor, on every node (`TrimKeyVersions`); may need a quorum. */
  trimKeyVersions(request: Partial<TrimKeyVersionsRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.trimKeyVersions, () => TrimKeyVersionsRequest.fromPartial(request), options);
  }

  /** Imports a public key only (SPKI DER, PEM or JWK) for verify/encrypt/wrap (`ImportPublicKey`). Retried after a transient error only when it carries a `requestId`. */
  importPublicKey(request: Partial<ImportPublicKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.importPublicKey, () => ImportPublicKeyRequest.fromPartial(request), options);
  }

  /** The import wrapping key for BYOK (`GetImportParameters`); feed its `publicKeySpki` to {@link wrapForImport}. */
  getImportParameters(request: Partial<GetImportParametersRequest> = {}, options?: CallOptions): Promise<GetImportParametersResponse> {
    return this.call(KeyServiceService.getImportParameters, () => GetImportParametersRequest.fromPartial(request), options);
  }

  /** Imports key material wrapped with {@link wrapForImport} (`ImportKey`, BYOK). Retried after a transient error only when it carries a `requestId`. */
  importKey(request: Partial<ImportKeyRequest>, options?: CallOptions): Promise<Key> {
    return this.call(KeyServiceService.importKey, () => ImportKeyRequest.fromPartial(request), options);
  }
}
