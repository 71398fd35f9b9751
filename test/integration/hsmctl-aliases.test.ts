/**
 * hsmctl end to end, aliases (issue 13): the BUILT CLI as a child process against a real daemon.
 * `alias create|update|delete|list`, `key list --alias`, and alias/NAME given to --key-id of key and
 * crypto commands (a signature checked with Node's crypto).
 */
import { createPublicKey, verify } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { file, hsmctl, json, ok, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

describe("aliases", () => {
  it("create, use everywhere a key id goes, list, re-point, delete; bad input answers with the rule", async () => {
    const [a1, a2, ec] = await Promise.all([
      json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-alias-1"]),
      json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-alias-2"]),
      json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-alias-ec"]),
    ]);
    const made = await ok(["alias", "create", "--name", "alias/cli/payments", "--key-id", a1.id]);
    expect(made.stdout).toMatch(new RegExp(`^name:\\s+alias/cli/payments\\nkey:\\s+${a1.id}\\nowner:\\s+alice`));
    await ok(["alias", "create", "--name", "alias/cli/signer", "--key-id", ec.id]);

    // alias/NAME in place of a key id: key get, key list --alias, crypto encrypt/decrypt, crypto sign.
    expect(await json(["key", "get", "--key-id", "alias/cli/payments"])).toMatchObject({ id: a1.id, aliases: ["alias/cli/payments"] });
    expect((await json<{ keys: { id: string }[] }>(["key", "list", "--alias", "alias/cli/payments"])).keys.map((k) => k.id)).toEqual([a1.id]);
    writeFileSync(file("alias-plain.txt"), "through an alias");
    await ok(["crypto", "encrypt", "--key-id", "alias/cli/payments", "--in", "alias-plain.txt", "--out", "alias.hce"]);
    await ok(["crypto", "decrypt", "--key-id", a1.id, "--in", "alias.hce", "--out", "alias-back.txt"]);
    expect(readFileSync(file("alias-back.txt"), "utf8")).toBe("through an alias");
    await ok(["crypto", "sign", "--key-id", "alias/cli/signer", "--in", "alias-plain.txt", "--out", "alias.sig"]);
    await ok(["key", "public-key", "--key-id", "alias/cli/signer", "--format", "pem", "--out", "alias-ec.pem"]);
    const pub = createPublicKey(readFileSync(file("alias-ec.pem")));
    expect(verify("sha256", readFileSync(file("alias-plain.txt")), pub, readFileSync(file("alias.sig")))).toBe(true);

    const listed = await json<{ aliases: { name: string; targetKeyId: string }[] }>(["alias", "list"]);
    expect(listed.aliases.map((a) => a.name)).toEqual(expect.arrayContaining(["alias/cli/payments", "alias/cli/signer"]));
    expect((await ok(["alias", "list", "--key-id", ec.id])).stdout).toMatch(/^NAME\s+KEY\s+OWNER\s+UPDATED\nalias\/cli\/signer\s/);

    // Re-point (same type and usages), then the refusals.
    expect(await json(["alias", "update", "--name", "alias/cli/payments", "--key-id", a2.id])).toMatchObject({ targetKeyId: a2.id });
    expect(await json(["key", "get", "--key-id", "alias/cli/payments"])).toMatchObject({ id: a2.id });
    const wrongType = await hsmctl(["alias", "update", "--name", "alias/cli/payments", "--key-id", ec.id]);
    expect(wrongType.code).toBe(1);
    expect(wrongType.stderr).toContain("same type");
    const taken = await hsmctl(["alias", "create", "--name", "alias/cli/payments", "--key-id", a1.id]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toContain("already exists: UpdateAlias re-points it");
    const badName = await hsmctl(["alias", "create", "--name", "payments", "--key-id", a1.id]);
    expect(badName.code).toBe(1);
    expect(badName.stderr).toContain('does not start with "alias/"');
    const bobSees = await hsmctl(["key", "get", "--key-id", "alias/cli/payments"], { as: "bob" });
    expect(bobSees.code).toBe(1);
    expect(bobSees.stderr).toContain("alias/cli/payments not found");
    const missing = await hsmctl(["alias", "create", "--name", "alias/cli/x"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("--key-id is required");

    expect((await ok(["alias", "delete", "--name", "alias/cli/payments"])).stdout).toContain("deleted alias/cli/payments");
    const gone = await hsmctl(["crypto", "encrypt", "--key-id", "alias/cli/payments", "--in", "alias-plain.txt", "--out", "x.hce"]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain("alias/cli/payments not found");
  });
});
