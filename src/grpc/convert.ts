/** Domain values ⇄ hsm.v1 messages for users, quorum and audit (keys and crypto map in the key service). */
import { invalid } from "../errors";
import type { AuditRecord } from "../audit";
import { QuorumStatus, Role as ProtoRole, type QuorumRequest as ProtoQuorumRequest, type Session, type User } from "../gen/hsm/v1/users";
import type { AuditEntry as ProtoAuditEntry } from "../gen/hsm/v1/audit";
import { JoinStatus, type JoinRequest } from "../gen/hsm/v1/cluster";
import type { JoinRecord, JoinState } from "../cluster";
import type { LoginResult, QuorumRequest, QuorumStatus as DomainQuorumStatus, Role, UserInfo } from "../users";

const ROLE_TO_PROTO: Record<Role, ProtoRole> = { CO: ProtoRole.ROLE_CRYPTO_OFFICER, CU: ProtoRole.ROLE_CRYPTO_USER, AU: ProtoRole.ROLE_APPLIANCE_USER };

/** The domain role of a request's `role`; INVALID_ARGUMENT for UNSPECIFIED or an unknown value. */
export function roleFromProto(r: ProtoRole): Role {
  switch (r) {
    case ProtoRole.ROLE_CRYPTO_OFFICER:
      return "CO";
    case ProtoRole.ROLE_CRYPTO_USER:
      return "CU";
    case ProtoRole.ROLE_APPLIANCE_USER:
      return "AU";
    default:
      throw invalid("role must be ROLE_CRYPTO_OFFICER, ROLE_CRYPTO_USER or ROLE_APPLIANCE_USER");
  }
}

export const roleToProto = (r: Role): ProtoRole => ROLE_TO_PROTO[r];
const iso = (ms: number | undefined) => (ms === undefined ? "" : new Date(ms).toISOString());

export function userToProto(u: UserInfo): User {
  return {
    username: u.name,
    role: roleToProto(u.role),
    mustChangePassword: u.mustChangePassword,
    locked: u.locked,
    lockReason: u.lockReason === "failedLogins" ? "failed_logins" : (u.lockReason ?? ""),
    failedLogins: u.failedLogins,
    createdAt: iso(u.createdAt),
    updatedAt: iso(u.updatedAt),
  };
}

export function sessionToProto(r: LoginResult, username: string): Session {
  return { token: r.token, expiresAt: iso(r.expiresAt), mustChangePassword: r.mustChangePassword, role: roleToProto(r.role), username };
}

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

export function auditToProto(r: AuditRecord): ProtoAuditEntry {
  return {
    seq: BigInt(r.seq),
    prev: r.prev,
    hash: r.hash,
    time: r.time,
    node: r.node,
    user: r.user ?? "",
    role: r.role ?? "",
    operation: r.operation,
    keyId: r.keyId ?? "",
    target: r.target ?? "",
    status: r.status,
    requestId: r.requestId ?? "",
    client: r.client ?? "",
    detail: r.detail ?? "",
  };
}

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
