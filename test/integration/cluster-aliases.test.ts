/**
 * Aliases (issue 13) in a three-node cluster on three real etcd members: an alias made on n1
 * resolves on n3 at once (a miss is read fresh from the store) and is listed there once n3's watch
 * of `aliases/` delivers it; a re-point on n1 is used on n3; a share made on n1 lets another user
 * resolve it on n2; deleting the key on n1 takes its aliases away on every node.
 */
import { describe, expect, it } from "vitest";
import { HsmClientError, KeySpec } from "../../src/sdk";
import { eventually } from "../helpers/cluster";
import { ECDSA, GCM, client, n1, n2, n3, reach, useReplicationCluster } from "../helpers/cluster-replication";
import { expectError } from "../helpers/expect-error";
import { ensureUser } from "../helpers/users";

useReplicationCluster();

const msg = Buffer.from("aliased across nodes");

/** The key id GetKey resolves `name` to through `c`, or the status name it answered. */
async function resolvedBy(c: { getKey(r: { keyId: string }): Promise<{ id: string }> }, name: string): Promise<string> {
  try {
    return (await c.getKey({ keyId: name })).id;
  } catch (e) {
    return (e as HsmClientError).codeName;
  }
}

describe("aliases across three nodes", () => {
  it("made on n1, used on n3; re-pointed on n1, seen on n3; shared on n1, resolved by another user on n2; gone everywhere with its key", async () => {
    await ensureUser(reach(n1), "bob");
    const [a1, a3] = [await client([n1]), await client([n3])];
    const k1 = (await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "alias-k1" })).id;
    const k2 = (await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "alias-k2" })).id;
    const name = "alias/cluster/payments";
    await a1.createAlias({ aliasName: name, targetKeyId: k1 });

    // At once on n3 (a miss is decided again on the store), and listed there once its watch has it.
    const e = await a3.encrypt({ keyId: name, algorithm: GCM, plaintext: msg });
    expect(e.keyId).toBe(k1);
    await eventually(async () => (await a3.listAliases({})).aliases.find((a) => a.name === name && a.targetKeyId === k1), "n3 lists the alias");
    const d = await a1.decrypt({ keyId: name, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv, ciphertextBlob: e.ciphertextBlob });
    expect(Buffer.from(d.plaintext)).toEqual(msg);

    // Re-pointed on n1: n3 follows.
    await a1.updateAlias({ aliasName: name, targetKeyId: k2 });
    await eventually(async () => ((await resolvedBy(a3, name)) === k2 ? true : undefined), "n3 resolves the alias to the new key");
    expect((await a3.encrypt({ keyId: name, algorithm: GCM, plaintext: msg })).keyId).toBe(k2);
    expect((await a3.getKey({ keyId: k2 })).aliases).toEqual([name]);

    // Shared on n1: bob resolves it on n2; before, n2 answered as for an unknown alias.
    const b2 = await client([n2], "bob");
    await expectError(b2.getKey({ keyId: name }), "NOT_FOUND", `${name} not found`);
    await a1.shareKey({ keyId: k2, username: "bob" });
    await eventually(async () => ((await resolvedBy(b2, name)) === k2 ? true : undefined), "bob resolves the alias on n2");
    const bobs = (await b2.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "bobs" })).id;
    await expectError(b2.updateAlias({ aliasName: name, targetKeyId: bobs }), "PERMISSION_DENIED", "belongs to alice");

    // The key deleted on n1 takes its alias with it, on every node.
    await a1.deleteKey({ keyId: name });
    for (const c of [a1, a3, b2]) await eventually(async () => ((await resolvedBy(c, name)) === "NOT_FOUND" ? true : undefined), "the alias is gone");
    await expectError(a3.sign({ keyId: name, algorithm: ECDSA, message: msg }), "NOT_FOUND", `${name} not found`);
    // The name is free again, made on n3 this time, and n1 resolves it.
    await a3.createAlias({ aliasName: name, targetKeyId: k1 });
    expect(await resolvedBy(a1, name)).toBe(k1);
  });
});
