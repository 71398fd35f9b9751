import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Code, HsmError } from "../../src/errors";
import {
  AuditLog,
  GENESIS_HASH,
  queryAuditLog,
  runAuditVerify,
  verifyAuditLog,
  type AuditEntry,
  type AuditRecord,
} from "../../src/audit";

let root: string;
let file: string;
const opened: AuditLog[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), "hsmd-audit-"));
  file = join(root, "audit", "audit.log");
});
afterEach(async () => {
  for (const l of opened.splice(0)) await l.close();
  rmSync(root, { recursive: true, force: true });
});

async function openLog(opts: { fsync?: "always" | "never"; now?: () => Date } = {}): Promise<AuditLog> {
  const log = await AuditLog.open(file, { node: "node-a", fsync: opts.fsync ?? "never", now: opts.now });
  opened.push(log);
  return log;
}

const T0 = Date.parse("2024-05-01T10:00:00.000Z");
const at = (minutes: number) => new Date(T0 + minutes * 60_000).toISOString();
const USERS = ["alice", "bob", "carol"];
/** Entry i (1-based): time T0+i min, users cycle, keys k1/k2, operations alternate. */
const entry = (i: number): AuditEntry => ({
  time: at(i),
  user: USERS[(i - 1) % 3],
  role: "CU",
  operation: i % 2 === 0 ? "hsmd.v1.Keys/Sign" : "hsmd.v1.Keys/CreateKey",
  keyId: `k${(i % 2) + 1}`,
  status: "OK",
  requestId: `req-${i}`,
  client: "127.0.0.1:5000",
});

async function writeLog(n: number): Promise<AuditRecord[]> {
  const log = await openLog();
  const out: AuditRecord[] = [];
  for (let i = 1; i <= n; i++) out.push(await log.append(entry(i)));
  await log.close();
  return out;
}
const fileLines = () => readFileSync(file, "utf8").split("\n").slice(0, -1);
const writeLines = (lines: string[]) => writeFileSync(file, lines.map((l) => l + "\n").join(""));
/** Independent re-implementation of the documented hash: sha256 over {seq, prev, fields in fixed order}. */
function expectedHash(r: Record<string, unknown>): string {
  const order = ["seq", "prev", "time", "node", "user", "role", "operation", "keyId", "target", "status", "requestId", "client", "detail"];
  const o: Record<string, unknown> = {};
  for (const k of order) if (r[k] !== undefined) o[k] = r[k];
  return createHash("sha256").update(JSON.stringify(o)).digest("hex");
}
/** Rewrites a parsed line with a freshly computed hash (what a forger who read the code would do). */
function rehash(r: Record<string, unknown>): string {
  const { hash: _h, ...rest } = r;
  return JSON.stringify({ ...rest, hash: expectedHash(rest) });
}

describe("audit log: writing and the chain", () => {
  it("creates the directory 0700 and the file 0600, and writes a chain from the genesis hash", async () => {
    const recs = await writeLog(3);
    expect(statSync(join(root, "audit")).mode & 0o777).toBe(0o700);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const lines = fileLines().map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => l.seq)).toEqual([1, 2, 3]);
    expect(lines[0].prev).toBe(GENESIS_HASH);
    expect(lines[1].prev).toBe(lines[0].hash);
    expect(lines[2].prev).toBe(lines[1].hash);
    for (const l of lines) expect(l.hash).toBe(expectedHash(l));
    expect(Object.keys(lines[0]).slice(0, 3)).toEqual(["seq", "prev", "hash"]);
    expect(lines[0].node).toBe("node-a");
    expect(recs[2].hash).toBe(lines[2].hash);
  });

  it("sets time when absent and keeps a given node", async () => {
    const log = await openLog({ now: () => new Date(T0) });
    const r = await log.append({ operation: "Login", status: "OK", node: "node-b" });
    expect(r.time).toBe("2024-05-01T10:00:00.000Z");
    expect(r.node).toBe("node-b");
  });

  it("continues the chain across a reopen", async () => {
    const first = await writeLog(3);
    const log = await openLog({ fsync: "always" });
    expect(log.lastSeq).toBe(3);
    expect(log.lastHash).toBe(first[2].hash);
    const r4 = await log.append(entry(4), { sync: true });
    const r5 = await log.append(entry(5));
    expect(r4.seq).toBe(4);
    expect(r4.prev).toBe(first[2].hash);
    expect(r5.prev).toBe(r4.hash);
    await log.close();
    expect(await verifyAuditLog(file)).toEqual({ ok: true, entries: 5, lastHash: r5.hash, warnings: [] });
  });

  it("gives concurrent appends consecutive seq in call order and the result verifies", async () => {
    const log = await openLog();
    const recs = await Promise.all(
      Array.from({ length: 60 }, (_, i) => log.append({ operation: "Sign", status: "OK", detail: `n${i}` }, { sync: i % 7 === 0 })),
    );
    expect(recs.map((r) => r.seq)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    expect(recs.map((r) => r.detail)).toEqual(Array.from({ length: 60 }, (_, i) => `n${i}`));
    await log.close();
    const lines = fileLines().map((l) => JSON.parse(l) as AuditRecord);
    expect(lines.map((l) => l.seq)).toEqual(recs.map((r) => r.seq));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, entries: 60, lastHash: recs[59].hash });
  });

  it("refuses appends after close", async () => {
    const log = await openLog();
    await log.close();
    await expect(log.append(entry(1))).rejects.toMatchObject({ code: Code.FailedPrecondition });
  });
});

