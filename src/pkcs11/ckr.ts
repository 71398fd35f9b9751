import { Code, HsmError } from "../errors";

/** CKR_* values hsmd treats specially (PKCS#11 v2.40 §11.1). */
export const CKR = {
  OK: 0x0,
  HOST_MEMORY: 0x2,
  GENERAL_ERROR: 0x5,
  ARGUMENTS_BAD: 0x7,
  ATTRIBUTE_VALUE_INVALID: 0x13,
  DATA_INVALID: 0x20,
  DATA_LEN_RANGE: 0x21,
  DEVICE_ERROR: 0x30,
  DEVICE_MEMORY: 0x31,
  DEVICE_REMOVED: 0x32,
  ENCRYPTED_DATA_INVALID: 0x40,
  ENCRYPTED_DATA_LEN_RANGE: 0x41,
  KEY_HANDLE_INVALID: 0x60,
  KEY_SIZE_RANGE: 0x62,
  KEY_TYPE_INCONSISTENT: 0x63,
  KEY_FUNCTION_NOT_PERMITTED: 0x68,
  KEY_NOT_WRAPPABLE: 0x69,
  KEY_UNEXTRACTABLE: 0x6a,
  MECHANISM_INVALID: 0x70,
  MECHANISM_PARAM_INVALID: 0x71,
  OBJECT_HANDLE_INVALID: 0x82,
  OPERATION_ACTIVE: 0x90,
  PIN_INCORRECT: 0xa0,
  PIN_LOCKED: 0xa4,
  SESSION_CLOSED: 0xb0,
  SESSION_COUNT: 0xb1,
  SESSION_HANDLE_INVALID: 0xb3,
  SIGNATURE_INVALID: 0xc0,
  SIGNATURE_LEN_RANGE: 0xc1,
  TOKEN_NOT_PRESENT: 0xe0,
  TOKEN_NOT_RECOGNIZED: 0xe1,
  UNWRAPPING_KEY_HANDLE_INVALID: 0xf0,
  UNWRAPPING_KEY_SIZE_RANGE: 0xf1,
  UNWRAPPING_KEY_TYPE_INCONSISTENT: 0xf2,
  USER_ALREADY_LOGGED_IN: 0x100,
  USER_NOT_LOGGED_IN: 0x101,
  WRAPPED_KEY_INVALID: 0x110,
  WRAPPED_KEY_LEN_RANGE: 0x112,
  WRAPPING_KEY_HANDLE_INVALID: 0x113,
  WRAPPING_KEY_SIZE_RANGE: 0x114,
  WRAPPING_KEY_TYPE_INCONSISTENT: 0x115,
  CRYPTOKI_NOT_INITIALIZED: 0x190,
  BUFFER_TOO_SMALL: 0x150,
} as const;

/** The CKR value of a pkcs11js error, or undefined for anything else. */
export function ckrOf(err: unknown): number | undefined {
  if (err && typeof err === "object" && "code" in err && typeof (err as { code: unknown }).code === "number") {
    const msg = (err as { message?: unknown }).message;
    if (typeof msg === "string" && msg.startsWith("CKR_")) return (err as { code: number }).code;
  }
  return undefined;
}

/** Errors after which the session (or the whole token) must be reopened and logged in again. */
export function isSessionLost(ckr: number | undefined): boolean {
  return (
    ckr === CKR.SESSION_HANDLE_INVALID ||
    ckr === CKR.SESSION_CLOSED ||
    ckr === CKR.USER_NOT_LOGGED_IN ||
    ckr === CKR.DEVICE_REMOVED ||
    ckr === CKR.DEVICE_ERROR ||
    ckr === CKR.TOKEN_NOT_PRESENT ||
    ckr === CKR.TOKEN_NOT_RECOGNIZED ||
    ckr === CKR.CRYPTOKI_NOT_INITIALIZED
  );
}

/** Errors that mean a cached object handle went stale (the object must be found again). */
export function isHandleStale(ckr: number | undefined): boolean {
  return ckr === CKR.OBJECT_HANDLE_INVALID || ckr === CKR.KEY_HANDLE_INVALID || ckr === CKR.WRAPPING_KEY_HANDLE_INVALID || ckr === CKR.UNWRAPPING_KEY_HANDLE_INVALID;
}

/**
 * Maps a device error to an {@link HsmError}: CKR → domain code → (later) gRPC status. The message
 * names the operation and the CKR so an operator can act on it; it never carries data or key bytes.
 */
export function mapDeviceError(err: unknown, operation: string): HsmError {
  if (err instanceof HsmError) return err;
  const ckr = ckrOf(err);
  if (ckr === undefined) return HsmError.from(err);
  const name = (err as Error).message.split(":")[0];
  const at = `${operation}: ${name}`;
  switch (ckr) {
    case CKR.ENCRYPTED_DATA_INVALID:
    case CKR.ENCRYPTED_DATA_LEN_RANGE:
      return new HsmError(Code.InvalidArgument, `${operation}: ciphertext, IV or tag is invalid for this key (${name})`, { cause: err });
    case CKR.DATA_INVALID:
    case CKR.DATA_LEN_RANGE:
      return new HsmError(Code.InvalidArgument, `${operation}: input has the wrong length or form for this mechanism (${name})`, { cause: err });
    case CKR.WRAPPED_KEY_INVALID:
    case CKR.WRAPPED_KEY_LEN_RANGE:
      return new HsmError(Code.InvalidArgument, `${operation}: the wrapped key blob is invalid or was not wrapped under this key (${name})`, { cause: err });
    case CKR.MECHANISM_PARAM_INVALID:
    case CKR.ATTRIBUTE_VALUE_INVALID:
    case CKR.ARGUMENTS_BAD:
      return new HsmError(Code.InvalidArgument, `${operation}: parameters rejected by the device (${name})`, { cause: err });
    case CKR.KEY_TYPE_INCONSISTENT:
    case CKR.KEY_SIZE_RANGE:
    case CKR.WRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR.WRAPPING_KEY_SIZE_RANGE:
    case CKR.UNWRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR.UNWRAPPING_KEY_SIZE_RANGE:
      return new HsmError(Code.FailedPrecondition, `${operation}: the key does not fit this mechanism (${name})`, { cause: err });
    case CKR.KEY_FUNCTION_NOT_PERMITTED:
      return new HsmError(Code.FailedPrecondition, `${operation}: the key's usage does not permit this operation (${name})`, { cause: err });
    case CKR.KEY_NOT_WRAPPABLE:
    case CKR.KEY_UNEXTRACTABLE:
      return new HsmError(Code.FailedPrecondition, `${operation}: the device cannot wrap this key (${name})`, { cause: err });
    case CKR.MECHANISM_INVALID:
      return new HsmError(Code.FailedPrecondition, `${operation}: the device does not support this mechanism (${name})`, { cause: err });
    case CKR.DEVICE_MEMORY:
    case CKR.HOST_MEMORY:
    case CKR.SESSION_COUNT:
      return new HsmError(Code.ResourceExhausted, `${at}: the device is out of memory or sessions`, { cause: err });
    case CKR.PIN_INCORRECT:
    case CKR.PIN_LOCKED:
      return new HsmError(Code.FailedPrecondition, `${at}: the token refused the configured PIN`, { cause: err });
    default:
      if (isSessionLost(ckr)) return new HsmError(Code.Unavailable, `${at}: lost the device session; retry`, { cause: err, transient: true });
      return new HsmError(Code.Internal, `${at}`, { cause: err });
  }
}
