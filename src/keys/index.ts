/** Key management and crypto, transport-free: domain types by name, no wire format. */
export { KeyService, type KeyServiceOptions } from "./service";
export { KeyRecords, mainPart, partsOf, residencyOf } from "./key-records";
export { OwnerIndex } from "./owner-index";
export { DEFAULT_OBJECT_BUDGET, MIN_OBJECT_BUDGET, objectsOf, type MaterializerStats } from "./materializer";
export { parsePublicKey } from "./public-key";
export { encryptionContextAad } from "./data-keys";
export { SINGLE_NODE, type KeyPlacement } from "./placement";
export type { KeyLimits } from "./validation";
export { currentVersionOf, decodeRecord, recordKey, withoutMaterial, type KeyRecord, type KeyVersion, type UserRef } from "./record";
export { originFromStored, specFromStored } from "./record-migration";
export { algorithmOf, isSecret } from "./spec";
export { rawToDer, derToRaw } from "./signature";
export { KEY_ORIGIN_NAMES, KEY_SPEC_NAMES } from "./types";
export type * from "./types";
export { blobKeyOf, isCiphertextBlob } from "./ciphertext-header";
export type { ReEncryptInput, ReEncryptOutput } from "./re-encrypt";
