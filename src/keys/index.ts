/** Key management and crypto, transport-free. */
export { KeyService, parsePublicKey } from "./service";
export type { KeyLimits, KeyServiceOptions, ReconcileResult } from "./service";
export type { KeyRecord, KeyVersion, UserRef } from "./record";
export { rawToDer, derToRaw } from "./signature";
