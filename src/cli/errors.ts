/**
 * The two ways an hsmctl command fails before or apart from the server: a usage error (bad or missing
 * flags, unreadable or malformed input: exit 2, with the command's usage) and a failure (not logged
 * in, an invalid signature, a tampered audit log, a refused envelope: exit 1). Errors from the server
 * arrive as the SDK's HsmClientError and exit 1 too.
 */

/** Exit codes of hsmctl. */
export const EXIT = {
  OK: 0,
  /** The server refused or failed, or the operation's answer is "no" (signature invalid, chain broken). */
  FAILURE: 1,
  /** Client-side validation: flags, values, input files. */
  USAGE: 2,
  /** Interrupted at a prompt (Ctrl-C). */
  INTERRUPTED: 130,
} as const;

/** A client-side validation error: printed with the command's usage, exit 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * A failure that is not a server error, printed as `error: CODE: message` (the code is a gRPC status
 * name when one fits, e.g. UNAUTHENTICATED for a missing login), exit 1 unless told otherwise.
 */
export class CliFailure extends Error {
  override readonly name = "CliFailure";
  constructor(
    readonly codeName: string | undefined,
    message: string,
    readonly exitCode: number = EXIT.FAILURE,
  ) {
    super(message);
  }
}
