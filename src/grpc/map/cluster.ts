/** Join requests: domain values ⇄ hsm.v1 messages. */
import type { JoinRecord, JoinState } from "../../cluster";
import { JoinStatus, type JoinRequest } from "../../gen/hsm/v1/cluster";
import { iso } from "./time";

const JOIN_STATUS: Record<JoinState, JoinStatus> = {
  pending: JoinStatus.JOIN_STATUS_PENDING,
  approved: JoinStatus.JOIN_STATUS_APPROVED,
  rejected: JoinStatus.JOIN_STATUS_REJECTED,
  expired: JoinStatus.JOIN_STATUS_EXPIRED,
  completed: JoinStatus.JOIN_STATUS_COMPLETED,
};

/** A join request as the API shows it: never the wrapped domain key. */
export function joinToProto(j: JoinRecord): JoinRequest {
  return {
    nodeId: j.nodeId,
    transportKeySha256: j.fingerprint,
    advertise: j.advertise,
    requestedAt: iso(j.requestedAt),
    expiresAt: iso(j.expiresAt),
    status: JOIN_STATUS[j.status],
    approvedBy: j.approvedBy ?? "",
    approvedOn: j.approvedOn ?? "",
    rejectedBy: j.rejectedBy ?? "",
  };
}
