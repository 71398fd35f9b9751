import { status as GrpcStatus } from "@grpc/grpc-js";

/**
 * The closed set of error codes hsmd uses, one per gRPC status it answers with. Domain code throws
 * {@link HsmError} with one of these; the gRPC layer maps it to the status of the same name and the
 * HTTP layer to {@link httpStatusOf}. Nothing else may reach a client as an error code: in particular a
 * pkcs11js error carries the CKR_* value in `code`, which grpc-js would otherwise send as a status.
 */
export enum Code {
  InvalidArgument = "INVALID_ARGUMENT",
  NotFound = "NOT_FOUND",
  AlreadyExists = "ALREADY_EXISTS",
  PermissionDenied = "PERMISSION_DENIED",
  Unauthenticated = "UNAUTHENTICATED",
  FailedPrecondition = "FAILED_PRECONDITION",
  ResourceExhausted = "RESOURCE_EXHAUSTED",
  Unavailable = "UNAVAILABLE",
  DeadlineExceeded = "DEADLINE_EXCEEDED",
  Internal = "INTERNAL",
}

const GRPC: Record<Code, GrpcStatus> = {
  [Code.InvalidArgument]: GrpcStatus.INVALID_ARGUMENT,
  [Code.NotFound]: GrpcStatus.NOT_FOUND,
  [Code.AlreadyExists]: GrpcStatus.ALREADY_EXISTS,
  [Code.PermissionDenied]: GrpcStatus.PERMISSION_DENIED,
  [Code.Unauthenticated]: GrpcStatus.UNAUTHENTICATED,
  [Code.FailedPrecondition]: GrpcStatus.FAILED_PRECONDITION,
  [Code.ResourceExhausted]: GrpcStatus.RESOURCE_EXHAUSTED,
  [Code.Unavailable]: GrpcStatus.UNAVAILABLE,
  [Code.DeadlineExceeded]: GrpcStatus.DEADLINE_EXCEEDED,
  [Code.Internal]: GrpcStatus.INTERNAL,
};

const HTTP: Record<Code, number> = {
  [Code.InvalidArgument]: 400,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.Unauthenticated]: 401,
  [Code.FailedPrecondition]: 412,
  [Code.ResourceExhausted]: 429,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
  [Code.Internal]: 500,
};

/** The one error class of hsmd: a closed {@link Code}, a message a person can act on, and a cause. */
export class HsmError extends Error {
  override readonly name = "HsmError";
  /** True when retrying the same call later may succeed (device busy, store unavailable). */
  readonly transient: boolean;

  constructor(
    readonly code: Code,
    message: string,
    options: { cause?: unknown; transient?: boolean } = {},
  ) {
    super(message, { cause: options.cause });
    this.transient = options.transient ?? code === Code.Unavailable;
  }

  /** Normalises anything thrown into an HsmError; unknown errors become INTERNAL without leaking details. */
  static from(err: unknown): HsmError {
    if (err instanceof HsmError) return err;
    return new HsmError(Code.Internal, "internal error", { cause: err });
  }

  /** The gRPC status number for this error's code. */
  get grpcStatus(): GrpcStatus {
    return GRPC[this.code];
  }
}

/** gRPC status for a code. */
export function grpcStatusOf(code: Code): GrpcStatus {
  return GRPC[code];
}

/** HTTP status for a code, for the admin surface. */
export function httpStatusOf(code: Code): number {
  return HTTP[code];
}

/** Shorthand constructors, so call sites read as the condition they report. */
export const invalid = (msg: string) => new HsmError(Code.InvalidArgument, msg);
export const notFound = (msg: string) => new HsmError(Code.NotFound, msg);
export const precondition = (msg: string) => new HsmError(Code.FailedPrecondition, msg);
export const exhausted = (msg: string) => new HsmError(Code.ResourceExhausted, msg);
export const unavailable = (msg: string, cause?: unknown) =>
  new HsmError(Code.Unavailable, msg, { cause, transient: true });
