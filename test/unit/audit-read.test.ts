import { appendFileSync, existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Code } from "../../src/errors";
import { AuditLog, GENESIS_HASH, queryAuditLog, runAuditVerify, verifyAuditLog } from "../../src/audit";
import { at, entry, file, fileLines, openLog, opened, root, useAuditDir, writeLines, writeLog } from "../helpers/audit";

// The audit log read back: a torn last line at reopen, queryAuditLog and runAuditVerify (writing and
// tampering: audit.test.ts).
useAuditDir();

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
