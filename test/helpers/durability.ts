/**
 * The daemon process of durability.test.ts and what it inspects it with: restarts, the start-up
 * reconcile line, the token's objects as pkcs11-tool sees them, a key's usability, and the leak scan.
 */
import { afterAll, beforeAll, expect } from "vitest";
import * as crypto from "node:crypto";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { EncryptionAlgorithm, HsmClient, KeySpec, SigningAlgorithm, type Key } from "../../src/sdk";
import { userClient } from "./users";
import { buildDist, startDaemonProcess, type DaemonProcess } from "./daemon-process";
import { pkcs11Tool } from "./softhsm";

/** The daemon and a crypto user's client for its current run (see useDurabilityDaemon, reconnect). */
export let dp: DaemonProcess;
export let c: HsmClient;

/** Builds dist, starts the daemon process and logs a crypto user in before the calling file's tests; stops it after them. */
export function useDurabilityDaemon(): void {
  beforeAll(async () => {
    buildDist();
    dp = await startDaemonProcess();
    c = await userClient(dp);
  }, 120_000);
  afterAll(async () => {
    c?.close();
    await dp?.cleanup();
  });
}

/** A new client for the current run (each run binds fresh ports). */
export async function reconnect(): Promise<void> {
  c.close();
  c = await userClient(dp);
}

/** Graceful stop (SIGTERM, exit code 0) and a new run on the same token and data dir. */
export async function gracefulRestart(): Promise<void> {
  dp.kill("SIGTERM");
  expect(await dp.waitExit()).toEqual({ code: 0, signal: null });
  await dp.restart();
  await reconnect();
}

/** The last "records checked against the token" line of stderr, as numbers. */
export function lastReconcile(): { keys: number; materialized: number; upgraded: number; restored: number; quarantined: number; purged: number; lost: boolean } {
  const all = [
    ...dp
      .stderr()
      .matchAll(
        /records checked against the token(?: in \d+ ms)?: (\d+) keys, (\d+) materialized, (\d+) made unextractable, (\d+) restored from quarantine, (\d+) quarantined, (\d+) purged(, \d+ LOST)?/g,
      ),
  ];
  const m = all[all.length - 1];
  if (!m) throw new Error(`no reconcile line in stderr:\n${dp.stderr()}`);
  const [keys, materialized, upgraded, restored, quarantined, purged] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  return { keys, materialized, upgraded, restored, quarantined, purged, lost: !!m[7] };
}

/** The ids (CKA_LABEL "hsmd:<id>") of every hsmd object in the token, as pkcs11-tool sees them. */
export function tokenIds(): Set<string> {
  const out = pkcs11Tool(dp.token, ["--list-objects"]);
  return new Set([...out.matchAll(/label:\s+hsmd:(\S+)/g)].map((m) => m[1]!));
}

/** Every key the client lists. */
export async function listedIds(): Promise<Key[]> {
  const keys: Key[] = [];
  for await (const k of c.listAllKeys({ pageSize: 1000 })) keys.push(k);
  return keys;
}

/** The domain key's id, from the admin status. */
export async function domainKeyId(): Promise<string> {
  const s = (await (await fetch(`${dp.admin}/v1/status`)).json()) as { domainKeyId: string };
  expect(s.domainKeyId).toMatch(/^hsmd-domain-/);
  return s.domainKeyId;
}

/** The algorithms the tests use. */
export const GCM = EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
export const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
export const HMAC = SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256;
/** A key's public key, for Node's crypto. */
export const spkiOf = (k: Key) => crypto.createPublicKey({ key: Buffer.from(k.publicKeySpki), format: "der", type: "spki" });

/** Throws unless the key works: AES encrypt→decrypt round trip; EC sign checked by Node; HMAC tag checked by verify. */
export async function assertUsable(k: Key): Promise<void> {
  const msg = Buffer.from(`usable ${k.id}`);
  if (k.spec === KeySpec.KEY_SPEC_AES_256) {
    const e = await c.encrypt({ keyId: k.id, algorithm: GCM, plaintext: msg });
    const d = await c.decrypt({ keyId: k.id, algorithm: GCM, ciphertext: e.ciphertext, iv: e.iv });
    expect(Buffer.from(d.plaintext)).toEqual(msg);
  } else if (k.spec === KeySpec.KEY_SPEC_EC_P256) {
    const s = await c.sign({ keyId: k.id, algorithm: ECDSA, message: msg });
    expect(crypto.verify("sha256", msg, spkiOf(k), Buffer.from(s.signature))).toBe(true);
  } else {
    throw new Error(`unexpected key spec ${k.spec} of ${k.id}`);
  }
}

/** Runs fn over items with at most `limit` in flight. */
export async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** Every regular file under dir, recursively. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

/** The encodings a secret could leak under. */
export function encodings(name: string, b: Buffer): Array<{ what: string; bytes: Buffer }> {
  return [
    { what: `${name} raw`, bytes: b },
    { what: `${name} hex`, bytes: Buffer.from(b.toString("hex")) },
    { what: `${name} HEX`, bytes: Buffer.from(b.toString("hex").toUpperCase()) },
    { what: `${name} base64`, bytes: Buffer.from(b.toString("base64").replace(/=+$/, "")) },
    { what: `${name} base64url`, bytes: Buffer.from(b.toString("base64url")) },
  ];
}

/** Which needles occur in which haystacks. */
export function findLeaks(haystacks: Array<{ name: string; data: Buffer }>, needles: Array<{ what: string; bytes: Buffer }>): string[] {
  const hits: string[] = [];
  for (const h of haystacks) for (const n of needles) if (h.data.includes(n.bytes)) hits.push(`${n.what} in ${h.name}`);
  return hits;
}
