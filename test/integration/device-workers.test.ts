import { execFileSync } from "node:child_process";
import * as crypto from "node:crypto";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Device, type WorkerStats } from "../../src/pkcs11";
import { createTempToken, SOFTHSM_MODULE } from "../helpers/softhsm";

// The hot path on session workers (worker_threads with sessions of their own), against a real
// SoftHSM2 token; every result checked with Node's crypto. Keys Node must know (AES, HMAC) come from
// ECDH with a Node peer: the derived AES key directly, the HMAC key unwrapped under a derived KEK.
const token = createTempToken();
let dev: Device;
const DOMAIN = "domain-workers";
const pub = (spki: Buffer) => crypto.createPublicKey({ key: spki, format: "der", type: "spki" });
const total = (s: WorkerStats[]) => s.reduce((a, w) => ({ ops: a.ops + w.ops, batches: a.batches + w.batches }), { ops: 0, batches: 0 });
const spkis: Record<string, Buffer> = {};
const logs: string[] = [];
let aesKey: Buffer;
const hmacKey = crypto.randomBytes(32);

/** An AES-256 key derived by ECDH(CKD_NULL) from the device's `ecdh` key and a fresh Node peer: Node knows it. */
async function derivedAes(d: Device, id: string, usages: ("encrypt" | "decrypt" | "unwrap")[]): Promise<Buffer> {
  const peer = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwk = peer.publicKey.export({ format: "jwk" });
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
  await d.deriveEcdh("ecdh", point, id, { type: "aes", bits: 256 }, usages);
  return crypto.diffieHellman({ privateKey: peer.privateKey, publicKey: pub(spkis.ecdh!) });
}

beforeAll(async () => {
  dev = await Device.open({ module: SOFTHSM_MODULE, tokenLabel: token.label, pin: token.pin, poolSize: 4, tokenObjects: true, sessionCopies: true, workers: 2, log: (m) => logs.push(m) });
  await dev.ensureDomainKey(DOMAIN, true);
  spkis.p256 = (await dev.generate("p256", { type: "ec", curve: "P-256" }, ["sign", "verify"])).spki!;
  spkis.rsa = (await dev.generate("rsa", { type: "rsa", bits: 2048 }, ["sign", "verify"])).spki!;
  spkis.rsaEnc = (await dev.generate("rsa-enc", { type: "rsa", bits: 2048 }, ["encrypt", "decrypt"])).spki!;
  spkis.ed = (await dev.generate("ed", { type: "ed25519" }, ["sign", "verify"])).spki!;
  spkis.ecdh = (await dev.generate("ecdh", { type: "ec", curve: "P-256" }, ["derive"])).spki!;
  aesKey = await derivedAes(dev, "aes", ["encrypt", "decrypt"]);
  const kek = await derivedAes(dev, "kek", ["unwrap"]);
  const c = crypto.createCipheriv("id-aes256-wrap-pad", kek, Buffer.from("a65959a6", "hex"));
  const blob = Buffer.concat([c.update(hmacKey), c.final()]);
  await dev.unwrap("kek", "secret", { name: "AES_KWP" }, blob, "hmac", { type: "hmac", hash: "sha256" }, ["sign", "verify"]);
  // Kept in the token (sealed), so that the workers: 0 device below finds them too.
  await dev.sealForRecord("p256", { type: "ec", curve: "P-256" }, ["sign", "verify"], DOMAIN);
  await dev.sealForRecord("aes", { type: "aes", bits: 256 }, ["encrypt", "decrypt"], DOMAIN);
  await dev.sealForRecord("hmac", { type: "hmac", hash: "sha256" }, ["sign", "verify"], DOMAIN);
});
afterAll(async () => {
  await dev?.close();
  token.cleanup();
});

const hmac = (m: Buffer) => crypto.createHmac("sha256", hmacKey).update(m).digest();

