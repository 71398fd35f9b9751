import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Code, HsmError } from "../../src/errors";
import { GENESIS_HASH, verifyAuditLog, type AuditEntry, type AuditRecord } from "../../src/audit";
import { at, entry, expectedHash, file, fileLines, openLog, rehash, root, T0, useAuditDir, writeLines, writeLog } from "../helpers/audit";

// The audit log: writing and the chain, the allow-listed fields, tampering found by verifyAuditLog.
// A torn last line, queries and runAuditVerify: audit-read.test.ts.
useAuditDir();

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
    const recs = await Promise.all(Array.from({ length: 60 }, (_, i) => log.append({ operation: "Sign", status: "OK", detail: `n${i}` }, { sync: i % 7 === 0 })));
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
      { operation: "Sign", status: "OK", user: 'eve\n{"seq":9}' },
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
