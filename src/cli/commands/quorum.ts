/** `quorum …`: M-of-N approval of sensitive operations (crypto officers). */
import { quorumStatuses } from "../names";
import { quorumText, quorumView, quorumsText } from "../render";
import { requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const ID: OptionSpec = { type: "string", arg: "ID", required: true, description: "the quorum request's id" };

export const quorumCommands: CommandSpec[] = [
  {
    words: ["quorum", "list"],
    summary: "list quorum requests (crypto officers)",
    options: { status: { type: "string", arg: "STATUS", description: `only requests in this state: ${quorumStatuses.names.join(", ")}` } },
    async run(ctx, values) {
      const statusText = stringValue(values, "status");
      const status = statusText === undefined ? undefined : quorumStatuses.parse(statusText, "--status");
      const { requests } = await ctx.client().listQuorumRequests(status === undefined ? {} : { status });
      ctx.emit({ requests: requests.map(quorumView) }, quorumsText(requests));
    },
  },
  {
    words: ["quorum", "get"],
    summary: "show one quorum request (crypto officers, and the user that made it)",
    options: { id: ID },
    async run(ctx, values) {
      const q = await ctx.client().getQuorumRequest({ id: requireString(values, "id") });
      ctx.emit(quorumView(q), quorumText(q));
    },
  },
  {
    words: ["quorum", "approve"],
    summary: "approve a quorum request as the logged-in crypto officer",
    details: `Counts this officer's approval once. When enough officers approved, the operation's caller runs the
same command again with --quorum-request-id ID (for example hsmctl user delete --username bob
--quorum-request-id ID), once, before the request expires.`,
    options: { id: ID },
    async run(ctx, values) {
      const res = await ctx.client().approveQuorumRequest({ id: requireString(values, "id") });
      const q = res.request!;
      const view = { ...quorumView(q), duplicate: res.duplicate, ...(res.message ? { message: res.message } : {}) };
      ctx.emit(view, () => {
        const head = res.duplicate ? `you had already approved ${q.id}` : `approved ${q.id}`;
        return `${head}: ${q.approvals.length} of ${q.required} approvals, ${quorumStatuses.name(q.status)}${res.message ? ` (${res.message})` : ""}`;
      });
    },
  },
  {
    words: ["quorum", "reject"],
    summary: "reject a quorum request (crypto officers)",
    options: { id: ID },
    async run(ctx, values) {
      const q = await ctx.client().rejectQuorumRequest({ id: requireString(values, "id") });
      ctx.emit(quorumView(q), `rejected ${q.id} (${q.operation})`);
    },
  },
];
