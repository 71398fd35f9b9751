import type * as pk from "pkcs11js";
import { CKR, isHandleStale, isSessionLost, mapDeviceError } from "./ckr";
import { mechanismName } from "./constants";
import { cryptoHandle } from "./handles";
import type { DeviceCore } from "./run";
import type { Part } from "./types";
import { NoWorkerAvailable, type HotRequest } from "./worker-pool";
import type { HotKind, WireError } from "./worker-protocol";

/** The key a hot-path call uses: its id and part, resolved to a handle on the main thread. */
export interface KeyRef {
  id: string;
  part: Part;
}

/** One hot-path call as crypto.ts states it: the kind, the mechanism, the input, the output size. */
export interface HotCall {
  kind: HotKind;
  mech?: pk.Mechanism;
  data: Buffer;
  signature?: Buffer;
  outLen: number;
}

/**
 * pkcs11js passes a NULL pointer for a zero-length Buffer, which SoftHSM2 refuses with
 * CKR_ARGUMENTS_BAD; a zero-length view of a real allocation passes a valid pointer and length 0.
 */
function ptr(b: Buffer): Buffer {
  return b.length === 0 ? Buffer.alloc(1).subarray(0, 0) : b;
}

/**
 * Runs one hot-path call (sign, verify, encrypt, decrypt, random) and answers as today's pooled
 * run does: a Buffer (or a verdict), or an HsmError mapped from the CKR by ckr.ts. With session
 * workers (DeviceOptions.workers ≥ 1) the handle is resolved here exactly as before (cryptoHandle:
 * the cache, else a search on a main-thread session) and the call goes to a worker; a stale handle
 * clears the cache and is retried once, a session the worker lost (reopened by the pool) is retried
 * once per worker. Without workers, or when none can take the call, it runs on the main thread's pool:
 * `*Init` synchronous, the call through pkcs11js' async form on libuv's thread pool.
 */
export async function runHot(c: DeviceCore, op: string, key: KeyRef | undefined, call: HotCall): Promise<Buffer | boolean> {
  const workers = c.workers;
  if (!workers) return onMain(c, op, key, call);
  let staleRetry = true;
  // Every worker's session may have been lost at once (a token event, C_CloseAllSessions): each
  // failure reopens the session of the worker that answered it, and the retry may land on another,
  // so a lost session is retried once per worker.
  let sessionRetries = workers.size;
  for (;;) {
    const handle = key ? (cachedCryptoHandle(c, key) ?? (await c.run(op, undefined, (s) => cryptoHandle(c, s, key.id, key.part)))) : undefined;
    const req: HotRequest = { kind: call.kind, mech: call.mech, key: handle, data: call.data, signature: call.signature, outLen: call.outLen };
    let outcome: Awaited<ReturnType<typeof workers.submit>>;
    try {
      outcome = await workers.submit(req);
    } catch (e) {
      if (e instanceof NoWorkerAvailable) return onMain(c, op, key, call);
      throw mapDeviceError(e, op);
    }
    if (call.mech && c.opts.observer) c.opts.observer(mechanismName(call.mech.mechanism), outcome.secs, !outcome.error);
    if (!outcome.error) return outcome.value;
    const err = pkcs11Error(outcome.error);
    const ckr = outcome.error.code;
    if (staleRetry && isHandleStale(ckr)) {
      c.cache.clear();
      staleRetry = false;
      continue;
    }
    if (sessionRetries > 0 && (isSessionLost(ckr) || ckr === CKR.OPERATION_ACTIVE)) {
      sessionRetries--;
      continue;
    }
    throw mapDeviceError(err, op);
  }
}

/** Today's path: one pooled main-thread session, `*Init` on the event loop, the call on libuv's pool. */
async function onMain(c: DeviceCore, op: string, key: KeyRef | undefined, call: HotCall): Promise<Buffer | boolean> {
  const mech = call.mech;
  if (call.kind === "random") return c.run(op, undefined, (s) => Buffer.from(c.p11.C_GenerateRandom(s, Buffer.alloc(call.outLen))));
  const out = await c.run(op, mech!.mechanism, (s): Promise<Buffer | boolean> => {
    const h = cryptoHandle(c, s, key!.id, key!.part);
    switch (call.kind) {
      case "sign":
        c.p11.C_SignInit(s, mech!, h);
        return c.p11.C_SignAsync(s, ptr(call.data), Buffer.alloc(call.outLen));
      case "verify":
        c.p11.C_VerifyInit(s, mech!, h);
        return c.p11.C_VerifyAsync(s, ptr(call.data), ptr(call.signature!));
      case "encrypt":
        c.p11.C_EncryptInit(s, mech!, h);
        return c.p11.C_EncryptAsync(s, ptr(call.data), Buffer.alloc(call.outLen));
      case "decrypt":
        c.p11.C_DecryptInit(s, mech!, h);
        return c.p11.C_DecryptAsync(s, ptr(call.data), Buffer.alloc(call.outLen));
      case "random":
        throw new Error("unreachable: random has no key");
    }
  });
  if (typeof out === "boolean") return out;
  const copy = Buffer.from(out);
  if (call.kind === "decrypt") out.fill(0); // no second plaintext left in the output allocation
  return copy;
}

/** The handle cryptoHandle would return without a device call, if it has one cached. */
function cachedCryptoHandle(c: DeviceCore, key: KeyRef): Buffer | undefined {
  const copy = c.cache.copies.get(key.id)?.[key.part];
  if (copy) return copy;
  const kept = c.cache.kept.get(key.id)?.[key.part];
  if (kept && (!c.opts.tokenObjects || !c.opts.sessionCopies || c.cache.noCopy.has(key.id))) return kept;
  return undefined;
}

/** A worker's CKR failure as the error pkcs11js would have thrown here (what ckr.ts reads: the CKR_* message and the code). */
function pkcs11Error(w: WireError): Error {
  return Object.assign(new Error(w.message), { name: "Pkcs11Error", ...(w.code === undefined ? {} : { code: w.code }) });
}