describe("audit log: only allow-listed fields, validated", () => {
  it("never writes extra fields such as password, plaintext or token", async () => {
    const log = await openLog();
    const sneaky = {
      ...entry(1),
      password: "hunter2-Secret!",
      plaintext: "ATTACK AT DAWN",
      token: "tok-6f1e0c9a",
      keyMaterial: "deadbeefcafebabe",
    };
    const r = await log.append(sneaky);
    await log.close();
    const text = readFileSync(file, "utf8");
    for (const s of ["hunter2-Secret!", "ATTACK AT DAWN", "tok-6f1e0c9a", "deadbeefcafebabe", "password", "plaintext", "token", "keyMaterial"]) {
      expect(text).not.toContain(s);
    }
    expect(Object.keys(r).sort()).toEqual(["client", "hash", "keyId", "node", "operation", "prev", "requestId", "role", "seq", "status", "time", "user"]);
    expect(text).toContain("req-1");
  });

  it("rejects bad values with INVALID_ARGUMENT and writes nothing for them", async () => {
    const log = await openLog();
    await log.append(entry(1));
    const bad: unknown[] = [
      { operation: "Sign", status: "OK", detail: "x".repeat(201) },
      { operation: "Sign", status: "BOGUS" },
      { operation: "Sign", status: "OK", user: "eve\n{\"seq\":9}" },
      { operation: "Sign", status: "OK", keyId: 42 },
      { operation: "Sign", status: "OK", time: "yesterday" },
      { status: "OK" },
      { operation: "Sign" },
      { operation: "Sign", status: "OK", role: "C O" },
    ];
    for (const b of bad) {
      const p = log.append(b as AuditEntry);
      await expect(p).rejects.toBeInstanceOf(HsmError);
      await expect(p).rejects.toMatchObject({ code: Code.InvalidArgument });
    }
    const ok = await log.append({ operation: "Sign", status: "OK", detail: "quorum approval 2/3", target: "" });
    expect(ok.seq).toBe(2);
    expect(ok.target).toBeUndefined();
    await log.close();
    expect(fileLines()).toHaveLength(2);
    expect(readFileSync(file, "utf8")).not.toContain("BOGUS");
  });

  it("accepts a 200-character detail", async () => {
    const log = await openLog();
    const r = await log.append({ operation: "Sign", status: "OK", detail: "y".repeat(200) });
    expect(r.detail).toHaveLength(200);
  });
});

