import { checkQueryArgs, queryAuditLog, verifyAuditLog } from "../../audit";
import type { AuditServiceServer } from "../../gen/hsm/v1/audit";
import { auditToProto } from "../map/audit";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.AuditService: query and verify the audit log. */
export function auditService(opts: GrpcServerOptions, p: Pipeline): AuditServiceServer {
  const { rpc } = p;
  return {
    queryAuditLog: rpc("QueryAuditLog", async (r) => {
      checkQueryArgs(r);
      const page = await queryAuditLog(opts.auditFile, {
        from: r.from || undefined,
        to: r.to || undefined,
        user: r.user || undefined,
        keyId: r.keyId || undefined,
        operation: r.operation || undefined,
        target: r.target || undefined,
        limit: r.limit || undefined,
        afterSeq: Number(r.afterSeq),
      });
      return { entries: page.entries.map(auditToProto), nextAfterSeq: BigInt(page.nextAfterSeq ?? 0) };
    }),
    verifyAuditLog: rpc("VerifyAuditLog", async () => {
      const v = await verifyAuditLog(opts.auditFile);
      return v.ok
        ? { ok: true, entries: BigInt(v.entries), lastHash: v.lastHash, problems: [] }
        : { ok: false, entries: BigInt(v.entries), lastHash: "", problems: [`line ${v.problem.line}: ${v.problem.kind}: ${v.problem.message}`] };
    }),
  };
}
