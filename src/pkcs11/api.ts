import type { Device } from "./device";

/**
 * What the rest of hsmd may ask of the device: `keys/`, `cluster/` and the daemon depend on this
 * interface, not on the PKCS#11 implementation, so that a unit test can hand them a fake device.
 * (First cut: the public surface of {@link Device}; the pkcs11/ split makes it an explicit interface.)
 */
export type KeyDevice = { [K in keyof Device]: Device[K] };
