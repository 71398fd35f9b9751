/**
 * The "audit log" part of the main-daemon suite of auth-flows.test.ts, which runs it last: it reads
 * the audit log of everything that happened on the main daemon before it (first login, password rules,
 * lockout across a restart, token revocation), so it runs on that daemon and not on one of its own.
 */
import { spawnSync } from "node:child_process";
import { createPublicKey, verify as verifySignature } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashEntry, verifyAuditLog, type AuditRecord, type StoredAuditEntry } from "../../src/audit";
import { HsmClient, KeySpec, type AuditEntry } from "../../src/sdk";
import { MAIN_JS } from "./daemon-process";
import type { TestDaemon } from "./daemon";
import { OFFICER_PASSWORD, USER_PASSWORD } from "./users";
import {
  AFTER_RESET_PASSWORD,
  CHANGED_PASSWORD,
  ECDSA,
  OFFICER2_PASSWORD,
  PASSWORD_64,
  PASSWORD_65,
  PASSWORD_7,
  PASSWORD_8,
  PLAINTEXT,
  RESET_PASSWORD,
  WRONG_PASSWORD,
  WRONG_PASSWORD_2,
  WRONG_PASSWORD_3,
  built,
  cuClient,
  expectError,
  newClient,
  officer,
  rawLogin,
  tokensSeen,
} from "./auth-flows";

