/**
 * The closed set of error codes hsmd uses, one per gRPC status it answers with. Domain code throws
 * {@link HsmError} with one of these; the gRPC layer maps it to the status of the same name
 * (`grpcStatusOf` in src/grpc/status.ts) and the HTTP layer to an HTTP status (`httpStatusOf` in
 * src/http/status.ts). Nothing else may reach a client as an error code: in particular a pkcs11js
 * error carries the CKR_* value in `code`, which grpc-js would otherwise send as a status.
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

/** One row of {@link ERROR_CODES}: what a code means and when hsmd answers it. */
export interface ErrorCodeInfo {
  /** What the code says, in one phrase. */
  meaning: string;
  /** When hsmd answers it (the README's error section says the same, in more words). */
  when: string;
}

/**
 * Every code in one table (fastify's habit): the README's error section lists the same codes, and
 * test/unit/errors.test.ts checks the two against each other and against both status mappings.
 */
export const ERROR_CODES: Readonly<Record<Code, ErrorCodeInfo>> = Object.freeze({
  [Code.InvalidArgument]: {
    meaning: "the request is malformed or a value breaks a rule",
    when: "a request that is not a valid message of its type, a missing or malformed field, an algorithm that does not fit the key, a bad IV, tag or blob, a name, role or password outside the rules",
  },
  [Code.Unauthenticated]: {
    meaning: "no valid session",
    when: "no or malformed authorization, an unknown, expired or revoked token, a login with a wrong password or an unknown user",
  },
  [Code.PermissionDenied]: {
    meaning: "the caller may not do this",
    when: "a role that may not make the call, a locked user's login, an owner-only action on a shared key, a quorum approval for other params, a wrong current password or SO PIN, a join fingerprint that does not match",
  },
  [Code.NotFound]: {
    meaning: "no such thing (or not visible to the caller)",
    when: "an unknown key (or one neither owned nor shared), user, quorum request, import key or join request",
  },
  [Code.AlreadyExists]: {
    meaning: "the thing to create exists",
    when: "a user with that name exists",
  },
  [Code.FailedPrecondition]: {
    meaning: "the system is not in a state that allows the call",
    when: "usages that forbid the operation, a missing mechanism, an uninitialized node, a one-time password to change, a quorum needed or not approved, a user that still owns keys, a CO deleting or locking itself, a share with a non crypto user, cluster calls on a single node, a join request that is not pending",
  },
  [Code.ResourceExhausted]: {
    meaning: "a limit was reached",
    when: "a payload, batch, message or random length over its limit, the device out of sessions or memory, logins over the client's rate, password hashing full",
  },
  [Code.Unavailable]: {
    meaning: "retry later, maybe elsewhere",
    when: "a device session lost and not recovered in time, the audit log not writable, no etcd quorum, a key not yet held by enough nodes, a node removed from its cluster",
  },
  [Code.DeadlineExceeded]: {
    meaning: "the call ran out of time",
    when: "not thrown by hsmd's own code: grpc-js answers it when a caller's deadline passes before the answer",
  },
  [Code.Internal]: {
    meaning: "a bug or an unexpected fault",
    when: "anything unexpected (logged on the daemon in full, never detailed to the client)",
  },
});

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
}

/** Shorthand constructors, so call sites read as the condition they report. */
export const invalid = (msg: string) => new HsmError(Code.InvalidArgument, msg);
export const notFound = (msg: string) => new HsmError(Code.NotFound, msg);
export const precondition = (msg: string) => new HsmError(Code.FailedPrecondition, msg);
export const exhausted = (msg: string) => new HsmError(Code.ResourceExhausted, msg);
export const unavailable = (msg: string, cause?: unknown) => new HsmError(Code.Unavailable, msg, { cause, transient: true });
