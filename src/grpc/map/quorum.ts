/** Quorum requests: domain values ⇄ hsm.v1 messages. */
import { invalid } from "../../errors";
import { QuorumStatus, type QuorumRequest as ProtoQuorumRequest } from "../../gen/hsm/v1/users";
import type { QuorumRequest, QuorumStatus as DomainQuorumStatus } from "../../users";
import { iso } from "./time";

const STATUS_TO_PROTO: Record<DomainQuorumStatus, QuorumStatus> = {
  pending: QuorumStatus.QUORUM_STATUS_PENDING,
  approved: QuorumStatus.QUORUM_STATUS_APPROVED,
  rejected: QuorumStatus.QUORUM_STATUS_REJECTED,
  expired: QuorumStatus.QUORUM_STATUS_EXPIRED,
  executed: QuorumStatus.QUORUM_STATUS_EXECUTED,
};

/** The domain status of a filter; undefined for UNSPECIFIED (all). */
export function quorumStatusFromProto(s: QuorumStatus): DomainQuorumStatus | undefined {
  if (s === QuorumStatus.QUORUM_STATUS_UNSPECIFIED) return undefined;
  const found = (Object.entries(STATUS_TO_PROTO) as Array<[DomainQuorumStatus, QuorumStatus]>).find(([, v]) => v === s);
  if (!found) throw invalid(`status ${s} is not a QuorumStatus`);
  return found[0];
}

/** A quorum request as the API shows it. */
export function quorumToProto(q: QuorumRequest): ProtoQuorumRequest {
  return {
    id: q.id,
    operation: q.operation,
    params: { ...q.params },
    requestedBy: q.requestedBy,
    requestedAt: iso(q.requestedAt),
    required: q.required,
    status: STATUS_TO_PROTO[q.status],
    approvals: q.approvals.map((a) => ({ officer: a.co, at: iso(a.at) })),
    expiresAt: iso(q.expiresAt),
    rejectedBy: q.rejectedBy ?? "",
    executedAt: iso(q.executedAt),
  };
}
