import { Code, HsmError } from "../errors";
import type { QuorumService } from "./quorum";
import type { Actor } from "./types";

/**
 * FAILED_PRECONDITION for a call that needs M-of-N approval and came without an approved request:
 * the pending request recorded for it is named in the message and in {@link requestId} (the gRPC
 * layer also sends it as a trailer).
 */
export class QuorumPendingError extends HsmError {
  /** The audit detail of the refused call. */
  readonly detail: string;

  constructor(
    readonly requestId: string,
    readonly required: number,
    operation: string,
  ) {
    super(
      Code.FailedPrecondition,
      `${operation} needs the approval of ${required} crypto officers: quorum request ${requestId} is pending; when approved, call ${operation} again with quorum_request_id=${requestId}`,
    );
    this.detail = `quorum request ${requestId} recorded: needs ${required} approvals`;
  }
}

/**
 * The quorum gate of an operation: resolves when the call may run (no quorum needed, or
 * `quorumRequestId` approved for exactly these params, consumed once here) with the audit detail to
 * record, if any. Without a request id it records a pending request and throws
 * {@link QuorumPendingError} naming it.
 */
export async function passQuorum(quorum: QuorumService, actor: Actor, operation: string, params: Record<string, string>, quorumRequestId: string): Promise<{ detail?: string }> {
  const m = quorum.required(operation);
  if (m <= 1) return {};
  if (!quorumRequestId) {
    const q = await quorum.request(actor, operation, params);
    throw new QuorumPendingError(q.id, m, operation);
  }
  await quorum.consume(quorumRequestId, operation, params);
  return { detail: `quorum request ${quorumRequestId} executed` };
}
