import type { AuditEntry } from "../../audit";
import { Code, HsmError } from "../../errors";
import type { GrpcServerOptions } from "../options";
import { auditable, describeCause, type CallContext } from "./context";

/** What recording a call needs from the server's options. */
export type RecordOptions = Pick<GrpcServerOptions, "audit" | "auditFsync" | "log">;

/** The answer of every call while the audit log cannot be written (UNAVAILABLE, transient). */
export function auditUnwritable(): HsmError {
  return new HsmError(Code.Unavailable, "the audit log cannot be written: this node refuses to answer until an operator fixes it", { transient: true });
}

/** What an audit entry is made of: a unary call's context, or one operation of a crypto stream. */
export type AuditedCall = Pick<CallContext, "method" | "principal" | "peer" | "requestId" | "audit">;

/** Appends the call's audit entry; answers the error to send instead when the log cannot be written. */
export async function recordCall(opts: RecordOptions, c: AuditedCall, status: string, change: boolean): Promise<HsmError | undefined> {
  const entry: AuditEntry = {
    user: c.audit.user ?? c.principal?.user,
    role: c.audit.role ?? c.principal?.role,
    operation: c.method,
    keyId: c.audit.keyId,
    target: c.audit.target,
    status,
    requestId: c.requestId,
    client: auditable(c.peer, 256),
    detail: c.audit.detail,
  };
  try {
    await opts.audit.append(entry, { sync: change || opts.auditFsync === "always" });
    return undefined;
  } catch (e) {
    opts.log?.(`audit log append failed for ${c.method} (${status}): ${describeCause(e)}`);
    return auditUnwritable();
  }
}
