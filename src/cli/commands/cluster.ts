/** `cluster …`: members, join requests, joining this host, approval of a join (with the SO PIN) and removal. */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { CliFailure, UsageError } from "../errors";
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
    words: ["cluster", "join"],
    summary: "on the joining host: run this host's hsmd in join mode (asks to join, waits for approval, then serves)",
    details: `Runs on the host that is to join, not against the cluster: starts this host's hsmd with
"hsmd join --config FILE" (the same program, next to hsmctl) and stays in the foreground as the
daemon does. Its HSM generates a transport key pair, the join request is recorded in etcd, and the
transport key's SHA-256 is printed: a crypto officer compares it and runs "hsmctl cluster approve"
against a member. Once approved, the member's HSM has wrapped the domain key for this one, this
host's HSM unwraps it, and hsmd serves until SIGTERM or SIGINT (which hsmctl passes on). A rejected
or expired request, or a node that was removed, ends with hsmd's reason and exit status 1.
Text output is hsmd's own; --output json prints one JSON object per line and event ("join-request"
with the fingerprint, "serving" with the addresses) and hsmd's other lines on stderr. No session is
needed.`,
    options: {
      "hsmd-config": { type: "string", arg: "FILE", required: true, description: "this host's hsmd config (the one its hsmd start will use)" },
      "data-dir": { type: "string", arg: "DIR", description: "override the config's node data directory" },
    },
    examples: ["hsmctl cluster join --hsmd-config /etc/hsmd/hsmd.json"],
    needsSession: false,
    async run(ctx, values) {
      const config = requireString(values, "hsmd-config");
      const dataDir = stringValue(values, "data-dir");
      const main = join(__dirname, "..", "..", "main.js");
      if (!existsSync(main)) throw new CliFailure(undefined, `cannot find hsmd next to hsmctl (${main}): run the built hsmctl (npm run build)`);
      return runHsmdJoin(ctx, [main, "join", "--config", config, ...(dataDir ? ["--data-dir", dataDir] : [])]);
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

/**
 * Runs `node <args>` (hsmd join) in the foreground: its output passed through (text) or turned into
 * JSON events, SIGTERM/SIGINT passed on, resolving with its exit status.
 */
function runHsmdJoin(ctx: Parameters<CommandSpec["run"]>[0], args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: ctx.io.env, stdio: ["ignore", "pipe", "pipe"] });
    const pass = (sig: NodeJS.Signals) => () => child.kill(sig);
    const onTerm = pass("SIGTERM");
    const onInt = pass("SIGINT");
    process.on("SIGTERM", onTerm);
    process.on("SIGINT", onInt);
    const json = ctx.output === "json";
    // JSON Lines: one object per event, each on one line, as they happen.
    const event = (o: Record<string, unknown>) => ctx.io.stdout.write(`${JSON.stringify(o)}\n`);
    let pending = "";
    let serving: { grpc?: string; admin?: string } | undefined;
    const line = (l: string) => {
      if (!json) return ctx.io.stdout.write(`${l}\n`);
      const req = /^join request: node (\S+), transport key sha256 ([0-9a-f]{64}) .*expires (\S+?)\)$/.exec(l);
      if (req) return event({ event: "join-request", nodeId: req[1], fingerprint: req[2], expiresAt: req[3] });
      if (l.startsWith("hsmd ready")) serving = {};
      const g = /^\s+gRPC\s+(\S+)/.exec(l);
      const a = /^\s+admin\s+(\S+)/.exec(l);
      if (serving && g) serving.grpc = g[1];
      if (serving && a) {
        serving.admin = a[1];
        return event({ event: "serving", ...serving });
      }
      if (!serving || !(g || l.startsWith("hsmd ready"))) ctx.io.stderr.write(`${l}\n`);
    };
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (d: string) => {
      pending += d;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const l of lines) line(l);
    });
    child.stderr.on("data", (d: Buffer) => ctx.io.stderr.write(d));
    child.on("error", (e) => {
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onInt);
      reject(new CliFailure(undefined, `cannot run hsmd: ${e.message}`));
    });
    child.on("exit", (code, signal) => {
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onInt);
      if (pending) line(pending);
      // Stopped by a signal hsmctl passed on: a clean stop, as hsmd's own is.
      resolve(code ?? (signal === "SIGTERM" || signal === "SIGINT" ? 0 : 1));
    });
  });
}