describe("verifyAuditLog: tampering is found at the right line", () => {
  it("passes an intact log and an empty one", async () => {
    const recs = await writeLog(5);
    expect(await verifyAuditLog(file)).toEqual({ ok: true, entries: 5, lastHash: recs[4].hash, warnings: [] });
    writeFileSync(file, "");
    expect(await verifyAuditLog(file)).toEqual({ ok: true, entries: 0, lastHash: GENESIS_HASH, warnings: [] });
  });

  it("edited field value of line 3", async () => {
    await writeLog(5);
    const lines = fileLines();
    expect(lines[2]).toContain('"user":"carol"');
    lines[2] = lines[2].replace('"user":"carol"', '"user":"alice"');
    writeLines(lines);
    const r = await verifyAuditLog(file);
    expect(r).toMatchObject({ ok: false, entries: 2, problem: { line: 3, seq: 3, kind: "edited" } });
  });

  it("a field added to line 3", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines[2] = lines[2].replace(/}$/, ',"password":"x"}');
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 3, seq: 3, kind: "edited" } });
  });

  it("edited and re-hashed line 3 breaks the chain at line 4", async () => {
    await writeLog(5);
    const lines = fileLines();
    const l3 = JSON.parse(lines[2]) as Record<string, unknown>;
    lines[2] = rehash({ ...l3, status: "PERMISSION_DENIED" });
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, entries: 3, problem: { line: 4, seq: 4, kind: "broken-chain" } });
  });

  it("deleted line 3 is reported at the line after the gap", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines.splice(2, 1);
    writeLines(lines);
    const r = await verifyAuditLog(file);
    expect(r).toMatchObject({ ok: false, entries: 2, problem: { line: 3, seq: 4, kind: "deleted" } });
    if (!r.ok) expect(r.problem.message).toContain("seq 3");
  });

  it("deleted first line", async () => {
    await writeLog(3);
    writeLines(fileLines().slice(1));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, entries: 0, problem: { line: 1, seq: 2, kind: "deleted" } });
  });

  it("a copy of line 2 inserted after line 3", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines.splice(3, 0, lines[1]);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, entries: 3, problem: { line: 4, seq: 2, kind: "inserted" } });
  });

  it("a copy of line 3 inserted right after it", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines.splice(3, 0, lines[2]);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 4, seq: 3, kind: "inserted" } });
  });

  it("a copy of a later line inserted early", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines.splice(2, 0, lines[3]); // seq 1 2 4 3 4 5
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 3, seq: 4, kind: "inserted" } });
  });

  it("a forged line chained onto line 2, inserted before the genuine seq 3", async () => {
    const recs = await writeLog(5);
    const lines = fileLines();
    const forged = rehash({ seq: 3, prev: recs[1].hash, time: at(3), node: "node-a", user: "mallory", operation: "Sign", status: "OK" });
    lines.splice(2, 0, forged);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 3, seq: 3, kind: "inserted" } });
  });

  it("a forged line with a made-up prev inserted after line 2", async () => {
    await writeLog(5);
    const lines = fileLines();
    const forged = rehash({ seq: 3, prev: "a".repeat(64), time: at(3), node: "node-a", operation: "Sign", status: "OK" });
    lines.splice(2, 0, forged);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, entries: 2, problem: { line: 3, seq: 3, kind: "inserted" } });
  });

  it("lines 2 and 3 swapped", async () => {
    await writeLog(5);
    const lines = fileLines();
    [lines[1], lines[2]] = [lines[2], lines[1]];
    writeLines(lines);
    const r = await verifyAuditLog(file);
    expect(r).toMatchObject({ ok: false, entries: 1, problem: { line: 2, seq: 3, kind: "reordered" } });
    if (!r.ok) expect(r.problem.message).toContain("line 3");
  });

  it("a line moved to the end", async () => {
    await writeLog(5);
    const lines = fileLines();
    const [l2] = lines.splice(1, 1);
    lines.push(l2);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 2, seq: 3, kind: "reordered" } });
  });

  it("a garbled line 3", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines[2] = lines[2].slice(0, 40);
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, entries: 2, problem: { line: 3, kind: "malformed" } });
    lines[2] = '{"seq":"three"}';
    writeLines(lines);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: false, problem: { line: 3, kind: "malformed" } });
  });

  it("truncation of the tail is invisible without an anchor and found with one", async () => {
    const recs = await writeLog(5);
    writeLines(fileLines().slice(0, 3));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, entries: 3, lastHash: recs[2].hash });
    expect(await verifyAuditLog(file, { expectLastHash: recs[4].hash })).toMatchObject({
      ok: false,
      entries: 3,
      problem: { line: 4, kind: "truncated" },
    });
    expect(await verifyAuditLog(file, { minEntries: 5 })).toMatchObject({ ok: false, problem: { line: 4, kind: "truncated" } });
    // An anchor saved before later appends still matches: the log may grow.
    expect(await verifyAuditLog(file, { expectLastHash: recs[1].hash, minEntries: 3 })).toMatchObject({ ok: true, entries: 3 });
    expect(await verifyAuditLog(file, { expectLastHash: recs[2].hash.toUpperCase() })).toMatchObject({ ok: true });
  });

  it("a missing file is NOT_FOUND", async () => {
    await expect(verifyAuditLog(join(root, "nope.log"))).rejects.toMatchObject({ code: Code.NotFound });
  });
});

