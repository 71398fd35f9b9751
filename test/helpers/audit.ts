/**
 * Shared fixtures of the audit-log unit tests (audit.test.ts, audit-read.test.ts): a fresh log file
 * per test, logs opened through openLog closed after it, and an independent re-implementation of the
 * documented hash chain to forge and check lines with.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach } from "vitest";
import { AuditLog, type AuditEntry, type AuditRecord } from "../../src/audit";

/** This test's own directory and the log file in it (fresh for each test, see useAuditDir). */
export let root: string;
export let file: string;
export const opened: AuditLog[] = [];

/** Gives every test of the calling file a fresh `root` and `file`; closes what openLog opened and removes `root` after it. */
export function useAuditDir(): void {
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "hsmd-audit-"));
    file = join(root, "audit", "audit.log");
  });
  afterEach(async () => {
    for (const l of opened.splice(0)) await l.close();
    rmSync(root, { recursive: true, force: true });
  });
}

/** Opens the test's log (closed after the test). */
export async function openLog(opts: { fsync?: "always" | "never"; now?: () => Date } = {}): Promise<AuditLog> {
  const log = await AuditLog.open(file, { node: "node-a", fsync: opts.fsync ?? "never", now: opts.now });
  opened.push(log);
  return log;
}

/** The time of entry 0; entry i is i minutes later. */
export const T0 = Date.parse("2024-05-01T10:00:00.000Z");
export const at = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString();
export const USERS = ["alice", "bob", "carol"];
/** Entry i (1-based): time T0+i min, users cycle, keys k1/k2, operations alternate. */
export const entry = (i: number): AuditEntry => ({
  time: at(i),
  user: USERS[(i - 1) % 3],
  role: "CU",
  operation: i % 2 === 0 ? "hsmd.v1.Keys/Sign" : "hsmd.v1.Keys/CreateKey",
  keyId: `k${(i % 2) + 1}`,
  status: "OK",
  requestId: `req-${i}`,
  client: "127.0.0.1:5000",
});

/** Writes entries 1..n to a fresh log and closes it; returns the records. */
export async function writeLog(n: number): Promise<AuditRecord[]> {
  const log = await openLog();
  const out: AuditRecord[] = [];
  for (let i = 1; i <= n; i++) out.push(await log.append(entry(i)));
  await log.close();
  return out;
}
/** The log file's lines, and a writer of lines back to it. */
export const fileLines = () => readFileSync(file, "utf8").split("\n").slice(0, -1);
export const writeLines = (lines: string[]) => writeFileSync(file, lines.map((l) => l + "\n").join(""));
/** Independent re-implementation of the documented hash: sha256 over {seq, prev, fields in fixed order}. */
export function expectedHash(r: Record<string, unknown>): string {
  const order = ["seq", "prev", "time", "node", "user", "role", "operation", "keyId", "target", "status", "requestId", "client", "detail"];
  const o: Record<string, unknown> = {};
  for (const k of order) if (r[k] !== undefined) o[k] = r[k];
  return createHash("sha256").update(JSON.stringify(o)).digest("hex");
}
/** Rewrites a parsed line with a freshly computed hash (what a forger who read the code would do). */
export function rehash(r: Record<string, unknown>): string {
  const { hash: _h, ...rest } = r;
  return JSON.stringify({ ...rest, hash: expectedHash(rest) });
}
