/** `cluster …`: members, join requests, approval of a join (with the SO PIN) and removal. */
import { UsageError } from "../errors";
import { clusterText, clusterView, joinText, joinView, joinsText } from "../render";
import { readSecret } from "../secrets";
import { requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const NODE: OptionSpec = { type: "string", arg: "ID", required: true, description: "the node's id" };

export const clusterCommands: CommandSpec[] = [
  {
    words: ["cluster", "status"],
    summary: "show the members with their applied revision, lag, HSM and store health (crypto officers)",
    options: {},
    async run(ctx) {
      const s = await ctx.client().getClusterStatus();
      ctx.emit(clusterView(s), clusterText(s));
    },
  },
  {
    words: ["cluster", "join-requests"],
    summary: "list the nodes asking to join and the state of past requests (crypto officers)",
    options: {},
    async run(ctx) {
      const { requests } = await ctx.client().listJoinRequests();
      ctx.emit({ requests: requests.map(joinView) }, joinsText(requests));
    },
  },
  {
    words: ["cluster", "approve"],
    summary: "approve a node's join: the member you reach wraps the domain key for it (crypto officers)",
    details: `Compare --fingerprint with what "hsmd join" printed on the joining host (read it there, not from
join-requests). The security-officer PIN of the token of the member this call reaches comes from
HSMCTL_SO_PIN or a prompt, never a flag; it is used for this ceremony only. Give exactly one
--endpoint: the PIN belongs to that member's token. May need a quorum (--quorum-request-id).`,
    options: {
      node: NODE,
      fingerprint: { type: "string", arg: "SHA256", required: true, description: "the joining node's transport key SHA-256 (64 hex digits)" },
      "quorum-request-id": { type: "string", arg: "ID", description: "an approved quorum request for this join" },
    },
    env: { HSMCTL_SO_PIN: "the serving member's token SO PIN (else a prompt on the terminal)" },
    examples: ["hsmctl --endpoint hsm1.internal:7443 cluster approve --node hsm2 --fingerprint 9f2c…"],
    async run(ctx, values) {
      const nodeId = requireString(values, "node");
      const fingerprint = requireString(values, "fingerprint").trim().toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(fingerprint)) throw new UsageError("--fingerprint: must be 64 hex digits (the SHA-256 the joining node printed)");
      const settings = ctx.settings();
      if (settings.endpoints.length !== 1) {
        throw new UsageError(`cluster approve needs exactly one --endpoint (the member whose SO PIN you give), not ${settings.endpoints.length}`);
      }
      const client = ctx.client();
      const soPin = await readSecret(ctx.io, { envName: "HSMCTL_SO_PIN", prompt: `SO PIN of the token of ${settings.endpoints[0]}: `, what: "the SO PIN" });
      const j = await client.approveJoin({ nodeId, transportKeySha256: fingerprint, soPin, quorumRequestId: stringValue(values, "quorum-request-id") ?? "" });
      ctx.emit(joinView(j), `join of ${j.nodeId} approved\n${joinText(j)}`);
    },
  },
  {
    words: ["cluster", "reject"],
    summary: "reject a pending join (crypto officers)",
    options: { node: NODE },
    async run(ctx, values) {
      const j = await ctx.client().rejectJoin({ nodeId: requireString(values, "node") });
      ctx.emit(joinView(j), `join of ${j.nodeId} rejected`);
    },
  },
  {
    words: ["cluster", "remove"],
    summary: "remove a member: it stops serving and destroys its copy of the domain key (crypto officers)",
    options: { node: NODE },
    async run(ctx, values) {
      const nodeId = requireString(values, "node");
      await ctx.client().removeNode({ nodeId });
      ctx.emit({ nodeId, removed: true }, `removed node ${nodeId}`);
    },
  },
];
