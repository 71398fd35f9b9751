/**
 * Creates committed through the store's group commit (KeyFactory over TxnGroup), end to end on one
 * real daemon (SoftHSM2 token, embedded store, gRPC over loopback): concurrent first creates with
 * the same request id make one key per user and request id, creates without one each make their
 * own, every acknowledged key is usable and listed, and all of them are still there after a restart.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, type HsmClient, KeySpec, KeyUsage } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";

let td: TestDaemon;
let alice: HsmClient;
let bob: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon();
  alice = await userClient(td, "alice");
  bob = await userClient(td, "bob");
});
afterAll(async () => {
  alice?.close();
  bob?.close();
  await td?.cleanup();
});

const gen = (c: HsmClient, label: string, requestId = "") => c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label, usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], requestId });

async function listAll(c: HsmClient, labelPrefix: string): Promise<string[]> {
  const ids: string[] = [];
  for await (const k of c.listAllKeys({ labelPrefix, pageSize: 7 })) ids.push(k.id);
  return ids;
}

describe("grouped creates on one node", () => {
  it("make one key per user and request id under concurrency, each durable and usable", async () => {
    const rids = Array.from({ length: 8 }, (_, i) => `grp-${i}`);
    const calls = [
      ...rids.flatMap((rid) => Array.from({ length: 4 }, () => gen(alice, "grp-a", rid).then((k) => ({ who: "alice", rid, id: k.id })))),
      ...rids.flatMap((rid) => Array.from({ length: 2 }, () => gen(bob, "grp-b", rid).then((k) => ({ who: "bob", rid, id: k.id })))),
      ...Array.from({ length: 16 }, (_, i) => gen(alice, "grp-a", "").then((k) => ({ who: "alice", rid: `none-${i}`, id: k.id }))),
    ];
    const made = await Promise.all(calls);
    const byRequest = new Map<string, Set<string>>();
    for (const m of made) {
      const k = `${m.who}/${m.rid}`;
      byRequest.set(k, (byRequest.get(k) ?? new Set()).add(m.id));
    }
    for (const ids of byRequest.values()) expect(ids.size).toBe(1);
    const aliceIds = [...new Set(made.filter((m) => m.who === "alice").map((m) => m.id))].sort();
    const bobIds = [...new Set(made.filter((m) => m.who === "bob").map((m) => m.id))].sort();
    expect(aliceIds).toHaveLength(8 + 16);
    expect(bobIds).toHaveLength(8);
    expect(aliceIds.filter((id) => bobIds.includes(id))).toEqual([]);

    expect(await listAll(alice, "grp-")).toEqual(aliceIds);
    expect(await listAll(bob, "grp-")).toEqual(bobIds);
    // A retry after the fact answers the key the request id made.
    expect((await gen(alice, "grp-a", "grp-3")).id).toBe(made.find((m) => m.who === "alice" && m.rid === "grp-3")!.id);

    for (const id of [...aliceIds.slice(0, 3), bobIds[0]!]) {
      const c = aliceIds.includes(id) ? alice : bob;
      const enc = await c.encrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, plaintext: Buffer.from(`to ${id}`) });
      const dec = await c.decrypt({ keyId: id, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: enc.ciphertext, iv: enc.iv });
      expect(Buffer.from(dec.plaintext).toString()).toBe(`to ${id}`);
    }

    alice.close();
    bob.close();
    td = await td.restart();
    alice = await userClient(td, "alice");
    bob = await userClient(td, "bob");
    expect(await listAll(alice, "grp-")).toEqual(aliceIds);
    expect(await listAll(bob, "grp-")).toEqual(bobIds);
  });
});
