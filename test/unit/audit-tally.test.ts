import { readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { AuditLog, parseTallyDetail, queryAuditLog, TALLY_OPERATION, UseTally, verifyAuditLog, type AuditRecord, type TallyUse } from "../../src/audit";
import { MAX_DETAIL_LENGTH } from "../../src/audit/entry";
import { tallyDetails } from "../../src/audit/tally-detail";
import { T0, file, fileLines, openLog, opened, root, useAuditDir } from "../helpers/audit";

useAuditDir();
afterEach(() => {
  vi.useRealTimers();
});

const use = (stream: string, keyId: string, method: string, user = "alice"): TallyUse => ({ stream, user, role: "CU", peer: "ipv4:127.0.0.1:5000", keyId, method });
const records = (): AuditRecord[] => fileLines().map((l) => JSON.parse(l) as AuditRecord);
/** The counts of every tally entry, as `stream/key → method → n`, summed over windows. */
function summed(rs: AuditRecord[]): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const r of rs.filter((x) => x.operation === TALLY_OPERATION)) {
    const d = parseTallyDetail(r.detail)!;
    expect(d).toBeDefined();
    const k = `${r.requestId}/${r.keyId ?? ""}`;
    out[k] ??= {};
    for (const [m, n] of Object.entries(d.counts)) out[k][m] = (out[k][m] ?? 0) + n;
  }
  return out;
}

