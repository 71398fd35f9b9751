import type { QuorumServiceServer } from "../../gen/hsm/v1/users";
import { quorumStatusFromProto, quorumToProto } from "../map/quorum";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.QuorumService: M-of-N requests, proto ⇄ domain over the {@link QuorumService}. */
export function quorumService(opts: GrpcServerOptions, p: Pipeline): QuorumServiceServer {
  const { quorum, guard } = opts;
  const { rpc } = p;
  return {
    listQuorumRequests: rpc("ListQuorumRequests", async (r) => {
      const status = quorumStatusFromProto(r.status);
      return { requests: (await quorum.list(status ? { status } : {})).map(quorumToProto) };
    }),
    getQuorumRequest: rpc("GetQuorumRequest", async (r, c) => {
      const q = await quorum.get(r.id);
      guard.quorumReader(c.principal!, q.requestedBy, r.id);
      return quorumToProto(q);
    }),
    approveQuorumRequest: rpc("ApproveQuorumRequest", async (r, c) => {
      const a = await quorum.approve(c.principal!, r.id);
      c.audit.detail = `${a.operation}: ${a.approvals.length} of ${a.required} approvals${a.duplicate ? " (duplicate approval, counted once)" : ""}`;
      return { request: quorumToProto(a), duplicate: a.duplicate, message: a.message };
    }),
    rejectQuorumRequest: rpc("RejectQuorumRequest", async (r, c) => quorumToProto(await quorum.reject(c.principal!, r.id))),
  };
}