describe("device on session workers", () => {
  it("sign, verify, encrypt, decrypt, HMAC and random agree with Node's crypto, and run in the workers", async () => {
    expect(dev.workerStats()).toHaveLength(2);
    const before = total(dev.workerStats());
    let calls = 0;
    const n = <T>(p: Promise<T>) => {
      calls++;
      return p;
    };
    const msg = Buffer.from("signed on a session worker");

    const ec = await n(dev.sign("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msg));
    expect(crypto.verify("sha256", msg, { key: pub(spkis.p256!), dsaEncoding: "ieee-p1363" }, ec)).toBe(true);
    expect(await n(dev.verify("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msg, ec))).toBe(true);
    const bad = Buffer.from(ec);
    bad[3]! ^= 1;
    expect(await n(dev.verify("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msg, bad))).toBe(false);
    expect(await n(dev.verify("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msg, ec.subarray(1)))).toBe(false);

    const pss = await n(dev.sign("rsa", { name: "RSA_PSS", hash: "sha256", input: "message" }, msg));
    expect(crypto.verify("sha256", msg, { key: pub(spkis.rsa!), padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, pss)).toBe(true);
    const pkcs1 = await n(dev.sign("rsa", { name: "RSA_PKCS1", hash: "sha384", input: "message" }, msg));
    expect(crypto.verify("sha384", msg, pub(spkis.rsa!), pkcs1)).toBe(true);
    const ed = await n(dev.sign("ed", { name: "EDDSA" }, msg));
    expect(crypto.verify(null, msg, pub(spkis.ed!), ed)).toBe(true);

    const oaep = { name: "RSA_OAEP" as const, hash: "sha256" as const, k: 256 };
    const ct = crypto.publicEncrypt({ key: pub(spkis.rsaEnc!), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, Buffer.from("oaep secret"));
    expect((await n(dev.decrypt("rsa-enc", "private", oaep, ct, 256))).toString()).toBe("oaep secret");
    const mine = await n(dev.encrypt("rsa-enc", "public", oaep, Buffer.from("to myself"), 256));
    expect((await n(dev.decrypt("rsa-enc", "private", oaep, mine, 256))).toString()).toBe("to myself");
    ct[10]! ^= 1;
    await expect(n(dev.decrypt("rsa-enc", "private", oaep, ct, 256))).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });

    const iv = crypto.randomBytes(12);
    const aad = Buffer.from("header");
    const pt = crypto.randomBytes(4096);
    const gcm = await n(dev.encrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, pt, pt.length + 16));
    const d = crypto.createDecipheriv("aes-256-gcm", aesKey, iv).setAAD(aad).setAuthTag(gcm.subarray(-16));
    expect(Buffer.concat([d.update(gcm.subarray(0, -16)), d.final()])).toEqual(pt);
    expect(await n(dev.decrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, gcm, gcm.length))).toEqual(pt);
    gcm[gcm.length - 1]! ^= 1;
    await expect(n(dev.decrypt("aes", "secret", { name: "AES_GCM", iv, aad, tagBytes: 16 }, gcm, gcm.length))).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringMatching(/authentication or padding check failed/),
    });
    // A zero-length plaintext (pkcs11js would pass NULL for an empty Buffer): only the tag.
    const empty = await n(dev.encrypt("aes", "secret", { name: "AES_GCM", iv, aad: Buffer.alloc(0), tagBytes: 16 }, Buffer.alloc(0), 16));
    const e2 = crypto.createCipheriv("aes-256-gcm", aesKey, iv);
    e2.final();
    expect(empty).toEqual(e2.getAuthTag());
    const cbcIv = crypto.randomBytes(16);
    const cbc = await n(dev.encrypt("aes", "secret", { name: "AES_CBC_PAD", iv: cbcIv }, Buffer.from("cbc text"), 64));
    const dc = crypto.createDecipheriv("aes-256-cbc", aesKey, cbcIv);
    expect(Buffer.concat([dc.update(cbc), dc.final()]).toString()).toBe("cbc text");

    const tag = await n(dev.sign("hmac", { name: "HMAC", hash: "sha256" }, msg));
    expect(tag).toEqual(hmac(msg));
    expect(await n(dev.sign("hmac", { name: "HMAC", hash: "sha256" }, Buffer.alloc(0)))).toEqual(hmac(Buffer.alloc(0)));
    expect(await n(dev.verify("hmac", { name: "HMAC", hash: "sha256" }, msg, tag))).toBe(true);
    expect(await n(dev.verify("hmac", { name: "HMAC", hash: "sha256" }, Buffer.from("other"), tag))).toBe(false);

    const r1 = await n(dev.random(48));
    const r2 = await n(dev.random(48));
    expect(r1).toHaveLength(48);
    expect(r1.equals(r2)).toBe(false);

    const after = total(dev.workerStats());
    expect(after.ops - before.ops).toBeGreaterThanOrEqual(calls);
    await expect(dev.sign("missing", { name: "HMAC", hash: "sha256" }, msg)).rejects.toThrow(/not materialized/);
  });

  it("many concurrent calls form batches, and every result is right", async () => {
    const before = total(dev.workerStats());
    const msgs = Array.from({ length: 600 }, (_, i) => Buffer.from(`message ${i}`));
    const [tags, sigs] = await Promise.all([
      Promise.all(msgs.map((m) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, m))),
      Promise.all(msgs.slice(0, 200).map((m) => dev.sign("p256", { name: "ECDSA", hash: "sha256", input: "message" }, m))),
    ]);
    tags.forEach((t, i) => expect(t.equals(hmac(msgs[i]!)), `tag ${i}`).toBe(true));
    sigs.forEach((s, i) => expect(crypto.verify("sha256", msgs[i]!, { key: pub(spkis.p256!), dsaEncoding: "ieee-p1363" }, s), `sig ${i}`).toBe(true));
    const after = total(dev.workerStats());
    const ops = after.ops - before.ops;
    const batches = after.batches - before.batches;
    expect(ops).toBeGreaterThanOrEqual(800);
    // Submitted in one turn: the idle workers share the queue, up to 64 items per batch.
    expect(batches).toBeLessThanOrEqual(ops / 8);
    console.log(`[device-workers] ${ops} operations in ${batches} batches; per worker: ${JSON.stringify(dev.workerStats())}`);
  });

  // The worker is terminated between batches, and the load submitted while it is replaced. Ending
  // it in the middle of a batch (worker.terminate() while its thread runs pkcs11js calls) crashed the
  // whole process about one run in three on a fresh clone: SIGSEGV in pkcs11js' Pkcs11::C_Sign on a
  // worker thread, calling through a garbage function-list pointer (gdb on the core: the wrapped
  // Pkcs11 object no longer valid while the thread still ran JS). The pool itself never terminates
  // a busy worker (it waits for idle, or leaves it to the process exit); open defect, see the note.
  it("a worker terminated under load is replaced; no call fails", async () => {
    await dev.terminateWorker(0);
    const msgs = Array.from({ length: 400 }, (_, i) => Buffer.from(`under load ${i}`));
    const settled = Promise.allSettled(msgs.map((m) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, m)));
    const results = await settled;
    const failed = results.filter((r) => r.status === "rejected");
    expect(failed, JSON.stringify(failed.slice(0, 3))).toHaveLength(0);
    results.forEach((r, i) => expect((r as PromiseFulfilledResult<Buffer>).value.equals(hmac(msgs[i]!))).toBe(true));
    // The replacement starts in the background; then both workers take calls again.
    for (let i = 0; i < 200 && dev.workerStats()[0]!.restarts === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(dev.workerStats()[0]!.restarts).toBe(1);
    const before = dev.workerStats()[0]!.ops;
    await Promise.all(Array.from({ length: 300 }, (_, i) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, Buffer.from(`after ${i}`))));
    expect(dev.workerStats()[0]!.ops).toBeGreaterThan(before);
    console.log(`[device-workers] worker 0 terminated between batches; ${results.length} calls during its replacement, none failed`);
  });

  it("a session lost behind the device's back (C_CloseAllSessions) is reopened in the workers and the calls succeed", async () => {
    dev.simulateSessionLoss();
    const msgs = Array.from({ length: 50 }, (_, i) => Buffer.from(`after loss ${i}`));
    const tags = await Promise.all(msgs.map((m) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, m)));
    tags.forEach((t, i) => expect(t.equals(hmac(msgs[i]!))).toBe(true));
    const sig = await dev.sign("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msgs[0]!);
    expect(crypto.verify("sha256", msgs[0]!, { key: pub(spkis.p256!), dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
  });
});

describe("a module re-initialization under load (process-wide: C_Finalize on the main thread only)", () => {
  it("pauses the workers, finalizes and initializes once, reopens their sessions; every call in flight succeeds", async () => {
    // An essential object that is not there makes the fault check re-initialize the module.
    dev.markEssential("never-there", "secret");
    const msgs = Array.from({ length: 300 }, (_, i) => Buffer.from(`across re-init ${i}`));
    const calls = Promise.allSettled(msgs.map((m) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, m)));
    const checked = dev.faults.check();
    const more = Promise.allSettled(msgs.map((m) => dev.sign("p256", { name: "ECDSA", hash: "sha256", input: "message" }, m)));
    expect(await checked).toBe(false); // re-initialized, and the object is still not there
    expect(logs.filter((l) => /module re-initialized/.test(l))).toHaveLength(1);
    const [tags, sigs] = await Promise.all([calls, more]);
    const failed = [...tags, ...sigs].filter((r) => r.status === "rejected");
    expect(failed, JSON.stringify(failed.slice(0, 3))).toHaveLength(0);
    tags.forEach((r, i) => expect((r as PromiseFulfilledResult<Buffer>).value.equals(hmac(msgs[i]!))).toBe(true));
    sigs.forEach((r, i) => expect(crypto.verify("sha256", msgs[i]!, { key: pub(spkis.p256!), dsaEncoding: "ieee-p1363" }, (r as PromiseFulfilledResult<Buffer>).value)).toBe(true));
    const stats = dev.workerStats();
    expect(stats.every((w) => !w.busy)).toBe(true);
    // Both workers took calls after it (their sessions reopened).
    const before = stats.map((w) => w.ops);
    await Promise.all(Array.from({ length: 200 }, (_, i) => dev.sign("hmac", { name: "HMAC", hash: "sha256" }, Buffer.from(`after re-init ${i}`))));
    dev.workerStats().forEach((w, i) => expect(w.ops, `worker ${i}`).toBeGreaterThan(before[i]!));
  });
});

describe("session workers and the process's life", () => {
  // From dist/ (the daemon's layout): the compiled worker entry, no vitest around it.
  const script = (close: boolean) => `
    const { Device } = require(${JSON.stringify(join(__dirname, "../../dist/src/pkcs11"))});
    Device.open({ module: ${JSON.stringify(SOFTHSM_MODULE)}, tokenLabel: ${JSON.stringify(token.label)}, pin: process.env.PIN, poolSize: 2, tokenObjects: false, workers: 2 })
      .then(async (d) => {
        // Nothing but the worker's answer is pending here: a worker that owes one keeps the process alive.
        const r = await d.random(24);
        process.stdout.write("random " + r.length + " workers " + d.workerStats().map((w) => w.ops).join(","));
        ${close ? "await d.close();" : "/* left open: idle workers must not hold the process */"}
      });`;
  it.each([true, false])("a script that awaits a worker's answer gets it, then exits on its own (closed: %s)", (close) => {
    const out = execFileSync(process.execPath, ["-e", script(close)], { env: { ...process.env, PIN: token.pin }, timeout: 30_000, encoding: "utf8" });
    expect(out).toMatch(/^random 24 workers (1,0|0,1)$/);
  });
});

describe("device without session workers (workers: 0)", () => {
  it("runs the hot path on the main thread's pool, with the same answers", async () => {
    await dev.close();
    const d0 = await Device.open({ module: SOFTHSM_MODULE, tokenLabel: token.label, pin: token.pin, poolSize: 4, tokenObjects: true, sessionCopies: true, workers: 0 });
    try {
      expect(d0.workerStats()).toEqual([]);
      const msg = Buffer.from("on the main thread");
      expect(await d0.sign("hmac", { name: "HMAC", hash: "sha256" }, msg)).toEqual(hmac(msg));
      const sig = await d0.sign("p256", { name: "ECDSA", hash: "sha256", input: "message" }, msg);
      expect(crypto.verify("sha256", msg, { key: pub(spkis.p256!), dsaEncoding: "ieee-p1363" }, sig)).toBe(true);
      const iv = crypto.randomBytes(12);
      const gcm = await d0.encrypt("aes", "secret", { name: "AES_GCM", iv, aad: Buffer.alloc(0), tagBytes: 16 }, msg, msg.length + 16);
      const dd = crypto.createDecipheriv("aes-256-gcm", aesKey, iv).setAuthTag(gcm.subarray(-16));
      expect(Buffer.concat([dd.update(gcm.subarray(0, -16)), dd.final()])).toEqual(msg);
      expect(await d0.random(16)).toHaveLength(16);
    } finally {
      await d0.close();
    }
  });
});