describe("audit log: a torn last line", () => {
  it("is not counted by verify, is removed at reopen with a warning, and the chain continues", async () => {
    const recs = await writeLog(3);
    const torn = '{"seq":4,"prev":"' + recs[2].hash.slice(0, 20);
    appendFileSync(file, torn);
    const v = await verifyAuditLog(file);
    expect(v).toMatchObject({ ok: true, entries: 3, lastHash: recs[2].hash });
    expect(v.warnings).toHaveLength(1);

    const warned: string[] = [];
    const log = await AuditLog.open(file, { node: "node-a", fsync: "always", warn: (m) => warned.push(m) });
    opened.push(log);
    expect(log.warnings).toHaveLength(1);
    expect(warned).toEqual(log.warnings);
    expect(log.lastSeq).toBe(3);
    expect(readFileSync(file, "utf8")).not.toContain(torn);
    const side = readdirSync(join(root, "audit")).filter((f) => f.startsWith("audit.log.torn-"));
    expect(side).toHaveLength(1);
    expect(readFileSync(join(root, "audit", side[0]), "utf8")).toBe(torn);

    const r4 = await log.append(entry(4));
    expect(r4.seq).toBe(4);
    expect(r4.prev).toBe(recs[2].hash);
    await log.close();
    expect(await verifyAuditLog(file)).toEqual({ ok: true, entries: 4, lastHash: r4.hash, warnings: [] });
  });

  it("a torn first line leaves an empty log that starts from genesis", async () => {
    const dir = join(root, "audit");
    await openLog().then((l) => l.close());
    appendFileSync(file, '{"seq":1,"pr');
    expect(existsSync(dir)).toBe(true);
    const log = await openLog();
    expect(log.warnings).toHaveLength(1);
    const r = await log.append(entry(1));
    expect(r).toMatchObject({ seq: 1, prev: GENESIS_HASH });
  });

  it("a terminated non-JSON last line (zeros) is removed too", async () => {
    const recs = await writeLog(2);
    appendFileSync(file, "\0\0\0\0\n");
    const log = await openLog();
    expect(log.warnings).toHaveLength(1);
    expect(log.lastHash).toBe(recs[1].hash);
    expect(fileLines()).toHaveLength(2);
  });

  it("refuses to chain onto an edited last entry", async () => {
    await writeLog(3);
    const lines = fileLines();
    lines[2] = lines[2].replace('"status":"OK"', '"status":"INTERNAL"');
    writeLines(lines);
    await expect(AuditLog.open(file, { node: "node-a", fsync: "never" })).rejects.toMatchObject({ code: Code.FailedPrecondition });
    expect(fileLines()).toHaveLength(3);
  });
});

