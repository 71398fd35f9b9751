/**
 * A three-node cluster on three real etcd members (hsmd daemons as child processes, each with its own
 * SoftHSM2 token, joined through the real ceremony): keys and users made through one node are used
 * through the others; lockout counts across nodes; a daemon killed with SIGKILL under a steady SDK
 * load costs no call and catches up when it restarts; a daemon stopped during 1,000 key creations
 * converges to exactly the same keys; concurrent creates with one request id on two nodes make one key.
 */
import { constants, createPublicKey, randomBytes, randomUUID, verify as verifySignature } from "node:crypto";
import { describe, expect, it } from "vitest";
import { GrpcStatus, HsmClient, KeySpec, Role } from "../../src/sdk";
import { eventually, loginToken, nodeStatus, tokenKeyAttributes } from "../helpers/cluster";
import { USER_PASSWORD, officerClient } from "../helpers/users";
import {
  client,
  clients,
  co,
  coveredByAll,
  ECDSA,
  FRESH,
  GCM,
  listAll,
  MAX_FAILED_LOGINS,
  n1,
  n2,
  n3,
  okCalls,
  PSS,
  reach,
  singleTryClient,
  storeCount,
  useReplicationCluster,
  verifiesEcdsa,
} from "../helpers/cluster-replication";

// The cluster, its clients and the readings of coverage and /metrics: test/helpers/cluster-replication.ts.
useReplicationCluster();

