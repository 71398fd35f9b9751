/**
 * A session worker's entry (worker_threads): takes the hot path (C_*Init + C_Sign, C_Verify,
 * C_Encrypt, C_Decrypt, C_GenerateRandom) off the main thread's event loop. It loads pkcs11js,
 * C_Initialize with CKF_OS_LOCKING_OK (CKR_CRYPTOKI_ALREADY_INITIALIZED is success: the module's state
 * is process-wide), opens its own session when told to (the main thread orders session openings one
 * at a time), logs in (CKR_USER_ALREADY_LOGGED_IN is success: login state is per process), and runs
 * each posted batch synchronously, answering one message with every item's output or CKR value.
 * It never calls C_Finalize: only the main thread does (worker-pool.ts, run.ts).
 *
 * Self-contained on purpose: no runtime import from src/ (types only), so that the same file runs
 * compiled from dist/ and, under vitest, transpiled once from source (worker-spawn.ts).
 */
import { parentPort, workerData } from "node:worker_threads";
import * as pk from "pkcs11js";
import type { FromWorker, SessionWorkerData, ToWorker, WireBytes, WireError, WireItem, WireMechanism, WireResult } from "./worker-protocol";

const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const CKR_USER_ALREADY_LOGGED_IN = 0x100;
const CKR_OPERATION_ACTIVE = 0x90;
/** worker-protocol.ts NOT_RUN (a type-only import cannot carry it). */
const NOT_RUN = -1;
/** CKR values after which this session is unusable until reopened (run.ts/ckr.ts isSessionLost, plus an operation left active). */
const SESSION_BROKEN = new Set([0xb3, 0xb0, 0x101, 0x32, 0x30, 0xe0, 0xe1, 0x190, CKR_OPERATION_ACTIVE]);

const p11 = new pk.PKCS11();
const data = workerData as SessionWorkerData;
let session: Buffer | undefined;

function wireError(e: unknown): WireError {
  const code = (e as { code?: unknown })?.code;
  const message = String((e as Error)?.message ?? e);
  return typeof code === "number" && message.startsWith("CKR_") ? { message, code } : { message };
}

/** Uint8Array (structured clone's form of a Buffer) back into a Buffer over the same memory. */
function buf(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** The bytes a {@link WireBytes} names in the batch's input buffer (a view, no copy). */
function bytes(input: Buffer, b: WireBytes): Buffer {
  return input.subarray(b.at, b.at + b.len);
}

/** The mechanism for pkcs11js, its byte fields as views of the batch's input buffer. */
function mechanism(m: WireMechanism, input: Buffer): pk.Mechanism {
  if (m.bytes) return { mechanism: m.mechanism, parameter: bytes(input, m.bytes) };
  if (m.fields) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(m.fields)) out[k] = typeof v === "object" && v !== null ? bytes(input, v) : v;
    return { mechanism: m.mechanism, parameter: out as unknown as pk.Mechanism["parameter"] };
  }
  return { mechanism: m.mechanism };
}

/**
 * A view of `len` bytes; pkcs11js passes a NULL pointer for a zero-length Buffer (SoftHSM2 refuses it
 * with CKR_ARGUMENTS_BAD), a zero-length view of a real allocation a valid one (as crypto.ts ptr()).
 */
function view(b: Buffer, off: number, len: number): Buffer {
  return len === 0 ? Buffer.alloc(1).subarray(0, 0) : b.subarray(off, off + len);
}

/** Puts `r` (pkcs11js' answer) into the item's output slot when pkcs11js handed back other memory; returns its length. */
function place(r: Buffer, slot: Buffer): number {
  if (r.buffer !== slot.buffer || r.byteOffset !== slot.byteOffset) r.copy(slot);
  return r.length;
}