/** Registers the "audit log" describe; `main` gives the main daemon (as it is after its restart) and its first officer's one-time password. */
export function describeMainAuditLog(main: () => { td: TestDaemon; otp: string }): void {
  describe("audit log", () => {
    let td: TestDaemon;
    let otp: string;
    let cu: HsmClient;
    let keyId: string;
    let auditFile: string;
    let work: string;

    beforeAll(async () => {
      ({ td, otp } = main());
      work = mkdtempSync(join(tmpdir(), "hsmd-audit-copies-"));
      auditFile = td.daemon.config.audit.file;
      expect(auditFile).toBe(join(td.dataDir, "audit", "audit.log"));

      // Allowed and denied calls with known secrets.
      cu = await cuClient(td, "audit-cu");
      const other = await cuClient(td, "audit-other");
      const key = await cu.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "audit-key" });
      keyId = key.id;
      const { signature } = await cu.sign({ keyId, algorithm: ECDSA, message: PLAINTEXT }, { metadata: { "x-request-id": "audit-sign-1" } });
      const { pem } = await cu.getPublicKey({ keyId });
      expect(verifySignature("sha256", PLAINTEXT, createPublicKey(pem), signature)).toBe(true);
      await expectError(other.sign({ keyId, algorithm: ECDSA, message: PLAINTEXT }), "NOT_FOUND", `key ${keyId} not found`);
      await expectError(cu.listUsers(), "PERMISSION_DENIED");
      await expectError(newClient(td).login("audit-cu", WRONG_PASSWORD), "UNAUTHENTICATED", "invalid username or password");
      await expectError(newClient(td).generateRandom({ length: 4 }), "UNAUTHENTICATED");
      await rawLogin(td, "audit-cu", USER_PASSWORD);
    });
    afterAll(() => {
      rmSync(work, { recursive: true, force: true });
    });

    it("a CU may neither query nor verify the audit log (PERMISSION_DENIED)", async () => {
      await expectError(cu.queryAuditLog(), "PERMISSION_DENIED", "QueryAuditLog is for crypto officer", "audit-cu is a crypto user");
      await expectError(cu.verifyAuditLog(), "PERMISSION_DENIED", "VerifyAuditLog is for crypto officer");
    });

    it("QueryAuditLog as a CO: entries carry operation, user, role, status, keyId, requestId, client; filter by user", async () => {
      const co = await officer(td);
      const { entries } = await co.queryAuditLog({ user: "audit-cu", limit: 1000 });
      expect(entries.length).toBeGreaterThan(0);
      for (const e of entries) expect(e.user).toBe("audit-cu");
      for (const e of entries) {
        expect(e.role).toBe("CU");
        expect(e.requestId).not.toBe("");
        expect(e.client).toMatch(/127\.0\.0\.1/);
        expect(e.node).toBe("test-node");
        expect(e.hash).toMatch(/^[0-9a-f]{64}$/);
        expect(e.time).toMatch(/^\d{4}-\d{2}-\d{2}T/);
      }
      const find = (pred: (e: AuditEntry) => boolean, what: string) => {
        const e = entries.find(pred);
        expect(e, what).toBeDefined();
        return e!;
      };
      find((e) => e.operation === "Login" && e.status === "OK", "a successful login");
      find((e) => e.operation === "GenerateKey" && e.status === "OK" && e.keyId === keyId, "the key creation with its id");
      const sign = find((e) => e.operation === "Sign" && e.status === "OK", "the sign");
      expect(sign).toMatchObject({ keyId, requestId: "audit-sign-1" });
      find((e) => e.operation === "ListUsers" && e.status === "PERMISSION_DENIED", "a denied user-management call");
      find((e) => e.operation === "QueryAuditLog" && e.status === "PERMISSION_DENIED", "the denied audit query");
      // Requests without an x-request-id get a generated one.
      expect(find((e) => e.operation === "GenerateKey", "GenerateKey").requestId).toMatch(/^[0-9a-f-]{36}$/);

      // Entries of the others: no audit-cu entries in a query for admin.
      const admin = await co.queryAuditLog({ user: "admin", limit: 1000 });
      expect(admin.entries.length).toBeGreaterThan(0);
      for (const e of admin.entries) expect(e).toMatchObject({ user: "admin", role: "CO" });
      expect(admin.entries.some((e) => e.operation === "CreateUser" && e.target === "audit-cu" && e.status === "OK")).toBe(true);
    });

    it("denied and unauthenticated calls are recorded too: a failed login names its target, not a user", async () => {
      const co = await officer(td);
      const logins = (await co.queryAuditLog({ operation: "Login", limit: 1000 })).entries;
      const failed = logins.find((e) => e.target === "audit-cu" && e.status === "UNAUTHENTICATED");
      expect(failed, "the failed login of audit-cu").toBeDefined();
      expect(failed!.user).toBe("");
      expect(logins.some((e) => e.target === "lock-me" && e.status === "PERMISSION_DENIED" && e.user === "")).toBe(true);
      const noSession = (await co.queryAuditLog({ operation: "GenerateRandom", limit: 1000 })).entries.filter((e) => e.status === "UNAUTHENTICATED");
      expect(noSession.length).toBeGreaterThan(0);
      expect(noSession.some((e) => e.user === "")).toBe(true);
    });

    it("filter by keyId: every entry about the key, allowed and denied, from its owner and others", async () => {
      const co = await officer(td);
      const { entries } = await co.queryAuditLog({ keyId, limit: 1000 });
      for (const e of entries) expect(e.keyId).toBe(keyId);
      expect(entries.map((e) => `${e.operation}:${e.user}:${e.status}`)).toEqual(
        expect.arrayContaining(["GenerateKey:audit-cu:OK", "Sign:audit-cu:OK", "GetPublicKey:audit-cu:OK", "Sign:audit-other:NOT_FOUND"]),
      );
      // Filters combine (AND) and page.
      const page1 = await co.queryAuditLog({ keyId, user: "audit-cu", limit: 2 });
      expect(page1.entries).toHaveLength(2);
      expect(page1.nextAfterSeq).toBe(page1.entries[1]!.seq);
      const page2 = await co.queryAuditLog({ keyId, user: "audit-cu", limit: 2, afterSeq: page1.nextAfterSeq });
      expect(page2.entries[0]!.seq).toBeGreaterThan(page1.entries[1]!.seq);
      for (const e of [...page1.entries, ...page2.entries]) expect(e).toMatchObject({ keyId, user: "audit-cu" });
      await expectError(co.queryAuditLog({ limit: 1001 }), "INVALID_ARGUMENT", "at most 1000");
      await expectError(co.queryAuditLog({ from: "yesterday" }), "INVALID_ARGUMENT", "ISO 8601");
    });

    it("the audit file holds no password, session token or plaintext", () => {
      const text = readFileSync(auditFile, "utf8");
      expect(text.length).toBeGreaterThan(0);
      const secrets: Record<string, string> = {
        otp,
        OFFICER_PASSWORD,
        USER_PASSWORD,
        OFFICER2_PASSWORD,
        CHANGED_PASSWORD,
        RESET_PASSWORD,
        AFTER_RESET_PASSWORD,
        WRONG_PASSWORD,
        WRONG_PASSWORD_2,
        WRONG_PASSWORD_3,
        PASSWORD_8,
        PASSWORD_64,
        PASSWORD_7,
        PASSWORD_65,
        "plaintext utf8": PLAINTEXT.toString("utf8"),
        "plaintext base64": PLAINTEXT.toString("base64"),
        "plaintext base64url": PLAINTEXT.toString("base64url"),
        "plaintext hex": PLAINTEXT.toString("hex"),
      };
      expect(tokensSeen.size).toBeGreaterThan(5);
      for (const [i, t] of [...tokensSeen].entries()) secrets[`token #${i}`] = t;
      const found = Object.entries(secrets)
        .filter(([, v]) => text.includes(v))
        .map(([k]) => k);
      expect(found).toEqual([]);
      // And every line is one of the allow-listed fields only.
      for (const line of text.trimEnd().split("\n")) {
        const keys = Object.keys(JSON.parse(line) as object);
        expect(keys.every((k) => ["seq", "prev", "hash", "time", "node", "user", "role", "operation", "keyId", "target", "status", "requestId", "client", "detail"].includes(k))).toBe(true);
      }
    });

    it("VerifyAuditLog over gRPC: ok, across the daemon restart; the offline verify agrees", async () => {
      const co = await officer(td);
      const v = await co.verifyAuditLog();
      expect(v.problems).toEqual([]);
      expect(v.ok).toBe(true);
      expect(v.entries).toBeGreaterThan(50n);
      expect(v.lastHash).toMatch(/^[0-9a-f]{64}$/);
      // The file (with the VerifyAuditLog entry appended since) still contains that state.
      const offline = await verifyAuditLog(auditFile, { expectLastHash: v.lastHash, minEntries: Number(v.entries) });
      expect(offline.ok).toBe(true);
      // One unbroken chain over every line, across the daemon restart earlier in this file.
      const lines = readFileSync(auditFile, "utf8").trimEnd().split("\n");
      expect(offline.ok && offline.entries).toBe(lines.length);
    });

    describe("tampering with a copy of the log is found, at the right line", () => {
      let lines: string[];
      const K = 5; // 1-based line tampered with
      let n = 0;

      /** Writes `content` lines to a fresh copy and verifies it. */
      async function verifyCopy(name: string, content: string[]) {
        const path = join(work, name);
        writeFileSync(path, content.map((l) => `${l}\n`).join(""));
        return verifyAuditLog(path);
      }

      beforeAll(() => {
        const copy = join(work, "pristine.log");
        copyFileSync(auditFile, copy);
        lines = readFileSync(copy, "utf8").split("\n");
        expect(lines.pop()).toBe(""); // ends with a newline
        n = lines.length;
        expect(n).toBeGreaterThan(20);
      });

      it("the untouched copy verifies", async () => {
        const r = await verifyCopy("same.log", lines);
        expect(r).toMatchObject({ ok: true, entries: n });
      });

      it("a field edited in place: edited, at that line", async () => {
        const rec = JSON.parse(lines[K - 1]!) as AuditRecord;
        const edited = { ...rec, status: rec.status === "OK" ? "PERMISSION_DENIED" : "OK" };
        const copy = [...lines];
        copy[K - 1] = JSON.stringify(edited);
        const r = await verifyCopy("edited.log", copy);
        expect(r.ok).toBe(false);
        expect(!r.ok && r.problem).toMatchObject({ kind: "edited", line: K, seq: K });
      });

      it("a line edited and re-hashed: the next line's chain breaks (broken-chain, at the next line)", async () => {
        const rec = JSON.parse(lines[K - 1]!) as AuditRecord;
        const { seq, prev, hash: _old, ...entry } = rec;
        void _old;
        const forged = { ...entry, user: "someone-else" } as StoredAuditEntry;
        const copy = [...lines];
        copy[K - 1] = JSON.stringify({ seq, prev, hash: hashEntry(seq, prev, forged), ...forged });
        const r = await verifyCopy("rehashed.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "broken-chain", line: K + 1, seq: K + 1 });
      });

      it("a line deleted: deleted, at the line after the gap", async () => {
        const copy = lines.filter((_, i) => i !== K - 1);
        const r = await verifyCopy("deleted.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "deleted", line: K, seq: K + 1 });
        expect(!r.ok && r.problem.message).toContain(`seq ${K} is missing`);
      });

      it("two lines swapped: reordered, at the first line out of place", async () => {
        const copy = [...lines];
        [copy[K - 1], copy[K]] = [copy[K]!, copy[K - 1]!];
        const r = await verifyCopy("swapped.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "reordered", line: K, seq: K + 1 });
      });

      it("a copy of an earlier line inserted: inserted, at the copy", async () => {
        const copy = [...lines];
        copy.splice(K - 1, 0, lines[1]!); // line 2 copied before line K
        const r = await verifyCopy("inserted-earlier.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K, seq: 2 });
      });

      it("a copy of a later line inserted: inserted, at the copy", async () => {
        const copy = [...lines];
        copy.splice(K - 1, 0, lines[K + 3]!); // line K+4 copied before line K
        const r = await verifyCopy("inserted-later.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K, seq: K + 4 });
      });

      it("a line duplicated in place: inserted, at the duplicate", async () => {
        const copy = [...lines];
        copy.splice(K, 0, lines[K - 1]!);
        const r = await verifyCopy("duplicated.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "inserted", line: K + 1, seq: K });
      });

      it("a garbled line: malformed, at that line", async () => {
        const copy = [...lines];
        copy[K - 1] = lines[K - 1]!.slice(0, 40);
        const r = await verifyCopy("garbled.log", copy);
        expect(!r.ok && r.problem).toMatchObject({ kind: "malformed", line: K });
      });

      it("the tail cut off: undetectable alone, truncated against a saved count or last hash", async () => {
        const copy = lines.slice(0, n - 3);
        const path = join(work, "truncated.log");
        writeFileSync(path, copy.map((l) => `${l}\n`).join(""));
        expect(await verifyAuditLog(path)).toMatchObject({ ok: true, entries: n - 3 });
        const lastHash = (JSON.parse(lines[n - 1]!) as AuditRecord).hash;
        const byHash = await verifyAuditLog(path, { expectLastHash: lastHash });
        expect(!byHash.ok && byHash.problem).toMatchObject({ kind: "truncated", line: n - 2 });
        const byCount = await verifyAuditLog(path, { minEntries: n });
        expect(!byCount.ok && byCount.problem).toMatchObject({ kind: "truncated", line: n - 2 });
      });

      it("`hsmd audit verify FILE` (built CLI): exit 0 on the real log, 1 on a tampered copy, 2 on a missing file", async () => {
        const b = await built;
        expect(b.code, `npx tsc -p tsconfig.json failed:\n${b.output}`).toBe(0);
        const run = (file: string) => spawnSync(process.execPath, [MAIN_JS, "audit", "verify", file], { encoding: "utf8" });

        const ok = run(auditFile);
        expect({ status: ok.status, stderr: ok.stderr }).toEqual({ status: 0, stderr: "" });
        expect(ok.stdout).toMatch(/^ok: \d+ entries, last hash [0-9a-f]{64}\n$/);

        const tampered = [...lines];
        tampered[K - 1] = JSON.stringify({ ...(JSON.parse(lines[K - 1]!) as AuditRecord), operation: "Forged" });
        const path = join(work, "cli-tampered.log");
        writeFileSync(path, tampered.map((l) => `${l}\n`).join(""));
        const bad = run(path);
        expect(bad.status).toBe(1);
        expect(bad.stdout).toContain(`TAMPERED at line ${K} (seq ${K}): edited`);

        const missing = run(join(work, "no-such.log"));
        expect(missing.status).toBe(2);
        expect(missing.stderr).toContain("does not exist");
      });
    });
  });
}
