import * as crypto from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EncryptionAlgorithm, HsmClient, HsmClientError, KeySpec, KeyUsage, SigningAlgorithm, wrapForImport } from "../../src/sdk";
import { eventually } from "../helpers/cluster";
import { buildDist, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { freePort } from "../helpers/etcd";
import { officerClient, USER_PASSWORD, userClient } from "../helpers/users";

// The SDK's crypto methods over the crypto stream (the default), against a real daemon in a child
// process (so that it can be stopped with SIGSTOP and restarted on the same ports), checked with
// Node's crypto and against the same calls made unary (`cryptoStream: false`).

let dp: DaemonProcess;
let reach: { grpc: string; dataDir: string };
/** alice over the stream (the default) and alice unary, each its own session. */
let s: HsmClient;
let u: HsmClient;
const clients: HsmClient[] = [];
const ids = { ec: "", rsa: "", hmac: "", aes: "", bobs: "" };
const secrets = { hmac: crypto.randomBytes(32), aes: crypto.randomBytes(32) };
let ecPem = "";
let rsaPem = "";

const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
const PSS = SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256;
const HMAC = SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256;
const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;

function track(c: HsmClient): HsmClient {
  clients.push(c);
  return c;
}

/** A client of the daemon that logs in as alice again whenever its session ends. */
function reloggingClient(options: Partial<ConstructorParameters<typeof HsmClient>[0]> = {}): HsmClient {
  return track(new HsmClient({ endpoint: dp.grpc, defaultDeadlineMs: 20_000, credentials: async () => ({ username: "alice", password: USER_PASSWORD }), ...options }));
}

async function importSecret(c: HsmClient, spec: KeySpec, material: Buffer, usages: KeyUsage[]): Promise<string> {
  const p = await c.getImportParameters({});
  const blob = wrapForImport(Buffer.from(p.publicKeySpki), material, p.wrappingAlgorithm);
  return (await c.importKey({ spec, label: "stream-imported", usages, importKeyId: p.importKeyId, wrappedKeyMaterial: blob })).id;
}

/** The HsmClientError `p` rejects with. */
async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  const e = await p.then(
    () => new Error("expected the call to reject"),
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(HsmClientError);
  return e as HsmClientError;
}

const verifiesEc = (message: Buffer, signature: Uint8Array) => crypto.verify("sha256", message, ecPem, signature);

beforeAll(async () => {
  buildDist();
  dp = await startDaemonProcess({ config: { listen: { grpc: `127.0.0.1:${await freePort()}`, admin: `127.0.0.1:${await freePort()}` } } });
  reach = { grpc: dp.grpc, dataDir: dp.dataDir };
  s = track(await userClient(reach, "alice"));
  u = track(await userClient(reach, "alice", { cryptoStream: false }));
  ids.ec = (await u.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "stream-ec" })).id;
  ids.rsa = (await u.generateKey({ spec: KeySpec.KEY_SPEC_RSA_2048, label: "stream-rsa" })).id;
  ids.hmac = await importSecret(u, KeySpec.KEY_SPEC_HMAC_SHA256, secrets.hmac, [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY]);
  ids.aes = await importSecret(u, KeySpec.KEY_SPEC_AES_256, secrets.aes, [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT]);
  ecPem = (await u.getPublicKey({ keyId: ids.ec })).pem;
  rsaPem = (await u.getPublicKey({ keyId: ids.rsa })).pem;
  const bob = track(await userClient(reach, "bob", { cryptoStream: false }));
  ids.bobs = (await bob.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "bobs" })).id;
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await dp?.cleanup();
});

