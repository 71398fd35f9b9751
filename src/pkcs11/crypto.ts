import * as pk from "pkcs11js";
import { Code, HsmError } from "../errors";
import { CKR, ckrOf } from "./ckr";
import { runHot } from "./hot-path";
import { cipherMechanism, signMechanism } from "./mechanisms";
import { KeyNotMaterializedError } from "./not-materialized";
import { oaepDecode, oaepEncode } from "./oaep";
import { retrySpurious, type DeviceCore } from "./run";
import type { CipherSpec, Part, SignSpec } from "./types";

/**
 * The crypto calls (C_Encrypt, C_Decrypt, C_Sign, C_Verify, C_GenerateRandom): the hot path. Each is
 * one call with a cached handle, in a session worker or on a pooled session (hot-path.ts); the device's answers to bad input become INVALID_ARGUMENT
 * (or `false` for a signature that does not verify), one answer for every kind of bad ciphertext.
 */

/** Encrypts under a key's part; RSA-OAEP the device cannot do as asked is encoded on the host over CKM_RSA_X_509. */
export async function encrypt(c: DeviceCore, id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
  if (spec.name === "RSA_OAEP" && c.oaep.onHost(spec)) {
    // RSA in the device, OAEP encoding on the host (only the message passes through the host).
    const em = oaepEncode(data, spec.k, spec.hash, spec.label);
    c.mod.requireMechanism(pk.CKM_RSA_X_509, `RSA-OAEP with ${spec.hash}`);
    const out = (await runHot(c, "C_Encrypt", { id, part }, { kind: "encrypt", mech: { mechanism: pk.CKM_RSA_X_509 }, data: em, outLen: spec.k })) as Buffer;
    return Buffer.concat([Buffer.alloc(spec.k - out.length), out]);
  }
  const mech = cipherMechanism(spec);
  c.mod.requireMechanism(mech.mechanism, spec.name);
  return (await runHot(c, "C_Encrypt", { id, part }, { kind: "encrypt", mech, data, outLen })) as Buffer;
}

/** Decrypts under a key's part; a failed tag, padding or OAEP check is INVALID_ARGUMENT, one answer for each. */
export async function decrypt(c: DeviceCore, id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
  if (spec.name === "RSA_OAEP" && c.oaep.onHost(spec)) {
    c.mod.requireMechanism(pk.CKM_RSA_X_509, `RSA-OAEP with ${spec.hash}`);
    if (data.length !== spec.k) throw new HsmError(Code.InvalidArgument, `RSA-OAEP ciphertext must be ${spec.k} bytes for this key; got ${data.length}`);
    let em: Buffer;
    try {
      em = (await runHot(c, "C_Decrypt", { id, part }, { kind: "decrypt", mech: { mechanism: pk.CKM_RSA_X_509 }, data, outLen: spec.k })) as Buffer;
    } catch (e) {
      // A ciphertext at or above the modulus: one answer for every kind of bad ciphertext.
      if (e instanceof HsmError && e.code !== Code.Unavailable && !(e instanceof KeyNotMaterializedError)) {
        throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext");
      }
      throw e;
    }
    const m = oaepDecode(Buffer.from(em), spec.k, spec.hash, spec.label);
    em.fill(0);
    if (!m) throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext");
    return m;
  }
  const mech = cipherMechanism(spec);
  c.mod.requireMechanism(mech.mechanism, spec.name);
  try {
    return (await runHot(c, "C_Decrypt", { id, part }, { kind: "decrypt", mech, data, outLen })) as Buffer;
  } catch (e) {
    const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
    // A native OAEP decoding failure (SoftHSM2: CKR_GENERAL_ERROR; others CKR_ENCRYPTED_DATA_*):
    // the same one answer as the host-side decoding gives, for every kind of bad ciphertext.
    if (
      spec.name === "RSA_OAEP" &&
      (ckr === CKR.GENERAL_ERROR || ckr === CKR.ENCRYPTED_DATA_INVALID || ckr === CKR.ENCRYPTED_DATA_LEN_RANGE || ckr === CKR.DATA_INVALID || ckr === CKR.DATA_LEN_RANGE)
    ) {
      throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext", { cause: (e as HsmError).cause });
    }
    // SoftHSM2 answers a failed GCM tag check or bad CBC padding with CKR_GENERAL_ERROR.
    if (e instanceof HsmError && ckr === CKR.GENERAL_ERROR && spec.name !== "RSA_OAEP") {
      throw new HsmError(Code.InvalidArgument, `decrypt: ${spec.name} authentication or padding check failed: wrong key, IV, tag, AAD or ciphertext`, { cause: e.cause });
    }
    throw e;
  }
}

/** Signs; ECDSA signatures come back raw (r ‖ s), as PKCS#11 returns them. */
export async function sign(c: DeviceCore, id: string, spec: SignSpec, data: Buffer, part: Part = spec.name === "HMAC" || spec.name === "AES_CMAC" ? "secret" : "private"): Promise<Buffer> {
  const { mech, input } = signMechanism(spec, data, c.mod.mechs);
  c.mod.requireMechanism(mech.mechanism, spec.name);
  // No input makes a sound key fail to sign: a CKR_GENERAL_ERROR here is the device's, not the
  // caller's. SoftHSM2 answered one once in about 20 full test runs, to the first sign on a key the
  // cluster applier had just materialized (cause not found). Signing again is harmless: 2 attempts.
  return retrySpurious(() => runHot(c, "C_Sign", { id, part }, { kind: "sign", mech, data: input, outLen: 1024 }) as Promise<Buffer>, {
    what: `C_Sign on key ${id}`,
    attempts: 2,
    log: c.opts.log,
  });
}

/** Verifies; a signature that does not verify (or has the wrong length) is `false`, not an error. */
export async function verify(
  c: DeviceCore,
  id: string,
  spec: SignSpec,
  data: Buffer,
  signature: Buffer,
  part: Part = spec.name === "HMAC" || spec.name === "AES_CMAC" ? "secret" : "public",
): Promise<boolean> {
  const { mech, input } = signMechanism(spec, data, c.mod.mechs);
  c.mod.requireMechanism(mech.mechanism, spec.name);
  try {
    return (await runHot(c, "C_Verify", { id, part }, { kind: "verify", mech, data: input, signature, outLen: 0 })) as boolean;
  } catch (e) {
    const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
    if (ckr === CKR.SIGNATURE_INVALID || ckr === CKR.SIGNATURE_LEN_RANGE || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.DATA_INVALID) return false;
    throw e;
  }
}

/** C_GenerateRandom (in a session worker, or blocking on the main thread: short for the sizes the limits allow). */
export async function random(c: DeviceCore, n: number): Promise<Buffer> {
  return (await runHot(c, "C_GenerateRandom", undefined, { kind: "random", data: Buffer.alloc(0), outLen: n })) as Buffer;
}
