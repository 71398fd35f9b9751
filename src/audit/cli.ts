/** The `audit verify` command, transport-free: the caller passes argv and the output streams. */
import { HsmError } from "../errors";
import { verifyAuditLog, type AuditVerifyOptions } from "./verify";

/** Where {@link runAuditVerify} writes: `process.stdout`, or a collector in tests. */
export interface TextSink {
  /** Writes a chunk of text. */
  write(chunk: string): unknown;
}

/** Usage text of {@link runAuditVerify}. */
export const AUDIT_VERIFY_USAGE = "usage: verify FILE [--expect-last-hash HASH] [--min-entries N]\n";

/**
 * Runs `verify FILE [--expect-last-hash HASH] [--min-entries N]` (argv without the program and
 * `audit` words). Prints `ok: N entries, last hash H` and returns 0 when the chain is intact;
 * `TAMPERED at line L (seq S): kind: message` on `out` and returns 1 when not; a usage
 * or I/O error on `err` and returns 2. Warnings (a torn last line) go to `err`.
 */
export async function runAuditVerify(argv: string[], out: TextSink = process.stdout, err: TextSink = process.stderr): Promise<number> {
  const usage = (why: string): number => {
    err.write(`${why}\n${AUDIT_VERIFY_USAGE}`);
    return 2;
  };
  if (argv[0] !== "verify") return usage(argv[0] === undefined ? "missing command" : `unknown command ${JSON.stringify(argv[0])}`);
  let file: string | undefined;
  const options: AuditVerifyOptions = {};
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") && eq !== -1 ? arg.slice(0, eq) : arg;
    const inline = arg.startsWith("--") && eq !== -1 ? arg.slice(eq + 1) : undefined;
    if (name === "--expect-last-hash" || name === "--min-entries") {
      const value = inline ?? argv[++i];
      if (value === undefined || value === "") return usage(`${name} needs a value`);
      if (name === "--expect-last-hash") {
        if (!/^[0-9a-fA-F]{64}$/.test(value)) return usage("--expect-last-hash must be 64 hex digits");
        options.expectLastHash = value.toLowerCase();
      } else {
        if (!/^\d+$/.test(value)) return usage("--min-entries must be a non-negative integer");
        options.minEntries = Number(value);
      }
    } else if (arg.startsWith("-")) {
      return usage(`unknown option ${arg}`);
    } else if (file === undefined) {
      file = arg;
    } else {
      return usage(`unexpected argument ${JSON.stringify(arg)}`);
    }
  }
  if (file === undefined) return usage("missing FILE");

  let result;
  try {
    result = await verifyAuditLog(file, options);
  } catch (e) {
    err.write(`cannot verify ${file}: ${e instanceof HsmError ? e.message : (e as Error).message}\n`);
    return 2;
  }
  for (const w of result.warnings) err.write(`warning: ${w}\n`);
  if (result.ok) {
    out.write(`ok: ${result.entries} entries, last hash ${result.lastHash}\n`);
    return 0;
  }
  const p = result.problem;
  const where = p.seq === undefined ? `line ${p.line}` : `line ${p.line} (seq ${p.seq})`;
  out.write(`TAMPERED at ${where}: ${p.kind}: ${p.message}\n`);
  return 1;
}