describe("every streamed method, checked with Node's crypto", () => {
  it("sign and verify (ECDSA P-256, RSA-PSS, HMAC), encrypt and decrypt (AES-GCM), random bytes, data keys", async () => {
    const before = s.streamStats;
    const msg = Buffer.from("over the crypto stream");

    const ec = await s.sign({ keyId: ids.ec, algorithm: ECDSA, message: msg });
    expect(verifiesEc(msg, ec.signature)).toBe(true);
    expect((await s.verify({ keyId: ids.ec, algorithm: ECDSA, message: msg, signature: ec.signature })).valid).toBe(true);
    expect((await s.verify({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("other"), signature: ec.signature })).valid).toBe(false);

    const rsa = await s.sign({ keyId: ids.rsa, algorithm: PSS, message: msg });
    expect(crypto.verify("sha256", msg, { key: rsaPem, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, rsa.signature)).toBe(true);

    const mac = await s.sign({ keyId: ids.hmac, algorithm: HMAC, message: msg });
    expect(Buffer.from(mac.signature)).toEqual(crypto.createHmac("sha256", secrets.hmac).update(msg).digest());
    expect((await s.verify({ keyId: ids.hmac, algorithm: HMAC, message: msg, signature: mac.signature })).valid).toBe(true);

    const pt = crypto.randomBytes(4096);
    const aad = Buffer.from("record-7");
    const e = await s.encrypt({ keyId: ids.aes, algorithm: GCM, plaintext: pt, aad });
    const ct = Buffer.from(e.ciphertext);
    const d = crypto.createDecipheriv("aes-256-gcm", secrets.aes, e.iv).setAAD(aad).setAuthTag(ct.subarray(-16));
    expect(Buffer.concat([d.update(ct.subarray(0, -16)), d.final()])).toEqual(pt);
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv("aes-256-gcm", secrets.aes, iv).setAAD(aad);
    const nodeCt = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
    expect(Buffer.from((await s.decrypt({ keyId: ids.aes, algorithm: GCM, ciphertext: nodeCt, aad, iv })).plaintext)).toEqual(pt);

    const r1 = await s.generateRandom({ length: 64 });
    const r2 = await s.generateRandom({ length: 64 });
    expect([r1.random.length, r2.random.length]).toEqual([64, 64]);
    expect(Buffer.from(r1.random).equals(Buffer.from(r2.random))).toBe(false);

    const context = { tenant: "acme" };
    const dk = await s.generateDataKey({ keyId: ids.aes, encryptionContext: context });
    const dkIv = crypto.randomBytes(12);
    const sealed = crypto.createCipheriv("aes-256-gcm", dk.plaintextDataKey, dkIv);
    const body = Buffer.concat([sealed.update("payload"), sealed.final()]);
    const back = await s.decryptDataKey({ keyId: ids.aes, wrappedDataKey: dk.wrappedDataKey, encryptionContext: context });
    const opened = crypto.createDecipheriv("aes-256-gcm", back.plaintextDataKey, dkIv).setAuthTag(sealed.getAuthTag());
    expect(Buffer.concat([opened.update(body), opened.final()]).toString()).toBe("payload");
    const only = await s.generateDataKeyWithoutPlaintext({ keyId: ids.aes });
    expect(only.plaintextDataKey.length).toBe(0);
    expect((await s.decryptDataKey({ keyId: ids.aes, wrappedDataKey: only.wrappedDataKey })).plaintextDataKey.length).toBe(32);

    // All 14 went over the stream, none fell back to unary calls; the unary client used none.
    expect(s.streamStats.answered - before.answered).toBe(14);
    expect(s.streamStats.fallbacks).toBe(0);
    expect(s.streamStats.open).toBe(1);
    expect(u.streamStats).toEqual({ open: 0, answered: 0, fallbacks: 0 });
  });
});

describe("errors", () => {
  it("are the unary call's errors: the same code and message for the same bad input", async () => {
    const bad: Array<[string, (c: HsmClient) => Promise<unknown>]> = [
      ["unknown key", (c) => c.sign({ keyId: "no-such-key", algorithm: ECDSA, message: Buffer.from("m") })],
      ["another user's key", (c) => c.sign({ keyId: ids.bobs, algorithm: ECDSA, message: Buffer.from("m") })],
      ["an HMAC algorithm on an EC key", (c) => c.sign({ keyId: ids.ec, algorithm: HMAC, message: Buffer.from("m") })],
      ["no algorithm", (c) => c.sign({ keyId: ids.ec, message: Buffer.from("m") })],
      ["verify with an AES key", (c) => c.verify({ keyId: ids.aes, algorithm: ECDSA, message: Buffer.from("m"), signature: Buffer.alloc(64) })],
      ["encrypt with an EC key", (c) => c.encrypt({ keyId: ids.ec, algorithm: GCM, plaintext: Buffer.from("m") })],
      ["a tampered ciphertext", (c) => c.decrypt({ keyId: ids.aes, algorithm: GCM, ciphertext: Buffer.alloc(40, 1), iv: Buffer.alloc(12) })],
      ["an IV of the wrong length", (c) => c.decrypt({ keyId: ids.aes, algorithm: GCM, ciphertext: Buffer.alloc(40, 1), iv: Buffer.alloc(3) })],
      ["a payload over limits.maxPayloadBytes", (c) => c.sign({ keyId: ids.hmac, algorithm: HMAC, message: Buffer.alloc(65_537) })],
      ["too many random bytes", (c) => c.generateRandom({ length: 1_000_000 })],
      ["no random bytes", (c) => c.generateRandom({ length: 0 })],
      ["a data key with the wrong context", (c) => c.decryptDataKey({ keyId: ids.aes, wrappedDataKey: Buffer.from("HDK1 not really"), encryptionContext: { a: "b" } })],
      ["a data key under an EC key", (c) => c.generateDataKey({ keyId: ids.ec })],
    ];
    for (const [what, call] of bad) {
      const before = s.streamStats.answered;
      const viaStream = await rejection(call(s));
      const viaUnary = await rejection(call(u));
      expect({ what, code: viaStream.codeName, details: viaStream.details }).toEqual({ what, code: viaUnary.codeName, details: viaUnary.details });
      expect(viaStream.details).not.toBe("");
      expect(s.streamStats.answered, `${what}: answered on the stream`).toBe(before + 1);
    }
    expect(s.streamStats.fallbacks).toBe(0);
  });

  it("gives a crypto officer, whom the daemon refuses the stream, the unary call's answer", async () => {
    const co = track(await officerClient(reach));
    const coUnary = track(await officerClient(reach, { cryptoStream: false }));
    const viaStream = await rejection(co.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") }));
    const viaUnary = await rejection(coUnary.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") }));
    expect({ code: viaStream.codeName, details: viaStream.details }).toEqual({ code: viaUnary.codeName, details: viaUnary.details });
    expect(viaStream.codeName).toBe("PERMISSION_DENIED");
    expect(co.streamStats.fallbacks).toBe(1);
  });
});

describe("deadlines, cancellation and load", () => {
  it("rejects an operation past its deadline or aborted while the daemon cannot answer, and drops the late answers", async () => {
    const c = track(await userClient(reach, "alice"));
    const msg = Buffer.from("before the pause");
    await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: msg }); // the stream is open
    process.kill(dp.pid, "SIGSTOP");
    try {
      const late = rejection(c.sign({ keyId: ids.ec, algorithm: ECDSA, message: msg }, { deadlineMs: 300 }));
      const ac = new AbortController();
      const aborted = rejection(c.sign({ keyId: ids.ec, algorithm: ECDSA, message: msg }, { signal: ac.signal }));
      setTimeout(() => ac.abort(), 100);
      expect((await late).codeName).toBe("DEADLINE_EXCEEDED");
      expect((await aborted).codeName).toBe("CANCELLED");
      expect(c.streamStats.open).toBe(1);
    } finally {
      process.kill(dp.pid, "SIGCONT");
    }
    // The daemon answers the two abandoned operations; the client drops those answers, and the next
    // operations on the same stream get their own.
    for (let i = 0; i < 5; i++) {
      const m = Buffer.from(`after the pause ${i}`);
      expect(verifiesEc(m, (await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: m })).signature)).toBe(true);
    }
    expect(c.streamStats).toMatchObject({ open: 1, fallbacks: 0 });
    expect(c.stats).toMatchObject({ failures: 2 });
  });

  it("carries many concurrent calls (beyond the 256 in flight, the rest queued) on one stream, each answer its own", async () => {
    const c = track(await userClient(reach, "alice"));
    const n = 1000;
    const messages = Array.from({ length: n }, (_, i) => Buffer.from(`concurrent ${i}`));
    const signatures = await Promise.all(messages.map((message) => c.sign({ keyId: ids.hmac, algorithm: HMAC, message })));
    for (let i = 0; i < n; i++) expect(Buffer.from(signatures[i]!.signature)).toEqual(crypto.createHmac("sha256", secrets.hmac).update(messages[i]!).digest());
    expect(c.streamStats).toEqual({ open: 1, answered: n, fallbacks: 0 });
    expect(c.stats).toMatchObject({ calls: n + 1, failures: 0 }); // + the login
  });
});

