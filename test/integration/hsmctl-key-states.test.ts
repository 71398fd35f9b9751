/**
 * hsmctl end to end, key states and metadata (issue 13 lane S): the BUILT CLI as a child process
 * against a real daemon: key disable|enable, schedule-deletion|cancel-deletion, describe, tag|untag,
 * and key list --state/--tag, in text and JSON, with their usage errors and the daemon's refusals.
 */
import { describe, expect, it } from "vitest";
import { hsmctl, json, ok, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

describe("key states and metadata", () => {
  it("disable, enable, schedule and cancel deletion; describe, tag, untag; list by state and tag", async () => {
    const { id } = await json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-states"]);
    expect((await ok(["key", "disable", "--key-id", id])).stdout).toContain(`disabled ${id}`);
    const refused = await hsmctl(["crypto", "encrypt", "--key-id", id, "--in", "-"], { input: "hello" });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("is DISABLED: EnableKey to use it");
    expect((await json<{ keys: { id: string }[] }>(["key", "list", "--state", "disabled"])).keys.map((k) => k.id)).toEqual([id]);
    expect((await ok(["key", "list", "--state", "disabled"])).stdout).toMatch(new RegExp(`^ID\\s+LABEL\\s+SPEC\\s+USAGES\\s+STATE[^\\n]*\\n${id}\\s+cli-states\\s+aes-256\\s+\\S+\\s+disabled\\s`));
    expect(await json(["key", "enable", "--key-id", id])).toMatchObject({ id, state: "enabled" });

    const badDays = await hsmctl(["key", "schedule-deletion", "--key-id", id, "--days", "seven"]);
    expect(badDays.code).toBe(2);
    expect(badDays.stderr).toContain("--days");
    const outOfBounds = await hsmctl(["key", "schedule-deletion", "--key-id", id, "--days", "3"]);
    expect(outOfBounds.code).not.toBe(0);
    expect(outOfBounds.stderr).toContain("7 to 30");
    const scheduled = await ok(["key", "schedule-deletion", "--key-id", id, "--days", "7"]);
    expect(scheduled.stdout).toContain(`key ${id} will be destroyed at`);
    expect(scheduled.stdout).toContain("hsmctl key cancel-deletion");
    expect(await json(["key", "get", "--key-id", id])).toMatchObject({ state: "pending-deletion", deletionDate: expect.any(String) });
    expect((await ok(["key", "cancel-deletion", "--key-id", id])).stdout).toMatch(/state:\s+enabled/);

    const described = await ok(["key", "describe", "--key-id", id, "--description", "signs nothing, encrypts records"]);
    expect(described.stdout).toMatch(/description:\s+signs nothing, encrypts records/);
    expect(await json(["key", "tag", "--key-id", id, "--tag", "team=payments", "--tag", "env=prod"])).toMatchObject({ tags: { team: "payments", env: "prod" } });
    const badTag = await hsmctl(["key", "tag", "--key-id", id, "--tag", "novalue"]);
    expect(badTag.code).toBe(2);
    expect(badTag.stderr).toContain("KEY=VALUE");
    expect((await json<{ keys: { id: string }[] }>(["key", "list", "--tag", "team=payments"])).keys.map((k) => k.id)).toEqual([id]);
    expect((await json<{ keys: { id: string }[] }>(["key", "list", "--tag", "team=other"])).keys).toEqual([]);
    expect((await json<{ keys: { id: string }[] }>(["key", "list", "--tag", "env", "--state", "enabled"])).keys.map((k) => k.id)).toEqual([id]);
    expect(await json(["key", "untag", "--key-id", id, "--tag-key", "env"])).toMatchObject({ tags: { team: "payments" } });
    const badState = await hsmctl(["key", "list", "--state", "sleeping"]);
    expect(badState.code).toBe(2);
    expect(badState.stderr).toContain("pending-deletion");
    // Owner only: bob cannot see alice's key.
    const bob = await hsmctl(["key", "disable", "--key-id", id], { as: "bob" });
    expect(bob.code).not.toBe(0);
    expect(bob.stderr).toMatch(/not found/i);
  });

  it("generate takes --description and --tag; import takes --valid-to (refused in the past)", async () => {
    const k = await json<{ id: string; description: string; tags: Record<string, string> }>([
      "key",
      "generate-symmetric",
      "--spec",
      "aes-128",
      "--label",
      "cli-meta",
      "--description",
      "made with tags",
      "--tag",
      "a=1",
      "--tag",
      "b=",
    ]);
    expect(k).toMatchObject({ description: "made with tags", tags: { a: "1", b: "" } });
    const past = await hsmctl(["key", "import", "--spec", "aes-128", "--in", "-", "--label", "cli-exp", "--valid-to", "2001-01-01T00:00:00Z"], { input: Buffer.alloc(16, 7) });
    expect(past.code).not.toBe(0);
    expect(past.stderr).toContain("not in the future");
    const later = new Date(Date.now() + 3_600_000).toISOString();
    const imp = await json<{ validTo: string }>(["key", "import", "--spec", "aes-128", "--in", "-", "--label", "cli-exp", "--valid-to", later], { input: Buffer.alloc(16, 7) });
    expect(imp.validTo).toBe(later);
  });
});
