/**
 * hsmctl end to end, key versions (issue 13): the BUILT CLI against a real daemon on a SoftHSM2 token
 * (test/helpers/hsmctl.ts): key rotate (with a request id), key versions, key public-key --key-version
 * (checked with Node's crypto against a signature of each version), key rotation-policy, key
 * min-decryption-version and key trim, and their refusals (exit codes, messages).
 */
import { createPublicKey, verify as nodeVerify } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { file, hsmctl, json, ok, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

type VersionedKey = { id: string; version: number; versionCount: number; minDecryptionVersion: number; rotationPeriodDays: number; nextRotationAt: string };

describe("key versions", () => {
  it("rotate, versions, public-key --key-version, rotation-policy, min-decryption-version, trim", async () => {
    const ec = await json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-rot"]);
    writeMessage();
    await ok(["crypto", "sign", "--key-id", ec.id, "--algorithm", "ecdsa-sha256", "--in", file("m.txt"), "--out", file("s1.der")]);

    const r1 = await json<VersionedKey>(["key", "rotate", "--key-id", ec.id, "--request-id", "cli-rot-1"]);
    expect(r1).toMatchObject({ id: ec.id, version: 2, versionCount: 2, minDecryptionVersion: 1, rotationPeriodDays: 0 });
    const again = await json<VersionedKey>(["key", "rotate", "--key-id", ec.id, "--request-id", "cli-rot-1"]);
    expect(again.version).toBe(2);
    const text = await ok(["key", "rotate", "--key-id", ec.id]);
    expect(text.stdout).toMatch(/version:\s+3/);
    expect(text.stdout).toMatch(/versions:\s+3 \(min decryption version 1\)/);
    await ok(["crypto", "sign", "--key-id", ec.id, "--algorithm", "ecdsa-sha256", "--in", file("m.txt"), "--out", file("s3.der")]);

    const listed = await json<{ primaryVersion: number; versions: Array<{ version: number; primary: boolean; decryptable: boolean; publicKeySpki: string }> }>(["key", "versions", "--key-id", ec.id]);
    expect(listed.primaryVersion).toBe(3);
    expect(listed.versions.map((v) => [v.version, v.primary, v.decryptable])).toEqual([
      [1, false, true],
      [2, false, true],
      [3, true, true],
    ]);
    const table = await ok(["key", "versions", "--key-id", ec.id]);
    expect(table.stdout).toMatch(/^VERSION\s+PRIMARY\s+DECRYPTABLE\s+CREATED\n1\s+yes\s+/);

    // Each version's public key verifies its own signature (Node's crypto), and only that one.
    await ok(["key", "public-key", "--key-id", ec.id, "--key-version", "1", "--out", file("v1.pem")]);
    await ok(["key", "public-key", "--key-id", ec.id, "--out", file("v3.pem")]);
    const m = readFileSync(file("m.txt"));
    const pub = (f: string) => createPublicKey(readFileSync(file(f), "utf8"));
    expect(nodeVerify("sha256", m, pub("v1.pem"), readFileSync(file("s1.der")))).toBe(true);
    expect(nodeVerify("sha256", m, pub("v3.pem"), readFileSync(file("s3.der")))).toBe(true);
    expect(nodeVerify("sha256", m, pub("v3.pem"), readFileSync(file("s1.der")))).toBe(false);
    const missing = await hsmctl(["key", "public-key", "--key-id", ec.id, "--key-version", "9"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no version 9");

    const policy = await json<VersionedKey>(["key", "rotation-policy", "--key-id", ec.id, "--days", "365"]);
    expect(policy.rotationPeriodDays).toBe(365);
    expect(Date.parse(policy.nextRotationAt)).toBeGreaterThan(Date.now());
    const short = await hsmctl(["key", "rotation-policy", "--key-id", ec.id, "--days", "30"]);
    expect(short.code).toBe(1);
    expect(short.stderr).toContain("90 to 2560");
    expect((await json<VersionedKey>(["key", "rotation-policy", "--key-id", ec.id, "--days", "0"])).rotationPeriodDays).toBe(0);

    const nothing = await hsmctl(["key", "trim", "--key-id", ec.id]);
    expect(nothing.code).toBe(1);
    expect(nothing.stderr).toContain("nothing to trim");
    expect((await json<VersionedKey>(["key", "min-decryption-version", "--key-id", ec.id, "--min-version", "3"])).minDecryptionVersion).toBe(3);
    const trimmed = await json<VersionedKey>(["key", "trim", "--key-id", ec.id]);
    expect([trimmed.versionCount, trimmed.version]).toEqual([1, 3]);
    expect((await json<{ versions: Array<{ version: number }> }>(["key", "versions", "--key-id", ec.id])).versions.map((v) => v.version)).toEqual([3]);

    const bad = await hsmctl(["key", "min-decryption-version", "--key-id", ec.id, "--min-version", "x"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--min-version: must be a whole number");
    const other = await hsmctl(["key", "rotate", "--key-id", ec.id], { as: "bob" });
    expect(other.code).toBe(1);
    expect(other.stderr).toContain("not found");
  });
});

function writeMessage(): void {
  writeFileSync(file("m.txt"), "versions from the command line\n");
}