describe("queryAuditLog", () => {
  it("filters by time range, user, keyId and operation", async () => {
    await writeLog(12);
    const seqs = async (q: Parameters<typeof queryAuditLog>[1]) => (await queryAuditLog(file, q)).entries.map((e) => e.seq);
    expect(await seqs({})).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(await seqs({ from: at(3), to: at(6) })).toEqual([3, 4, 5]);
    expect(await seqs({ from: "2024-05-01T12:09:00+02:00" })).toEqual([9, 10, 11, 12]);
    expect(await seqs({ user: "bob" })).toEqual([2, 5, 8, 11]);
    expect(await seqs({ keyId: "k1" })).toEqual([2, 4, 6, 8, 10, 12]);
    expect(await seqs({ operation: "hsmd.v1.Keys/CreateKey" })).toEqual([1, 3, 5, 7, 9, 11]);
    expect(await seqs({ user: "alice", keyId: "k2", to: at(8) })).toEqual([1, 7]);
    expect(await seqs({ user: "nobody" })).toEqual([]);
  });

  it("pages with afterSeq, newest last", async () => {
    await writeLog(7);
    const p1 = await queryAuditLog(file, { limit: 3 });
    expect(p1.entries.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(p1.nextAfterSeq).toBe(3);
    const p2 = await queryAuditLog(file, { limit: 3, afterSeq: p1.nextAfterSeq });
    expect(p2.entries.map((e) => e.seq)).toEqual([4, 5, 6]);
    const p3 = await queryAuditLog(file, { limit: 3, afterSeq: p2.nextAfterSeq });
    expect(p3.entries.map((e) => e.seq)).toEqual([7]);
    expect(p3.nextAfterSeq).toBeUndefined();
    // Exactly a page left: no next page is announced.
    const exact = await queryAuditLog(file, { limit: 1, afterSeq: 6 });
    expect(exact).toEqual({ entries: [expect.objectContaining({ seq: 7 })], skipped: 0 });
    // Paging through a filter.
    const b1 = await queryAuditLog(file, { user: "alice", limit: 2 });
    expect(b1.entries.map((e) => e.seq)).toEqual([1, 4]);
    const b2 = await queryAuditLog(file, { user: "alice", limit: 2, afterSeq: b1.nextAfterSeq });
    expect(b2.entries.map((e) => e.seq)).toEqual([7]);
    expect(b2.nextAfterSeq).toBeUndefined();
  });

  it("defaults to 100 and caps the limit at 1000", async () => {
    const log = await openLog();
    await Promise.all(Array.from({ length: 1005 }, () => log.append({ operation: "Sign", status: "OK" })));
    await log.close();
    const d = await queryAuditLog(file);
    expect(d.entries).toHaveLength(100);
    expect(d.nextAfterSeq).toBe(100);
    const big = await queryAuditLog(file, { limit: 5000 });
    expect(big.entries).toHaveLength(1000);
    expect(big.nextAfterSeq).toBe(1000);
  });

  it("skips lines that fail their hash, rejects bad arguments, and reads a missing file as empty", async () => {
    await writeLog(3);
    const lines = fileLines();
    lines[1] = lines[1].replace('"user":"bob"', '"user":"alice"');
    writeLines(lines);
    const r = await queryAuditLog(file, { user: "alice" });
    expect(r.entries.map((e) => e.seq)).toEqual([1]);
    expect(r.skipped).toBe(1);
    await expect(queryAuditLog(file, { from: "last week" })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(queryAuditLog(file, { limit: 0 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(queryAuditLog(file, { afterSeq: -1 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    expect(await queryAuditLog(join(root, "none.log"))).toEqual({ entries: [], skipped: 0 });
  });
});

describe("runAuditVerify", () => {
  const sink = () => {
    const chunks: string[] = [];
    return { chunks, write: (s: string) => chunks.push(s), text: () => chunks.join("") };
  };

  it("prints ok and exits 0 for an intact log", async () => {
    const recs = await writeLog(4);
    const out = sink();
    const err = sink();
    expect(await runAuditVerify(["verify", file], out, err)).toBe(0);
    expect(out.text()).toBe(`ok: 4 entries, last hash ${recs[3].hash}\n`);
    expect(err.text()).toBe("");
    expect(await runAuditVerify(["verify", file, "--expect-last-hash", recs[3].hash], sink(), sink())).toBe(0);
    expect(await runAuditVerify(["verify", `--expect-last-hash=${recs[1].hash}`, file], sink(), sink())).toBe(0);
  });

  it("prints TAMPERED with line, seq and kind and exits 1", async () => {
    await writeLog(5);
    const lines = fileLines();
    lines.splice(2, 1);
    writeLines(lines);
    const out = sink();
    expect(await runAuditVerify(["verify", file], out, sink())).toBe(1);
    expect(out.text()).toMatch(/^TAMPERED at line 3 \(seq 4\): deleted: seq 3 is missing/);
  });

  it("reports a truncated log against --expect-last-hash and exits 1", async () => {
    const recs = await writeLog(5);
    writeLines(fileLines().slice(0, 4));
    const out = sink();
    expect(await runAuditVerify(["verify", file, "--expect-last-hash", recs[4].hash], out, sink())).toBe(1);
    expect(out.text()).toMatch(/^TAMPERED at line 5: truncated: /);
  });

  it("exits 2 on usage errors and a missing file", async () => {
    for (const argv of [[], ["check", file], ["verify"], ["verify", file, "--expect-last-hash"], ["verify", file, "--expect-last-hash", "xyz"], ["verify", file, "--bogus"]]) {
      const err = sink();
      expect(await runAuditVerify(argv, sink(), err)).toBe(2);
      expect(err.text()).toContain("usage: verify FILE");
    }
    const err = sink();
    expect(await runAuditVerify(["verify", join(root, "missing.log")], sink(), err)).toBe(2);
    expect(err.text()).toContain("does not exist");
  });
});
