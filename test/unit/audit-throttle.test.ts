import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AuditLog, AuditThrottle, peerHost, verifyAuditLog, type AuditRecord } from "../../src/audit";

let root: string;
let log: AuditLog;

beforeEach(async () => {
  root = mkdtempSync(join(tmpdir(), "hsmd-throttle-"));
  log = await AuditLog.open(join(root, "audit.log"), { node: "n1", fsync: "never" });
});
afterEach(async () => {
  vi.useRealTimers();
  await log.close();
  rmSync(root, { recursive: true, force: true });
});

const lines = (): AuditRecord[] =>
  readFileSync(log.path, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);
const refusal = (client: string, operation = "Sign", status = "INVALID_ARGUMENT") => ({ operation, status, client, detail: "refused before decoding: bad" });

describe("AuditThrottle", () => {
  it("writes the first refusal of a window at once and the others as one count when the window ends", async () => {
    vi.useFakeTimers();
    const t = new AuditThrottle(log, { windowMs: 1000 });
    await t.record(refusal("ipv4:10.0.0.1:5000"));
    expect(lines()).toHaveLength(1);
    // 999 more from the same host (other ports: other connections) within the window: counted only.
    for (let i = 0; i < 999; i++) await t.record(refusal(`ipv4:10.0.0.1:${5001 + (i % 50)}`));
    expect(lines()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1000);
    await t.flush();
    const [first, summary] = lines();
    expect(first).toMatchObject({ operation: "Sign", status: "INVALID_ARGUMENT", client: "ipv4:10.0.0.1:5000", detail: "refused before decoding: bad" });
    expect(summary).toMatchObject({ operation: "Sign", status: "INVALID_ARGUMENT", detail: "999 more like it from 10.0.0.1 within 1000 ms, not audited one by one" });
    expect(lines()).toHaveLength(2);
    // The next window starts with an entry of its own again.
    await t.record(refusal("ipv4:10.0.0.1:6000"));
    expect(lines()).toHaveLength(3);
    expect((await verifyAuditLog(log.path)).ok).toBe(true);
  });

  it("keeps one window per host, operation and status; a lone refusal gets no summary", async () => {
    vi.useFakeTimers();
    const t = new AuditThrottle(log, { windowMs: 1000 });
    await t.record(refusal("ipv4:10.0.0.1:1"));
    await t.record(refusal("ipv4:10.0.0.2:1"));
    await t.record(refusal("ipv4:10.0.0.1:2", "BatchSign"));
    await t.record(refusal("ipv4:10.0.0.1:3", "Sign", "RESOURCE_EXHAUSTED"));
    await t.record(refusal("ipv4:10.0.0.1:4"));
    await vi.advanceTimersByTimeAsync(1000);
    await t.flush();
    const got = lines().map((l) => [l.client, l.operation, l.status, l.detail]);
    expect(got).toEqual([
      ["ipv4:10.0.0.1:1", "Sign", "INVALID_ARGUMENT", "refused before decoding: bad"],
      ["ipv4:10.0.0.2:1", "Sign", "INVALID_ARGUMENT", "refused before decoding: bad"],
      ["ipv4:10.0.0.1:2", "BatchSign", "INVALID_ARGUMENT", "refused before decoding: bad"],
      ["ipv4:10.0.0.1:3", "Sign", "RESOURCE_EXHAUSTED", "refused before decoding: bad"],
      ["ipv4:10.0.0.1:1", "Sign", "INVALID_ARGUMENT", "1 more like it from 10.0.0.1 within 1000 ms, not audited one by one"],
    ]);
  });

  it("bounds its bookkeeping: past maxWindows, new kinds share one window per operation and status", async () => {
    const t = new AuditThrottle(log, { windowMs: 60_000, maxWindows: 2 });
    for (let i = 1; i <= 10; i++) await t.record(refusal(`ipv4:10.0.1.${i}:1`));
    expect(lines()).toHaveLength(3); // two hosts of their own, then one shared window
    await t.flush();
    expect(lines().at(-1)!.detail).toBe("7 more like it from many clients within 60000 ms, not audited one by one");
  });

  it("flush writes the open counts (the daemon flushes before closing the log)", async () => {
    const t = new AuditThrottle(log, { windowMs: 60_000 });
    await t.record(refusal("[::1]:4000"));
    await t.record(refusal("[::1]:4001"));
    await t.flush();
    expect(lines().map((l) => l.detail)).toEqual(["refused before decoding: bad", "1 more like it from ::1 within 60000 ms, not audited one by one"]);
  });

  it("peerHost drops the port and the address family", () => {
    expect(peerHost("ipv4:127.0.0.1:5555")).toBe("127.0.0.1");
    expect(peerHost("127.0.0.1:5555")).toBe("127.0.0.1");
    expect(peerHost("[::1]:5555")).toBe("::1");
    expect(peerHost("ipv6:[::1]:5555")).toBe("::1");
    expect(peerHost(undefined)).toBe("unknown");
  });
});
