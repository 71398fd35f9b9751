/**
 * Key check values of imported secret keys (issue 13, lane S): what proves, at re-import into a
 * PENDING_IMPORT key, that new secret material is the same key, without ever holding the key outside
 * the HSM. Computed IN THE HSM on a temporary object of the material: AES keys, the first 8 bytes of
 * the encryption of a zero block (the classic KCV, as CKA_CHECK_VALUE is its first 3 bytes); HMAC
 * keys, the first 8 bytes of the HMAC of a fixed label. 8 bytes: a wrong key passes with
 * probability 2^-64; a known block under AES, or one HMAC tag, tells nothing useful about the key.
 */
import { randomUUID, timingSafeEqual } from "node:crypto";
import type { KeyAlgorithm, KeyDevice, Usage } from "../pkcs11";

/** Bytes kept of the check block. */
export const CHECK_VALUE_BYTES = 8;
const HMAC_LABEL = Buffer.from("hsmd key check value v1", "ascii");

/**
 * The check value of secret material: `makeTemp(id, usages)` puts the material in the device under a
 * temporary id with the usages the computation needs; the temporary object is destroyed afterwards.
 * Undefined for algorithms without one (asymmetric keys prove their pair instead).
 */
export async function secretCheckValue(device: KeyDevice, alg: KeyAlgorithm, makeTemp: (id: string, usages: Usage[]) => Promise<void>): Promise<Buffer | undefined> {
  if (alg.type !== "aes" && alg.type !== "hmac") return undefined;
  const tmp = randomUUID();
  try {
    if (alg.type === "aes") {
      await makeTemp(tmp, ["encrypt"]);
      const block = await device.encrypt(tmp, "secret", { name: "AES_CBC_PAD", iv: Buffer.alloc(16) }, Buffer.alloc(16), 48);
      return Buffer.from(block.subarray(0, CHECK_VALUE_BYTES));
    }
    await makeTemp(tmp, ["sign"]);
    const tag = await device.sign(tmp, { name: "HMAC", hash: alg.hash }, HMAC_LABEL);
    return Buffer.from(tag.subarray(0, CHECK_VALUE_BYTES));
  } finally {
    await device.destroy(tmp).catch(() => undefined);
  }
}

/** Constant-time comparison of two check values. */
export const sameCheckValue = (a: Buffer | undefined, b: Buffer | undefined): boolean => !!a && !!b && a.length === b.length && timingSafeEqual(a, b);
