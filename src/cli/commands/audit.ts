/** `audit …`: reading the daemon's audit log and checking its hash chain (on the daemon, or a file offline). */
import { verifyAuditLog, type AuditVerifyOptions } from "../../audit";
import type { AuditEntry } from "../../sdk";
import { CliFailure, UsageError } from "../errors";
import { ioReason } from "../io";
import { auditText, auditView, num } from "../render";
import { intValue, stringValue, type CommandSpec, type Values } from "../spec";

function timeValue(values: Values, name: string): string {
  const v = stringValue(values, name);
  if (v === undefined) return "";
  if (!/^\d{4}-\d{2}-\d{2}T/.test(v) || !Number.isFinite(Date.parse(v))) {
    throw new UsageError(`--${name}: must be an RFC 3339 time (2026-01-31T12:00:00Z), not ${JSON.stringify(v)}`);
  }
  return new Date(v).toISOString();
}

export const auditCommands: CommandSpec[] = [
  {
    words: ["audit", "tail"],
    summary: "show the last audit entries, optionally filtered (crypto officers)",
    details: `Reads the audit log through QueryAuditLog, oldest first, and shows the last --last entries that
match the filters. Entries never hold passwords, tokens, PINs, plaintexts or key material.`,
    options: {
      last: { type: "string", arg: "N", description: "how many entries (default 20, at most 10000)" },
      user: { type: "string", arg: "NAME", description: "only calls by this user" },
      "key-id": { type: "string", arg: "ID", description: "only calls on this key" },
      operation: { type: "string", arg: "RPC", description: "only this RPC (GenerateKey, Login, ShareKey, …)" },
      target: { type: "string", arg: "SUBJECT", description: "only this other subject (the username a login tried, a quorum request id)" },
      from: { type: "string", arg: "TIME", description: "only entries at or after this RFC 3339 time" },
      to: { type: "string", arg: "TIME", description: "only entries before this RFC 3339 time" },
    },
    examples: ["hsmctl audit tail --last 50 --operation Login", "hsmctl audit tail --key-id K -o json"],
    async run(ctx, values) {
      const last = intValue(values, "last", 20, 1, 10_000);
      const filter = {
        user: stringValue(values, "user") ?? "",
        keyId: stringValue(values, "key-id") ?? "",
        operation: stringValue(values, "operation") ?? "",
        target: stringValue(values, "target") ?? "",
        from: timeValue(values, "from"),
        to: timeValue(values, "to"),
      };
      const client = ctx.client();
      let kept: AuditEntry[] = [];
      let afterSeq = 0n;
      for (;;) {
        const page = await client.queryAuditLog({ ...filter, limit: 1000, afterSeq });
        kept = kept.concat(page.entries);
        if (kept.length > last) kept = kept.slice(kept.length - last);
        if (page.nextAfterSeq === 0n || page.nextAfterSeq === afterSeq) break;
        afterSeq = page.nextAfterSeq;
      }
      ctx.emit({ entries: kept.map(auditView) }, auditText(kept));
    },
  },
  {
    words: ["audit", "verify"],
    summary: "check the audit log's hash chain on the daemon, or a log file offline (--file); exit 1 when broken",
    details: `Without --file, the daemon checks its own log (VerifyAuditLog; crypto officers). With --file, hsmctl
checks a copy of an audit log here, without a daemon or a session, and says where the chain breaks.
Save the entry count and last hash elsewhere and pass them back (--min-entries, --expect-last-hash)
to also catch a log whose tail was cut.`,
    options: {
      file: { type: "string", arg: "FILE", description: "an audit log file to check offline" },
      "expect-last-hash": { type: "string", arg: "HASH", description: "with --file: a last hash saved earlier, which the log must still contain" },
      "min-entries": { type: "string", arg: "N", description: "with --file: the log must hold at least N entries" },
    },
    needsSession: false,
    async run(ctx, values) {
      const file = stringValue(values, "file");
      if (file === undefined) {
        if (values["expect-last-hash"] !== undefined || values["min-entries"] !== undefined) {
          throw new UsageError("--expect-last-hash and --min-entries go with --file");
        }
        const r = await ctx.client().verifyAuditLog();
        const view = { ok: r.ok, entries: num(r.entries), lastHash: r.lastHash, problems: r.problems };
        if (ctx.output === "json") ctx.emit(view, "");
        if (!r.ok) throw new CliFailure(undefined, `audit log chain BROKEN on the daemon: ${r.problems.join("; ")}`);
        ctx.emit(view, `ok: ${num(r.entries)} entries, last hash ${r.lastHash}`);
        return;
      }
      const options: AuditVerifyOptions = {};
      const expect = stringValue(values, "expect-last-hash");
      if (expect !== undefined) {
        if (!/^[0-9a-fA-F]{64}$/.test(expect)) throw new UsageError("--expect-last-hash: must be 64 hex digits");
        options.expectLastHash = expect.toLowerCase();
      }
      if (values["min-entries"] !== undefined) options.minEntries = intValue(values, "min-entries", 0, 0, Number.MAX_SAFE_INTEGER);
      let result;
      try {
        result = await verifyAuditLog(file, options);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        throw new UsageError(`--file: cannot verify ${file}: ${typeof code === "string" && code.startsWith("E") ? ioReason(err) : (err as Error).message}`);
      }
      for (const w of result.warnings) ctx.note(`warning: ${w}`);
      if (result.ok) {
        ctx.emit({ ok: true, file, entries: result.entries, lastHash: result.lastHash }, `ok: ${result.entries} entries, last hash ${result.lastHash}`);
        return;
      }
      const p = result.problem;
      if (ctx.output === "json") ctx.emit({ ok: false, file, entries: result.entries, problem: p }, "");
      const where = p.seq === undefined ? `line ${p.line}` : `line ${p.line} (seq ${p.seq})`;
      throw new CliFailure(undefined, `${file}: TAMPERED at ${where}: ${p.kind}: ${p.message}`);
    },
  },
];