describe("UseTally", () => {
  it("writes one entry per stream, key and window, with the counts per operation and the window's span", async () => {
    vi.useFakeTimers({ now: T0 });
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 1000 });
    for (let i = 0; i < 3; i++) tally.count(use("s1", "k1", "Sign"));
    tally.count(use("s1", "k1", "Verify"));
    tally.count(use("s1", "k2", "Encrypt"));
    tally.count(use("s1", "k2", "Encrypt"));
    for (let i = 0; i < 5; i++) tally.count(use("s2", "k1", "Sign", "bob"));
    expect(records()).toHaveLength(0); // nothing written per operation
    expect(tally.openWindows).toBe(3);
    await vi.advanceTimersByTimeAsync(1000);
    expect(tally.openWindows).toBe(0); // the timer closed them all
    await Promise.all([tally.endStream("s1"), tally.endStream("s2")]); // waits for their writes
    expect(records()).toHaveLength(3);
    const [a, b, c] = records();
    const span = `in ${new Date(T0).toISOString()}/${new Date(T0 + 1000).toISOString()}`;
    expect(a).toMatchObject({
      operation: "CryptoStream",
      status: "OK",
      user: "alice",
      role: "CU",
      client: "ipv4:127.0.0.1:5000",
      keyId: "k1",
      requestId: "s1",
      node: "node-a",
      detail: `Sign×3 Verify×1 ${span}`,
    });
    expect(a!.time).toBe(new Date(T0 + 1000).toISOString());
    expect(b).toMatchObject({ keyId: "k2", requestId: "s1", detail: `Encrypt×2 ${span}` });
    expect(c).toMatchObject({ keyId: "k1", requestId: "s2", user: "bob", detail: `Sign×5 ${span}` });
    expect(parseTallyDetail(a!.detail)).toEqual({ counts: { Sign: 3, Verify: 1 }, start: new Date(T0).toISOString(), end: new Date(T0 + 1000).toISOString() });

    // The next window opens with the next operation and gets an entry of its own.
    vi.setSystemTime(T0 + 2000);
    tally.count(use("s1", "k1", "Sign"));
    await vi.advanceTimersByTimeAsync(1000);
    await tally.endStream("s1");
    expect(records()).toHaveLength(4);
    expect(records()[3]).toMatchObject({ keyId: "k1", requestId: "s1", detail: `Sign×1 in ${new Date(T0 + 2000).toISOString()}/${new Date(T0 + 3000).toISOString()}` });
    expect(tally.openWindows).toBe(0);
    await tally.close();
  });

  it("keeps every operation accounted for across many windows: the sums equal what was counted, one entry per window", async () => {
    vi.useFakeTimers({ now: T0 });
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 1000 });
    const want: Record<string, Record<string, number>> = {};
    const methods = ["Sign", "Verify", "Encrypt", "Decrypt", "GenerateDataKey"];
    // 5 windows; in each, 3 streams × 2 keys, a different mix every time.
    for (let win = 0; win < 5; win++) {
      for (let i = 0; i < 600; i++) {
        const u = use(`s${i % 3}`, `k${(i >> 2) % 2}`, methods[(i * 7 + win) % methods.length]!);
        tally.count(u);
        const k = `${u.stream}/${u.keyId}`;
        want[k] ??= {};
        want[k][u.method] = (want[k][u.method] ?? 0) + 1;
      }
      await vi.advanceTimersByTimeAsync(1000);
    }
    await tally.close();
    const rs = records();
    expect(rs).toHaveLength(5 * 3 * 2);
    expect(summed(rs)).toEqual(want);
    // Never two entries for one stream and key in one window.
    const seen = new Set(rs.map((r) => `${r.requestId}/${r.keyId}/${parseTallyDetail(r.detail)!.start}`));
    expect(seen.size).toBe(rs.length);
  });

  it("endStream writes that stream's windows at once and leaves the others open", async () => {
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 60_000 });
    tally.count(use("s1", "k1", "Sign"));
    tally.count(use("s1", "k2", "Sign"));
    tally.count(use("s2", "k1", "Sign"));
    await tally.endStream("s1");
    expect(records().map((r) => [r.requestId, r.keyId])).toEqual([
      ["s1", "k1"],
      ["s1", "k2"],
    ]);
    expect(tally.openWindows).toBe(1);
    await tally.endStream("unknown"); // nothing open: resolves, writes nothing
    expect(records()).toHaveLength(2);
    await tally.close();
    expect(records().map((r) => r.requestId)).toEqual(["s1", "s1", "s2"]);
  });

  it("shares the chain with every other entry: verify passes, query finds the tally entries by operation and key", async () => {
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 60_000 });
    await log.append({ operation: TALLY_OPERATION, status: "OK", user: "alice", role: "CU", requestId: "s1", detail: "stream opened" });
    tally.count(use("s1", "k1", "Sign"));
    tally.count(use("s1", "", "GenerateRandom"));
    await log.append({ operation: "Sign", status: "PERMISSION_DENIED", user: "alice", role: "CU", keyId: "k9", requestId: "s1" });
    await tally.endStream("s1");
    await log.append({ operation: TALLY_OPERATION, status: "OK", user: "alice", role: "CU", requestId: "s1", detail: "stream ended" });
    await log.close();

    const v = await verifyAuditLog(file);
    expect(v).toMatchObject({ ok: true, entries: 5 });
    const byKey = await queryAuditLog(file, { operation: TALLY_OPERATION, keyId: "k1" });
    expect(byKey.entries).toHaveLength(1);
    expect(parseTallyDetail(byKey.entries[0]!.detail)!.counts).toEqual({ Sign: 1 });
    const all = await queryAuditLog(file, { operation: TALLY_OPERATION });
    expect(all.entries.map((e) => e.detail?.split(" in ")[0])).toEqual(["stream opened", "Sign×1", "GenerateRandom×1", "stream ended"]);
    // GenerateRandom has no key: its entry has no keyId at all.
    expect(all.entries[2]!.keyId).toBeUndefined();
  });

  it("bounds memory: at maxWindows, opening another writes the oldest window early", async () => {
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 60_000, maxWindows: 2 });
    tally.count(use("s1", "k1", "Sign"));
    tally.count(use("s1", "k1", "Sign"));
    tally.count(use("s2", "k1", "Sign"));
    expect(tally.openWindows).toBe(2);
    tally.count(use("s3", "k1", "Sign")); // third window: s1's is flushed early
    expect(tally.openWindows).toBe(2);
    await vi.waitFor(() => expect(records()).toHaveLength(1));
    expect(records()[0]).toMatchObject({ requestId: "s1" });
    expect(parseTallyDetail(records()[0]!.detail)!.counts).toEqual({ Sign: 2 });
    // 1000 streams through a cap of 2: never more than 2 open, every use still written.
    for (let i = 0; i < 1000; i++) {
      tally.count(use(`t${i}`, "k1", "Sign"));
      expect(tally.openWindows).toBeLessThanOrEqual(2);
    }
    await tally.close();
    const total = records().reduce((n, r) => n + parseTallyDetail(r.detail)!.counts.Sign!, 0);
    expect(total).toBe(3 + 1 + 1000);
    expect((await verifyAuditLog(file)).ok).toBe(true);
  });

  it("a write failure never throws: failed turns true and onError hears of it", async () => {
    const log = await openLog();
    const errors: unknown[] = [];
    const tally = new UseTally(log, { windowMs: 60_000, onError: (e) => errors.push(e) });
    tally.count(use("s1", "k1", "Sign"));
    await tally.endStream("s1");
    expect(tally.failed).toBe(false);
    // Pull the file out from under the log: its next write fails (EBADF), as a dead disk would.
    await (log as unknown as { handle: { close(): Promise<void> } }).handle.close();
    tally.count(use("s1", "k1", "Sign"));
    await expect(tally.endStream("s1")).resolves.toBeUndefined();
    expect(tally.failed).toBe(true);
    expect(log.failed).toBe(true);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: "UNAVAILABLE" });
    opened.splice(opened.indexOf(log), 1); // its handle is gone; nothing to close
  });

  it("writes what it is given within the log's field rules (control characters dropped, long values cut)", async () => {
    const log = await openLog();
    const tally = new UseTally(log, { windowMs: 60_000 });
    const long = "x".repeat(300);
    tally.count({ stream: long, user: "al\nice", role: "C U", peer: long, keyId: "k\u00001", method: "Sign Now" });
    await tally.close();
    const [r] = records();
    expect(r).toMatchObject({ requestId: "x".repeat(128), user: "alice", client: "x".repeat(256), keyId: "k1" });
    expect(r!.role).toBeUndefined();
    expect(r!.detail!.startsWith("Sign_Now×1 in ")).toBe(true);
  });

  it("property: whatever the mix of uses, stream ends and time, every use is in exactly one entry, windows stay within the cap and their length, the chain verifies", async () => {
    vi.useFakeTimers({ now: T0 });
    const command = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant("count" as const), s: fc.nat(3), k: fc.nat(2), m: fc.constantFrom("Sign", "Verify", "Encrypt") }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("end" as const), s: fc.nat(3) }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant("wait" as const), ms: fc.integer({ min: 0, max: 1500 }) }) },
    );
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(command, { maxLength: 60 }), async (commands) => {
        const path = join(root, `run-${run++}`, "audit.log");
        const log = await AuditLog.open(path, { node: "node-a", fsync: "never" });
        const tally = new UseTally(log, { windowMs: 1000, maxWindows: 3 });
        const want: Record<string, Record<string, number>> = {};
        for (const c of commands) {
          if (c.kind === "count") {
            const u = use(`s${c.s}`, `k${c.k}`, c.m);
            tally.count(u);
            want[`s${c.s}/k${c.k}`] ??= {};
            want[`s${c.s}/k${c.k}`]![c.m] = (want[`s${c.s}/k${c.k}`]![c.m] ?? 0) + 1;
          } else if (c.kind === "end") await tally.endStream(`s${c.s}`);
          else await vi.advanceTimersByTimeAsync(c.ms);
          expect(tally.openWindows).toBeLessThanOrEqual(3);
        }
        await tally.close();
        await log.close();
        const rs = readFileSync(path, "utf8")
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l) as AuditRecord);
        expect(summed(rs)).toEqual(want);
        for (const r of rs) {
          const d = parseTallyDetail(r.detail)!;
          expect(Date.parse(d.end) - Date.parse(d.start)).toBeLessThanOrEqual(1000);
        }
        expect(await verifyAuditLog(path)).toMatchObject({ ok: true, entries: rs.length });
      }),
      { numRuns: 40 },
    );
  });

  it("splits counts that cannot fit one detail over several entries of the same span, none cut", () => {
    const counts = new Map(Array.from({ length: 12 }, (_, i) => [`GenerateDataKeyWithoutPlaintext${i}`, 1_000_000 + i] as const));
    const details = tallyDetails(counts, T0, T0 + 1000);
    expect(details.length).toBeGreaterThan(1);
    const back: Record<string, number> = {};
    for (const d of details) {
      expect(d.length).toBeLessThanOrEqual(MAX_DETAIL_LENGTH);
      Object.assign(back, parseTallyDetail(d)!.counts);
    }
    expect(back).toEqual(Object.fromEntries(counts));
    expect(parseTallyDetail("batch of 3")).toBeUndefined();
  });
});
