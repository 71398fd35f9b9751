import { status, type Metadata } from "@grpc/grpc-js";

/** The largest gRPC status number (UNAUTHENTICATED = 16); anything above is not a gRPC status. */
const MAX_STATUS = status.UNAUTHENTICATED;

/** True for an integer that is one of the 17 gRPC status codes. */
function isGrpcStatus(value: unknown): value is status {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= MAX_STATUS;
}

/** The canonical upper-case name of a gRPC status ("NOT_FOUND"). */
function nameOf(code: status): string {
  return status[code] ?? "UNKNOWN";
}

/**
 * The one error every {@link HsmClient} call rejects with: a numeric gRPC status ({@link code}), its
 * name ({@link codeName}), the server's message ({@link details}) and the underlying error as `cause`.
 *
 * Branch on `code` (compare with `grpc.status.NOT_FOUND` …), never on the message text.
 */
export class HsmClientError extends Error {
  override readonly name = "HsmClientError";
  /** gRPC status code (`grpc.status`), e.g. 5 for NOT_FOUND. */
  readonly code: status;
  /** The status name, e.g. "NOT_FOUND". */
  readonly codeName: string;
  /** The server's message (the gRPC status details), without the code prefix. */
  readonly details: string;
  /** Trailing metadata the server sent with the error, when there was a call. */
  readonly metadata: Metadata | undefined;

  /**
   * The quorum request a call that needs M-of-N approval recorded (FAILED_PRECONDITION): have crypto
   * officers approve it, then call again with `quorumRequestId` set to it.
   */
  get quorumRequestId(): string | undefined {
    const v = this.metadata?.get("hsmd-quorum-request-id")[0];
    return typeof v === "string" ? v : undefined;
  }

  constructor(code: status, details: string, options: { cause?: unknown; metadata?: Metadata } = {}) {
    const codeName = nameOf(code);
    super(details ? `[${codeName}] ${details}` : `[${codeName}]`, { cause: options.cause });
    this.code = code;
    this.codeName = codeName;
    this.details = details;
    this.metadata = options.metadata;
  }

  /**
   * Normalises anything thrown into an HsmClientError: an HsmClientError is returned as is; a grpc-js
   * `ServiceError` keeps its status, details and metadata; an `AbortError` becomes CANCELLED; anything
   * else becomes `fallback` (UNKNOWN unless told) with the original as `cause`.
   *
   * Only a `code` that is a real gRPC status (0–16) on an error that carries `details`, as grpc-js
   * sets them, is trusted: other libraries put unrelated numbers in `code` (pkcs11js puts CKR_* there).
   */
  static from(err: unknown, fallback: status = status.UNKNOWN): HsmClientError {
    if (err instanceof HsmClientError) return err;
    if (typeof err === "object" && err !== null) {
      const e = err as { code?: unknown; details?: unknown; metadata?: unknown; message?: unknown; name?: unknown };
      if (isGrpcStatus(e.code) && typeof e.details === "string") {
        const metadata = isMetadata(e.metadata) ? e.metadata : undefined;
        return new HsmClientError(e.code, e.details, { cause: err, metadata });
      }
      if (e.name === "AbortError") {
        return new HsmClientError(status.CANCELLED, typeof e.message === "string" ? e.message : "aborted", {
          cause: err,
        });
      }
      if (err instanceof Error) return new HsmClientError(fallback, err.message, { cause: err });
    }
    return new HsmClientError(fallback, String(err), { cause: err });
  }
}

function isMetadata(value: unknown): value is Metadata {
  return typeof value === "object" && value !== null && typeof (value as Metadata).getMap === "function";
}
