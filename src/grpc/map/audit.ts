/** Audit records: domain values ⇄ hsm.v1 messages. */
import type { AuditRecord } from "../../audit";
import type { AuditEntry as ProtoAuditEntry } from "../../gen/hsm/v1/audit";

/** An audit record as the API's AuditEntry (absent fields as ""). */
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