describe("sessions and restarts", () => {
  it("ends with UNAUTHENTICATED when the session is logged out elsewhere, as the unary call does", async () => {
    const c = track(await userClient(reach, "alice"));
    await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") });
    expect(c.streamStats.open).toBe(1);
    const token = c.exportSession()!.token;
    const elsewhere = track(new HsmClient({ endpoint: dp.grpc, cryptoStream: false }));
    elsewhere.useToken(token);
    await elsewhere.logout();
    // The daemon ends the stream of the revoked session on its own.
    await eventually(() => c.streamStats.open === 0, "the stream of the logged-out session ended", 10_000, 20);
    const unary = track(new HsmClient({ endpoint: dp.grpc, cryptoStream: false }));
    unary.useToken(token);
    const viaStream = await rejection(c.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") }));
    const viaUnary = await rejection(unary.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") }));
    expect({ code: viaStream.codeName, details: viaStream.details }).toEqual({ code: viaUnary.codeName, details: viaUnary.details });
    expect(viaStream.codeName).toBe("UNAUTHENTICATED");
  });

  it("logs in again with its credentials when the stream's session is revoked, and carries on", async () => {
    const c = reloggingClient();
    await c.login("alice", USER_PASSWORD);
    await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: Buffer.from("m") });
    const elsewhere = track(new HsmClient({ endpoint: dp.grpc, cryptoStream: false }));
    elsewhere.useToken(c.exportSession()!.token);
    await elsewhere.logout();
    await eventually(() => c.streamStats.open === 0, "the stream of the logged-out session ended", 10_000, 20);
    const m = Buffer.from("after the revocation");
    expect(verifiesEc(m, (await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: m })).signature)).toBe(true);
    expect(c.stats).toMatchObject({ relogins: 1, failures: 0 });
    expect(c.streamStats).toMatchObject({ open: 1, fallbacks: 0 });
  });

  it("logs in again and re-sends when the session is revoked under load, losing no operation", async () => {
    const c = reloggingClient();
    await c.login("alice", USER_PASSWORD);
    const token = c.exportSession()!.token;
    let stop = false;
    let done = 0;
    const failures: string[] = [];
    const loops = Array.from({ length: 8 }, async (_, i) => {
      for (let n = 0; !stop; n++) {
        const message = Buffer.from(`revoked under load ${i} ${n}`);
        try {
          const { signature } = await c.sign({ keyId: ids.hmac, algorithm: HMAC, message });
          expect(Buffer.from(signature)).toEqual(crypto.createHmac("sha256", secrets.hmac).update(message).digest());
          done += 1;
        } catch (e) {
          failures.push((e as Error).message);
        }
      }
    });
    await eventually(() => done > 200, "the load is running", 10_000, 10);
    const elsewhere = track(new HsmClient({ endpoint: dp.grpc, cryptoStream: false }));
    elsewhere.useToken(token);
    await elsewhere.logout();
    await eventually(() => c.stats.relogins === 1 && c.exportSession()?.token !== token, "the client logged in again", 10_000, 10);
    const after = done;
    await eventually(() => done > after + 200, "the load goes on under the new session", 10_000, 10);
    stop = true;
    await Promise.all(loops);
    expect(failures).toEqual([]);
    expect(c.stats).toMatchObject({ relogins: 1, failures: 0 });
    expect(c.streamStats.fallbacks).toBe(0);
  });

  it("moves to a new stream when the session is refreshed under load, losing no operation", async () => {
    const c = track(await userClient(reach, "alice"));
    const messages = Array.from({ length: 600 }, (_, i) => Buffer.from(`refresh ${i}`));
    const pending = messages.map((message) => c.sign({ keyId: ids.hmac, algorithm: HMAC, message }));
    const oldToken = c.exportSession()!.token;
    await c.refreshSession(); // the old token stops working: the daemon ends the streams opened with it
    expect(c.exportSession()!.token).not.toBe(oldToken);
    const more = messages.map((message) => c.sign({ keyId: ids.hmac, algorithm: HMAC, message }));
    const signatures = await Promise.all([...pending, ...more]);
    for (let i = 0; i < signatures.length; i++) {
      expect(Buffer.from(signatures[i]!.signature)).toEqual(
        crypto
          .createHmac("sha256", secrets.hmac)
          .update(messages[i % messages.length]!)
          .digest(),
      );
    }
    expect(c.stats).toMatchObject({ failures: 0, relogins: 0 });
    expect(c.streamStats.fallbacks).toBe(0);
    await eventually(() => c.streamStats.open === 1, "only the new token's stream is left", 10_000, 20);
  });

  it("reconnects after the daemon restarts (gracefully, and after kill -9)", async () => {
    // Retries spread over several seconds: the channel's reconnect backoff may outlast the restart itself.
    const c = reloggingClient({ retry: { maxAttempts: 40, initialBackoffMs: 50, maxBackoffMs: 500 } });
    const m = Buffer.from("across restarts");
    expect(verifiesEc(m, (await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: m })).signature)).toBe(true);
    await dp.restart(); // SIGTERM, then the same daemon again on the same ports
    expect(verifiesEc(m, (await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: m })).signature)).toBe(true);
    dp.kill("SIGKILL");
    await dp.waitExit();
    await dp.restart();
    expect(verifiesEc(m, (await c.sign({ keyId: ids.ec, algorithm: ECDSA, message: m })).signature)).toBe(true);
    expect(c.streamStats).toMatchObject({ answered: 3, fallbacks: 0 });
    expect(c.stats.failures).toBe(0);
  });
});