describe("three nodes on three etcd members", () => {
  it("every member reports the other two, and a joined node's token holds the domain key only under the HSM's guards", async () => {
    const status = await co.getClusterStatus();
    expect(status.store).toBe("etcd");
    expect(status.nodes.map((n) => n.nodeId).sort()).toEqual(["n1", "n2", "n3"]);
    for (const n of [n1, n2, n3]) {
      const s = await nodeStatus(n);
      expect(s.store.kind).toBe("etcd");
      expect(s.cluster!.nodes.map((x) => x.id).sort()).toEqual(["n1", "n2", "n3"]);
      expect(s.domainKeyId).toBe((await nodeStatus(n1)).domainKeyId);
    }
    const domainKeyId = (await nodeStatus(n1)).domainKeyId;

    // Read from the tokens themselves (pkcs11js in a child process), not through hsmd.
    for (const n of [n2, n3]) {
      const objs = tokenKeyAttributes(n.token);
      const domain = objs.filter((o) => o.id === domainKeyId);
      expect(domain).toHaveLength(1);
      // extractable (a later join needs it) but only under a key the SO marked trusted; never in the clear
      expect(domain[0]).toMatchObject({ class: "secret", sensitive: true, extractable: true, wrapWithTrusted: true, trusted: false });
      const transport = objs.find((o) => o.id === "hsmd-transport" && o.class === "private");
      expect(transport).toMatchObject({ sensitive: true, extractable: false, neverExtractable: true });
      for (const o of objs.filter((x) => x.class !== "public")) {
        expect(o.sensitive, `${o.class} ${o.id} in ${n === n2 ? "n2" : "n3"}'s token`).toBe(true);
        if (o.extractable) expect(o.wrapWithTrusted, `${o.class} ${o.id} is extractable under untrusted keys`).toBe(true);
      }
    }
    // The init node generated the domain key inside its HSM; the SO-trusted copies of the joiners'
    // transport keys were used for one wrap each and are gone: no standing trust is left behind.
    const first = tokenKeyAttributes(n1.token);
    expect(first.find((o) => o.id === domainKeyId)).toMatchObject({ sensitive: true, alwaysSensitive: true, wrapWithTrusted: true });
    expect(first.filter((o) => o.trusted === true)).toEqual([]);
  });

  it("a key created on n1 signs and decrypts on n2 and n3 (checked with Node's crypto)", async () => {
    const [a1, a2, a3] = [await client([n1]), await client([n2]), await client([n3])];
    const ec = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "repl-ec" });
    const rsa = await a1.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "repl-rsa" });
    const aes = await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "repl-aes" });
    const ecPem = (await a1.getPublicKey({ keyId: ec.id })).pem;
    const rsaPem = (await a1.getPublicKey({ keyId: rsa.id })).pem;
    for (const [name, c] of [
      ["n2", a2],
      ["n3", a3],
    ] as const) {
      const message = Buffer.from(`signed on ${name}`);
      const { signature } = await c.sign({ keyId: ec.id, algorithm: ECDSA, message });
      expect(verifiesEcdsa(ecPem, message, signature), `ECDSA on ${name}`).toBe(true);
      const pss = await c.sign({ keyId: rsa.id, algorithm: PSS, message });
      expect(verifySignature("sha256", message, { key: createPublicKey(rsaPem), padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, pss.signature), `RSA-PSS on ${name}`).toBe(true);
      // GetPublicKey on the replica answers the same key as on the creator
      expect((await c.getPublicKey({ keyId: ec.id })).pem).toBe(ecPem);
    }
    // AES-GCM: encrypted on one node, decrypted on each other one.
    const plaintext = randomBytes(100);
    const enc = await a2.encrypt({ keyId: aes.id, algorithm: GCM, plaintext });
    for (const c of [a1, a3]) {
      expect(Buffer.from((await c.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc.ciphertext, iv: enc.iv })).plaintext)).toEqual(plaintext);
    }
    const enc3 = await a3.encrypt({ keyId: aes.id, algorithm: GCM, plaintext });
    expect(Buffer.from((await a1.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: enc3.ciphertext, iv: enc3.iv })).plaintext)).toEqual(plaintext);
  });

  it("a key is usable through another node as soon as its create answered (20 creates on n1, each used at once on n2 and n3)", async () => {
    const [a1, a2, a3] = [await client([n1]), await client([n2]), await client([n3])];
    const failures: string[] = [];
    for (let i = 0; i < 20; i++) {
      const k = await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `at-once-${i}` });
      for (const [name, c] of [
        ["n2", a2],
        ["n3", a3],
      ] as const) {
        try {
          const e = await c.encrypt({ keyId: k.id, algorithm: GCM, plaintext: Buffer.from("x") });
          expect(e.ciphertext.length).toBe(17);
        } catch (err) {
          failures.push(`${name} key ${i}: ${(err as Error).message}`);
        }
      }
    }
    expect(failures).toEqual([]);
  });

  it("a user created through n2 logs in on n3, and a session made on one node is honoured by the others", async () => {
    const co2 = await officerClient(reach(n2));
    clients.push(co2);
    await co2.createUser({ username: "bob", role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const b3 = new HsmClient({ endpoint: n3.grpc, defaultDeadlineMs: 20_000 });
    clients.push(b3);
    const s = await b3.login("bob", USER_PASSWORD);
    expect(s).toMatchObject({ username: "bob", role: Role.ROLE_CRYPTO_USER, mustChangePassword: false });
    const k = await b3.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "bobs" });
    expect(k.owner).toBe("bob");

    // One session, three nodes.
    const token = await loginToken(n2.grpc, "bob", USER_PASSWORD);
    for (const n of [n1, n2, n3]) {
      const c = new HsmClient({ endpoint: n.grpc, defaultDeadlineMs: 20_000 });
      clients.push(c);
      c.useToken(token);
      const page = await c.listKeys({ labelPrefix: "bobs" });
      expect(page.keys.map((x) => x.id)).toEqual([k.id]);
    }
  });

  it(`failed logins spread over the nodes lock the user everywhere after ${MAX_FAILED_LOGINS}, and revoke its sessions on every node`, async () => {
    await co.createUser({ username: "carol", role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const token = await loginToken(n1.grpc, "carol", USER_PASSWORD);
    const [c1, c2, c3] = [singleTryClient(n1), singleTryClient(n2), singleTryClient(n3)];
    const session = [singleTryClient(n1), singleTryClient(n2), singleTryClient(n3)];
    for (const c of session) {
      c.useToken(token);
      await expect(c.listKeys({})).resolves.toMatchObject({ keys: [] });
    }
    await expect(c1.login("carol", "wrong-password-1")).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });
    await expect(c2.login("carol", "wrong-password-2")).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });
    // Two failures so far, counted in the one record whichever node took them.
    const mid = await eventually(async () => {
      const u = await co.getUser({ username: "carol" });
      return u.failedLogins === 2 ? u : undefined;
    }, "carol shows 2 failed logins");
    expect(mid.locked).toBe(false);
    // The third, on the third node, locks.
    const third = await c3.login("carol", "wrong-password-3").catch((e: unknown) => e);
    expect(third).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((third as Error).message).toMatch(/user carol is locked after 3 failed logins/);
    // Locked on every node, the right password included; the session made before is revoked everywhere.
    for (const c of [c1, c2, c3]) {
      const e = await c.login("carol", USER_PASSWORD).catch((x: unknown) => x);
      expect(e).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
      expect((e as Error).message).toMatch(/locked after 3 failed logins/);
    }
    for (const c of session) {
      const e = await c.listKeys({}).catch((x: unknown) => x);
      expect(e).toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });
      expect((e as Error).message).toMatch(/session revoked/);
    }
    expect(await co.getUser({ username: "carol" })).toMatchObject({ locked: true, lockReason: "failed_logins", failedLogins: 3 });

    // An officer on n3 unlocks; the user logs in on n1 again.
    const co3 = await officerClient(reach(n3));
    clients.push(co3);
    await co3.unlockUser({ username: "carol" });
    await eventually(async () => (await c1.login("carol", USER_PASSWORD)).username === "carol", "carol logs in on n1 after the unlock on n3", 10_000);
  });

  it("two concurrent failed logins on two nodes both count (no lost update): the next one locks", async () => {
    await co.createUser({ username: "dave", role: Role.ROLE_CRYPTO_USER, password: USER_PASSWORD });
    const [c1, c2, c3] = [singleTryClient(n1), singleTryClient(n2), singleTryClient(n3)];
    const both = await Promise.allSettled([c1.login("dave", "wrong-a"), c2.login("dave", "wrong-b")]);
    expect(both.map((r) => r.status === "rejected" && (r.reason as { code: number }).code)).toEqual([GrpcStatus.UNAUTHENTICATED, GrpcStatus.UNAUTHENTICATED]);
    const third = await c3.login("dave", "wrong-c").catch((e: unknown) => e);
    expect(third).toMatchObject({ code: GrpcStatus.PERMISSION_DENIED });
    expect((third as Error).message).toMatch(/user dave is locked after 3 failed logins/);
    await eventually(async () => (await co.getUser({ username: "dave" })).locked, "dave shows locked on n1");
    expect(await co.getUser({ username: "dave" })).toMatchObject({ locked: true, failedLogins: 3 });
  });

  it("concurrent creates with the same request id on two nodes yield one key per request id (20 pairs)", async () => {
    const [a1, a2, a3] = [await client([n1]), await client([n2]), await client([n3])];
    const run = randomUUID();
    const pairs = await Promise.all(
      Array.from({ length: 20 }, (_, i) => {
        const req = { spec: i % 2 ? KeySpec.KEY_SPEC_EC_P256 : KeySpec.KEY_SPEC_AES_256, label: `dup-${i}`, requestId: `dup-${run}-${i}` };
        return Promise.all([a1.generateKey(req), a2.generateKey(req)]);
      }),
    );
    for (const [x, y] of pairs) expect(y.id).toBe(x.id);
    const ids = pairs.map(([x]) => x.id).sort();
    expect(new Set(ids).size).toBe(20);
    // Every node lists exactly those 20 keys under that label, and each works there.
    for (const c of [a1, a2, a3]) {
      const listed = await eventually(async () => {
        const l = (await listAll(c, "dup-")).map((k) => k.id).sort();
        return l.length >= 20 ? l : undefined;
      }, "20 dup- keys listed");
      expect(listed).toEqual(ids);
    }
    for (const [k] of pairs) {
      if (k.spec === KeySpec.KEY_SPEC_EC_P256) await expect(a3.sign({ keyId: k.id, algorithm: ECDSA, message: Buffer.from("d") })).resolves.toBeTruthy();
      else await expect(a3.encrypt({ keyId: k.id, algorithm: GCM, plaintext: Buffer.from("d") })).resolves.toBeTruthy();
    }
    // A retry of one of them, on the third node, answers the same key.
    expect((await a3.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "dup-0", requestId: `dup-${run}-0` })).id).toBe(pairs[0]![0].id);
  });

  it("kill -9 of a daemon under a steady load of signs and encrypts costs zero calls; it restarts and catches up", async () => {
    const a1 = await client([n1]);
    const ec = await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "load-ec" });
    const aes = await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "load-aes" });
    const doomed = await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "load-doomed" });
    const pem = (await a1.getPublicKey({ keyId: ec.id })).pem;
    const load = new HsmClient({
      endpoints: [n1.grpc, n2.grpc, n3.grpc],
      defaultDeadlineMs: 20_000,
      credentials: async () => ({ username: "alice", password: USER_PASSWORD }),
    });
    clients.push(load);
    await load.login("alice", USER_PASSWORD);

    let stop = false;
    let ok = 0;
    const errors: string[] = [];
    const signatures: Array<{ message: Buffer; signature: Buffer }> = [];
    const ciphertexts: Array<{ plaintext: Buffer; ciphertext: Buffer; iv: Buffer }> = [];
    const loop = async (w: number) => {
      for (let i = 0; !stop; i++) {
        try {
          if (i % 2 === 0) {
            const message = Buffer.from(`load ${w} ${i}`);
            const { signature } = await load.sign({ keyId: ec.id, algorithm: ECDSA, message });
            if (i % 10 === 0) signatures.push({ message, signature: Buffer.from(signature) });
          } else {
            const plaintext = randomBytes(64);
            const e = await load.encrypt({ keyId: aes.id, algorithm: GCM, plaintext });
            if (i % 10 === 1) ciphertexts.push({ plaintext, ciphertext: Buffer.from(e.ciphertext), iv: Buffer.from(e.iv) });
          }
          ok++;
        } catch (e) {
          errors.push((e as Error).message);
        }
      }
    };
    const cryptoCalls = () => Promise.all([n1, n2, n3].map(async (n) => (await okCalls(n, "Sign")) + (await okCalls(n, "Encrypt"))));
    const base = await cryptoCalls();
    const loops = [0, 1, 2, 3].map(loop);
    await new Promise((r) => setTimeout(r, 1500));
    // Every node takes part in the load before the kill, the one about to die included.
    const served = (await cryptoCalls()).map((c, i) => c - base[i]!);
    const before = ok;
    n2.kill("SIGKILL");
    expect(await n2.waitExit()).toEqual({ code: null, signal: "SIGKILL" });
    await new Promise((r) => setTimeout(r, 3000));
    stop = true;
    await Promise.all(loops);
    expect(errors).toEqual([]);
    expect(load.stats.failures).toBe(0);
    expect(before).toBeGreaterThan(0);
    for (const [i, count] of served.entries()) expect(count, `calls n${i + 1} served before the kill`).toBeGreaterThan(0);
    expect(ok).toBeGreaterThan(before); // the load went on after the kill
    for (const s of signatures) expect(verifiesEcdsa(pem, s.message, s.signature)).toBe(true);
    for (const c of ciphertexts.slice(0, 20)) {
      expect(Buffer.from((await a1.decrypt({ keyId: aes.id, algorithm: GCM, ciphertext: c.ciphertext, iv: c.iv })).plaintext)).toEqual(c.plaintext);
    }

    // While n2 is down: keys are created on n1 and n3, one is deleted.
    const a3 = await client([n3]);
    const madeWhileDown = [
      await a1.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "while-down-ec" }),
      await a1.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "while-down-aes" }),
      await a3.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: "while-down-aes3" }),
    ];
    await a3.deleteKey({ keyId: doomed.id });
    const target = await eventually(async () => {
      const [r1, r3] = [(await nodeStatus(n1)).store.appliedRevision, (await nodeStatus(n3)).store.appliedRevision];
      return r1 === r3 ? r1 : undefined;
    }, "n1 and n3 applied the same revision");

    await n2.restart();
    // It catches up: its applied revision reaches the others', in its own status and in the cluster's.
    await eventually(async () => (await nodeStatus(n2)).store.appliedRevision >= target, `n2 applied revision reaches ${target}`);
    await eventually(async () => {
      const s = await co.getClusterStatus();
      const me = s.nodes.find((n) => n.nodeId === "n2");
      return me !== undefined && me.appliedRevision >= BigInt(target) && me.storeReachable && me.hsmHealthy;
    }, "GetClusterStatus shows n2 caught up");
    expect((await nodeStatus(n2)).keys).toBe((await nodeStatus(n1)).keys);
    expect((await nodeStatus(n2)).cluster!.applyFailures).toBe(0);

    const a2 = await client([n2], "alice", FRESH);
    const [wec, waes, waes3] = madeWhileDown;
    const message = Buffer.from("after the restart");
    const { signature } = await a2.sign({ keyId: wec!.id, algorithm: ECDSA, message });
    expect(verifiesEcdsa((await a1.getPublicKey({ keyId: wec!.id })).pem, message, signature)).toBe(true);
    for (const k of [waes!, waes3!]) {
      const e = await a2.encrypt({ keyId: k.id, algorithm: GCM, plaintext: message });
      expect(Buffer.from((await a1.decrypt({ keyId: k.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(message);
    }
    await expect(a2.encrypt({ keyId: doomed.id, algorithm: GCM, plaintext: message })).rejects.toMatchObject({ code: GrpcStatus.NOT_FOUND });
    // The load client uses n2 again without failures.
    for (let i = 0; i < 30; i++) await load.sign({ keyId: ec.id, algorithm: ECDSA, message });
    expect(load.stats.failures).toBe(0);
  });

  it("a daemon stopped during 1,000 key creations converges when it is back: none missing, none extra", async () => {
    const creator = new HsmClient({
      endpoints: [n1.grpc, n2.grpc],
      defaultDeadlineMs: 30_000,
      credentials: async () => ({ username: "alice", password: USER_PASSWORD }),
    });
    clients.push(creator);
    await creator.login("alice", USER_PASSWORD);
    const N = 1000;
    const run = randomUUID().slice(0, 8);
    const ids: string[] = new Array(N);
    const errors: string[] = [];
    let next = 0;
    let done = 0;
    let stopped: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < N) {
          const i = next++;
          try {
            ids[i] = (await creator.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label: `bulk-${run}-${i}`, requestId: `bulk-${run}-${i}` })).id;
          } catch (e) {
            errors.push(`${i}: ${(e as Error).message}`);
          }
          if (++done === 100) {
            // n3 goes down while the creations run (it is applying them at that moment).
            n3.kill("SIGTERM");
            stopped = n3.waitExit();
          }
        }
      }),
    );
    expect(errors).toEqual([]);
    expect(new Set(ids).size).toBe(N);
    expect(await stopped).toEqual({ code: 0, signal: null });

    const target = await eventually(async () => {
      const [s1, s2] = [await nodeStatus(n1), await nodeStatus(n2)];
      return s1.store.appliedRevision === s2.store.appliedRevision && s1.keys === s2.keys ? s1 : undefined;
    }, "n1 and n2 agree");
    await n3.restart();
    await eventually(async () => (await nodeStatus(n3)).store.appliedRevision >= target.store.appliedRevision, "n3 catches up");
    const s3 = await nodeStatus(n3);
    expect(s3.keys).toBe(target.keys);
    expect(s3.cluster!.applyFailures).toBe(0);

    // Exactly the created keys, through n3 and through n1.
    const a3 = await client([n3], "alice", FRESH);
    const a1 = await client([n1]);
    const want = [...ids].sort();
    expect((await listAll(a3, `bulk-${run}-`)).map((k) => k.id).sort()).toEqual(want);
    expect((await listAll(a1, `bulk-${run}-`)).map((k) => k.id).sort()).toEqual(want);
    // Every node's key count is the store's record count.
    expect(s3.keys).toBe(await storeCount("keys/"));

    // Coverage: every one of them is held by all three nodes (n3 included, for the keys made while it was down).
    const cov = await coveredByAll(ids, "every bulk key covered by n1, n2 and n3");
    for (const id of ids) expect([...cov.get(id)!].sort()).toEqual(["n1", "n2", "n3"]);
    // … as a crypto user sees it through n3 (GetKey's held_by).
    for (const id of ids.filter((_, i) => i % 50 === 0)) expect((await a3.getKey({ keyId: id })).heldBy).toEqual(["n1", "n2", "n3"]);

    // A sample of them works on n3 (encrypted there, decrypted on n1).
    const sample = ids.filter((_, i) => i % 20 === 0);
    await Promise.all(
      sample.map(async (id) => {
        const pt = randomBytes(32);
        const e = await a3.encrypt({ keyId: id, algorithm: GCM, plaintext: pt });
        expect(Buffer.from((await a1.decrypt({ keyId: id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv })).plaintext)).toEqual(pt);
      }),
    );
  });
});
