/**
 * The device layer: the only folder that imports pkcs11js. It hands out domain values (key ids,
 * SPKI, wrapped blobs), never raw handles.
 */
export { Device, KeyNotMaterializedError, type WorkerStats } from "./device";
export type { DeviceFaults, KeyDevice } from "./api";
export { checkSoPin, createTrustedPublicKey, type SoLoginOptions, type TrustedKeyOptions } from "./trusted";
export type { DeviceOptions, ObjectInventory, TokenInfo } from "./device";
export { partsFromSpki, spkiFromAttributes } from "./spki";
export { CURVE_BYTES, mechanismName } from "./constants";
export type { CipherSpec, Curve, OaepHash, DeviceObserver, Hash, KeyAlgorithm, Part, PoolStats, SignSpec, Usage, WrapSpec, WrappedMaterial } from "./types";
export { initToken, type InitTokenOptions, type InitializedToken } from "./init-token";
