/**
 * A device that fails under file descriptor pressure must not stay failed: SoftHSM2 marks its token
 * invalid when it cannot open its files (EMFILE) and keeps failing (searches find nothing, creations
 * answer CKR_GENERAL_ERROR) until the module is re-initialized. The Device must answer such failures
 * as transient (UNAVAILABLE), re-initialize the module, and work again once descriptors are back.
 * Runs the built Device in a child process under `prlimit --nofile=256`, on a temp token.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO, buildDist } from "../helpers/daemon-process";
import { createTempToken, type TempToken } from "../helpers/softhsm";

let token: TempToken;
let dir: string;

beforeAll(() => {
  buildDist();
  token = createTempToken("fd-fault");
  dir = mkdtempSync(join(tmpdir(), "hsmd-fd-"));
});
afterAll(() => {
  token?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("device faults under file descriptor pressure", () => {
  it("out of descriptors: creations answer UNAVAILABLE (transient), not INTERNAL; once they are back the module is re-initialized and every object is seen again", () => {
    const pinFile = join(dir, "pin");
    writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
    const stdout = execFileSync("prlimit", ["--nofile=256:256", "--", process.execPath, join(REPO, "test/helpers/fd-pressure-child.cjs"), join(REPO, "dist"), token.label, pinFile], {
      env: { ...process.env, SOFTHSM2_CONF: token.conf },
      encoding: "utf8",
    });
    const r = JSON.parse(stdout.trim().split("\n").pop()!);
    expect(r.crashed).toBeUndefined();
    expect(r.before).toBe("ok");
    expect(r.exhausted).toBe("EMFILE");
    // Under pressure: a transient answer, the fault noticed, the check says the domain key is not seen.
    expect(r.underGenerate).toMatchObject({ code: "UNAVAILABLE", transient: true });
    // The creation needs the domain key (its seal wraps under it): either way the answer says device fault and retry.
    expect(r.underGenerate.message).toMatch(/(CKR_GENERAL_ERROR|a device fault).*retry/);
    expect(r.underDomainUse).toMatchObject({ code: "UNAVAILABLE", transient: true });
    expect(r.underDomainUse.message).toMatch(/cannot find hsmd-domain-fd, which this node holds: a device fault .*retry/);
    expect(r.logs.join("\n")).toMatch(/free file descriptors: the module is re-initialized once more are free/);
    expect(r.underFaulty).toBe(true);
    expect(r.underCheck).toBe(false);
    // Descriptors back: the module was re-initialized and everything works, old keys included.
    expect(r.afterCheck).toBe(true);
    expect(r.afterFaulty).toBe(false);
    expect(r.afterGenerate).toBe("ok");
    expect(r.afterDomain).toBe(true);
    expect(r.afterOldKey).toBe(true);
    expect(r.logs.join("\n")).toMatch(/device fault suspected.*re-initializ/);
    expect(r.logs.join("\n")).toMatch(/the token's objects are visible again/);
  });
});