function runItem(s: Buffer, it: WireItem, input: Buffer, out: Buffer, outOff: number): number {
  const slot = out.subarray(outOff, outOff + it.outLen);
  const inData = view(input, it.inOff, it.inLen);
  switch (it.kind) {
    case "sign":
      p11.C_SignInit(s, mechanism(it.mech!, input), bytes(input, it.key!));
      return place(p11.C_Sign(s, inData, slot), slot);
    case "verify":
      p11.C_VerifyInit(s, mechanism(it.mech!, input), bytes(input, it.key!));
      return p11.C_Verify(s, inData, view(input, it.sigOff!, it.sigLen!)) ? 1 : 0;
    case "encrypt":
      p11.C_EncryptInit(s, mechanism(it.mech!, input), bytes(input, it.key!));
      return place(p11.C_Encrypt(s, inData, slot), slot);
    case "decrypt":
      p11.C_DecryptInit(s, mechanism(it.mech!, input), bytes(input, it.key!));
      return place(p11.C_Decrypt(s, inData, slot), slot);
    case "random":
      return place(p11.C_GenerateRandom(s, it.outLen === 0 ? Buffer.alloc(0) : slot), slot);
  }
}

/** Runs a batch in order; after a session-breaking CKR the rest is answered NOT_RUN (the main thread reopens this session first). */
function batch(items: WireItem[], input: ArrayBuffer, outSize: number): { out: ArrayBuffer; results: WireResult[] } {
  const outBuf = new ArrayBuffer(outSize);
  const out = Buffer.from(outBuf);
  const inp = Buffer.from(input);
  const results: WireResult[] = [];
  let off = 0;
  let broken = session === undefined;
  for (const it of items) {
    if (broken) {
      results.push({ error: { message: "CKR_SESSION_HANDLE_INVALID: not run", code: NOT_RUN }, secs: 0 });
      off += it.outLen;
      continue;
    }
    const t0 = performance.now();
    try {
      results.push({ len: runItem(session!, it, inp, out, off), secs: (performance.now() - t0) / 1000 });
    } catch (e) {
      const error = wireError(e);
      results.push({ error, secs: (performance.now() - t0) / 1000 });
      if (error.code !== undefined && SESSION_BROKEN.has(error.code)) broken = true;
    }
    off += it.outLen;
  }
  return { out: outBuf, results };
}

function closeSession(): void {
  if (!session) return;
  try {
    p11.C_CloseSession(session);
  } catch {
    /* already closed (C_CloseAllSessions on the main thread, or a lost token) */
  }
  session = undefined;
}

/** Closes any old session, opens one on the slot and logs in; the new session's handle, or the CKR that stopped it. */
function open(slot: Uint8Array): FromWorker {
  closeSession();
  try {
    const s = p11.C_OpenSession(buf(slot), pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
    try {
      p11.C_Login(s, pk.CKU_USER, data.pin);
    } catch (e) {
      if ((e as { code?: unknown }).code !== CKR_USER_ALREADY_LOGGED_IN) {
        try {
          p11.C_CloseSession(s);
        } catch {
          /* best effort */
        }
        throw e;
      }
    }
    session = s;
    return { t: "opened", session: new Uint8Array(s) };
  } catch (e) {
    return { t: "opened", error: wireError(e) };
  }
}

function load(): FromWorker {
  try {
    p11.load(data.module);
    try {
      p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
    } catch (e) {
      if ((e as { code?: unknown }).code !== CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
    }
    return { t: "loaded" };
  } catch (e) {
    return { t: "loaded", error: wireError(e) };
  }
}

function serve(port: NonNullable<typeof parentPort>): void {
  port.postMessage(load());
  port.on("message", (m: ToWorker) => {
    switch (m.t) {
      case "batch": {
        const { out, results } = batch(m.items, m.input, m.outSize);
        port.postMessage({ t: "done", id: m.id, out, results } satisfies FromWorker, [out]);
        return;
      }
      case "open":
        port.postMessage(open(m.slot));
        return;
      case "close":
        closeSession();
        port.postMessage({ t: "closed" } satisfies FromWorker);
        return;
      case "stop":
        closeSession();
        port.postMessage({ t: "stopped" } satisfies FromWorker);
        port.close();
        return;
    }
  });
}

if (parentPort) serve(parentPort);
