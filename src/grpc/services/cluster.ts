import { normalizeFingerprint } from "../../cluster";
import { precondition } from "../../errors";
import type { ClusterServiceServer } from "../../gen/hsm/v1/cluster";
import { joinToProto } from "../map/cluster";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.ClusterService: status, joins and removal over the {@link Membership}. */
export function clusterService(opts: GrpcServerOptions, p: Pipeline): ClusterServiceServer {
  const { rpc, withQuorum } = p;
  const member = () => {
    if (!opts.membership) throw precondition("this node is not part of a cluster: it runs on its embedded store (configure `cluster` to run one)");
    return opts.membership;
  };
  return {
    getClusterStatus: rpc("GetClusterStatus", async () => {
      const self = opts.membership?.nodeId ?? "";
      if (!opts.membership) {
        return { cluster: "", store: "embedded", storeRevision: BigInt(opts.applier.appliedRevision), self, nodes: [] };
      }
      const rev = opts.storeRevision?.() ?? 0;
      // Applied revision and lag from the nodes' watermark rows (store revision − watermark).
      const members = await opts.membership.members(rev, opts.watermarks?.all());
      return {
        cluster: opts.clusterName ?? "",
        store: "etcd",
        storeRevision: BigInt(rev),
        self,
        nodes: members.map((n) => ({
          nodeId: n.id,
          advertise: n.advertise,
          appliedRevision: BigInt(n.appliedRevision),
          lag: BigInt(n.lag ?? 0),
          hsmHealthy: n.hsmHealthy,
          storeReachable: n.storeReachable,
          lastContact: n.lastContact === undefined ? "" : new Date(n.lastContact).toISOString(),
          joinedAt: new Date(n.joinedAt).toISOString(),
          keys: n.keys,
        })),
      };
    }),
    listJoinRequests: rpc("ListJoinRequests", async () => ({ requests: (await member().listJoins()).map(joinToProto) })),
    approveJoin: rpc("ApproveJoin", async (r, c) => {
      const m = member();
      const id = r.nodeId;
      const fp = normalizeFingerprint(r.transportKeySha256);
      // Everything that can be refused without the quorum and the SO step comes first.
      await m.checkApprovable(id);
      const rec = await withQuorum(c, "ApproveJoin", { nodeId: id, transportKeySha256: fp }, r.quorumRequestId, () => m.approve(c.principal!.user, id, fp, r.soPin, opts.domainKeyId!));
      c.audit.detail = `join of ${id} approved on ${rec.approvedOn}`;
      return joinToProto(rec);
    }),
    rejectJoin: rpc("RejectJoin", async (r, c) => joinToProto(await member().reject(c.principal!.user, r.nodeId))),
    removeNode: rpc("RemoveNode", async (r) => {
      await member().remove(r.nodeId);
      return {};
    }),
  };
}
