import { status as GrpcStatus } from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Code, ERROR_CODES } from "../../src/errors";
import { grpcStatusOf } from "../../src/grpc/status";
import { httpStatusOf } from "../../src/http/status";

/** One row of the README's error table. */
interface DocRow {
  code: string;
  grpcName: string;
  grpcNumber: number;
  http: number;
  when: string;
}

/** The rows of the table under `### Errors` in the README (up to the next heading). */
function readmeErrorRows(): DocRow[] {
  const readme = readFileSync(join(__dirname, "../../README.md"), "utf8");
  const start = readme.indexOf("\n### Errors\n");
  expect(start, "the README has an '### Errors' section").toBeGreaterThanOrEqual(0);
  const rest = readme.slice(start + "\n### Errors\n".length);
  const section = rest.slice(0, rest.search(/\n#{1,3} /));
  const lines = section.split("\n").filter((l) => l.startsWith("|"));
  expect(lines[0]).toBe("| code | gRPC status | HTTP status | when |");
  expect(lines[1]).toMatch(/^\|( --- \|){4}$/);
  return lines.slice(2).map((line) => {
    const m = /^\| `([A-Z_]+)` \| `([A-Z_]+)` \((\d+)\) \| (\d{3}) \| (.+) \|$/.exec(line);
    if (!m) throw new Error(`README error row does not read "| \`CODE\` | \`STATUS\` (n) | http | when |": ${line}`);
    return { code: m[1]!, grpcName: m[2]!, grpcNumber: Number(m[3]), http: Number(m[4]), when: m[5]! };
  });
}

describe("error codes", () => {
  const codes = Object.values(Code) as Code[];
  const rows = readmeErrorRows();

  it("ERROR_CODES has one row per code, each saying what it means and when", () => {
    expect(Object.keys(ERROR_CODES).sort()).toEqual([...codes].sort());
    for (const code of codes) {
      expect(ERROR_CODES[code].meaning.length, code).toBeGreaterThan(0);
      expect(ERROR_CODES[code].when.length, code).toBeGreaterThan(0);
    }
  });

  it("the README's error section lists every code once, and no other", () => {
    const documented = rows.map((r) => r.code);
    expect(new Set(documented).size, "no code documented twice").toBe(documented.length);
    expect([...documented].sort()).toEqual([...codes].sort());
  });

  it("each README row's gRPC status is the code's gRPC mapping (name and number)", () => {
    for (const row of rows) {
      const status = grpcStatusOf(row.code as Code);
      expect(row.grpcNumber, row.code).toBe(status);
      expect(row.grpcName, row.code).toBe(GrpcStatus[status]);
      // The gRPC status of a code is the status of the same name.
      expect(row.grpcName, row.code).toBe(row.code);
    }
  });

  it("each README row's HTTP status is the code's HTTP mapping", () => {
    for (const row of rows) expect(row.http, row.code).toBe(httpStatusOf(row.code as Code));
  });

  it("every code maps to a distinct gRPC status and a 4xx/5xx HTTP status", () => {
    expect(new Set(codes.map(grpcStatusOf)).size).toBe(codes.length);
    for (const code of codes) {
      expect(grpcStatusOf(code), code).not.toBe(GrpcStatus.OK);
      expect(httpStatusOf(code), code).toBeGreaterThanOrEqual(400);
      expect(httpStatusOf(code), code).toBeLessThan(600);
    }
  });
});
