/** Key management and crypto, transport-free: domain types by name, no wire format. */
export { KeyService, type KeyServiceOptions } from "./service";
export { KeyRecords, addedVersions, mainPart, partsOf, removedVersions, residencyOf } from "./key-records";
export { deviceIdOf, parseDeviceId, spkiOfVersion, versionOf } from "./versions";
export { OwnerIndex } from "./owner-index";
export { DEFAULT_OBJECT_BUDGET, MIN_OBJECT_BUDGET, objectsOf, type MaterializerStats } from "./materializer";
export { parsePublicKey } from "./public-key";
export { encryptionContextAad } from "./data-keys";
export { SINGLE_NODE, type KeyPlacement } from "./placement";
export type { KeyVersionList, KeyVersionView } from "./version-admin";
export { DEFAULT_ROTATION_TIMING, type RotationTiming } from "./rotation-policy";
export type { KeyLimits } from "./validation";
export { currentVersionOf, decodeRecord, recordKey, withoutMaterial, type KeyRecord, type KeyVersion, type UserRef } from "./record";
export { originFromStored, specFromStored } from "./record-migration";
export { algorithmOf, isSecret } from "./spec";
export { rawToDer, derToRaw } from "./signature";
export { KEY_ORIGIN_NAMES, KEY_SPEC_NAMES } from "./types";
// Issue 13 lane S: states, deletion schedule, tags.
export { checkTagKey, MAX_DESCRIPTION_LENGTH, MAX_TAGS } from "./key-tags";
export { lacksMaterial, needEnabled } from "./key-states";
export { deletionDue, expiryDue, type DueAuditEntry, type DuePassResult } from "./deletion-schedule";
export { stateOf } from "./record";
export { DueTimer } from "./due-timer";
export type * from "./types";
export { KeyAliases, ALIAS_SCAN_LIMIT, type AliasPage } from "./aliases";
export { ALIAS_PREFIX, RESERVED_ALIAS_PREFIX, MAX_ALIAS_NAME_LENGTH, aliasVisible, checkAliasName, isAliasName, repointRefusal, type AliasRecord } from "./alias-rules";
export { blobKeyOf, isCiphertextBlob } from "./ciphertext-header";
export type { ReEncryptInput, ReEncryptOutput } from "./re-encrypt";
