/**
 * Initializes a token with its PINs passed through memory, never on a command line: `softhsm2-util
 * --init-token --pin … --so-pin …` puts both PINs in its argv, which every local user can read in
 * /proc/<pid>/cmdline while it runs. The same three PKCS#11 steps, in this process: C_InitToken (SO
 * PIN and label) on the first slot whose token is not initialized, C_Login(CKU_SO) and C_InitPIN
 * (the user PIN), then a C_Login(CKU_USER) that proves the user PIN works.
 */
import * as pk from "pkcs11js";
import { Code, HsmError, invalid, precondition } from "../errors";

/** Options of {@link initToken}. */
export interface InitTokenOptions {
  /** Path of the PKCS#11 module (.so). */
  module: string;
  /** CKA_LABEL of the new token: 1 to 32 bytes of UTF-8 (the CK_TOKEN_INFO label field). */
  label: string;
  /** The security officer's PIN (CKU_SO). */
  soPin: string;
  /** The user's PIN (CKU_USER), the one hsmd logs in with. */
  userPin: string;
}

/** What {@link initToken} made. */
export interface InitializedToken {
  label: string;
  /** CK_TOKEN_INFO.serialNumber of the new token. */
  serial: string;
}

/** `fn()`, with a pkcs11js error turned into a message that names the PKCS#11 call. */
function step<T>(call: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new HsmError(Code.FailedPrecondition, `${call} failed: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Initializes a new token (see the module comment). Refuses a label another token already has, so
 * that a token label keeps naming one token. Loads and finalizes the module itself: call it from a
 * process that has no other PKCS#11 session open on the module (C_Initialize is process-wide).
 *
 * @throws HsmError INVALID_ARGUMENT for a bad label or an empty PIN; FAILED_PRECONDITION when the
 *   label is taken, no slot is free, or the module refuses a step (e.g. CKR_PIN_LEN_RANGE).
 */
export function initToken(opts: InitTokenOptions): InitializedToken {
  const labelBytes = Buffer.byteLength(opts.label, "utf8");
  if (labelBytes === 0 || labelBytes > 32) throw invalid(`token label must be 1 to 32 bytes; "${opts.label}" is ${labelBytes}`);
  if (opts.label !== opts.label.trim()) throw invalid("token label may not start or end with a space (CK_TOKEN_INFO pads labels with spaces)");
  if (!opts.soPin || !opts.userPin) throw invalid("the SO PIN and the user PIN must not be empty");
  const p11 = new pk.PKCS11();
  step("loading the module", () => p11.load(opts.module));
  step("C_Initialize", () => p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK }));
  try {
    const slots = step("C_GetSlotList", () => p11.C_GetSlotList(true));
    const infos = slots.map((s) => ({ slot: s, info: step("C_GetTokenInfo", () => p11.C_GetTokenInfo(s)) }));
    if (infos.some((t) => t.info.flags & pk.CKF_TOKEN_INITIALIZED && t.info.label.trim() === opts.label)) {
      throw precondition(`a token labelled "${opts.label}" already exists in ${opts.module}: choose another label, or use that token`);
    }
    const free = infos.find((t) => !(t.info.flags & pk.CKF_TOKEN_INITIALIZED));
    if (!free) throw precondition(`no slot with an uninitialized token in ${opts.module}`);
    // The module's PIN length range (CK_TOKEN_INFO ulMinPinLen/ulMaxPinLen), checked before anything
    // is written: a user PIN refused after C_InitToken would leave a token nobody can log in to.
    const { minPinLen, maxPinLen } = free.info;
    for (const [who, pin] of [
      ["SO", opts.soPin],
      ["user", opts.userPin],
    ] as const) {
      const n = Buffer.byteLength(pin, "utf8");
      if (n < minPinLen || n > maxPinLen) throw invalid(`the ${who} PIN is ${n} bytes; this module takes ${minPinLen} to ${maxPinLen} (CKR_PIN_LEN_RANGE)`);
    }
    step("C_InitToken", () => p11.C_InitToken(free.slot, opts.soPin, opts.label.padEnd(32 - (labelBytes - opts.label.length), " ")));
    const so = step("C_OpenSession", () => p11.C_OpenSession(free.slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION));
    try {
      step("C_Login as SO", () => p11.C_Login(so, pk.CKU_SO, opts.soPin));
      step("C_InitPIN", () => p11.C_InitPIN(so, opts.userPin));
      step("C_Logout", () => p11.C_Logout(so));
      step("C_Login as user", () => p11.C_Login(so, pk.CKU_USER, opts.userPin));
      step("C_Logout", () => p11.C_Logout(so));
    } catch (e) {
      throw new HsmError(
        Code.FailedPrecondition,
        `token "${opts.label}" was initialized but its user PIN could not be set (${(e as Error).message}): delete it (softhsm2-util --delete-token --token "${opts.label}") and try again`,
        { cause: e },
      );
    } finally {
      try {
        p11.C_CloseSession(so);
      } catch {
        /* closed with the module */
      }
    }
    return { label: opts.label, serial: step("C_GetTokenInfo", () => p11.C_GetTokenInfo(free.slot)).serialNumber.trim() };
  } finally {
    try {
      p11.C_Finalize();
    } catch {
      /* nothing left to release */
    }
  }
}
