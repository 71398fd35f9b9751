/**
 * The messages between the main thread and a session worker (session-worker.ts). Types only: the
 * worker's entry must stay free of runtime imports from src/ (under vitest it runs as one transpiled
 * file, see worker-spawn.ts). A batch's bytes (inputs, signatures, key handles, mechanism
 * parameters) all travel in its one transferred input buffer and are named by {@link WireBytes}
 * offsets: structured clone then copies only small plain objects, never one typed array per item
 * (which cost an ArrayBuffer each way and showed as the main thread's largest cost per operation).
 */

/** What a worker is given at start: the module path and the user PIN (for C_Login; held in memory only, never logged). */
export interface SessionWorkerData {
  module: string;
  pin: string;
}

/** The hot-path calls a worker runs: `*Init` and the call together, synchronously. */
export type HotKind = "sign" | "verify" | "encrypt" | "decrypt" | "random";

/** Bytes in the batch's input buffer: offset and length. */
export interface WireBytes {
  at: number;
  len: number;
}

/** A mechanism whose byte fields (a parameter buffer, or an iv/aad/label/sourceData in a parameter object) are {@link WireBytes}. */
export interface WireMechanism {
  mechanism: number;
  /** The parameter bytes, or the parameter object with its byte fields as WireBytes. */
  bytes?: WireBytes;
  fields?: Record<string, number | WireBytes>;
}

/** One item of a batch: where its input (and signature) sits in the batch's input buffer, and its output slot's size. */
export interface WireItem {
  kind: HotKind;
  /** The mechanism with its parameter (absent for random). */
  mech?: WireMechanism;
  /** The object handle (process-wide), resolved on the main thread. */
  key?: WireBytes;
  inOff: number;
  inLen: number;
  /** verify: the signature's place in the input buffer. */
  sigOff?: number;
  sigLen?: number;
  /** Output slot size in bytes (0 for verify). */
  outLen: number;
}

/** Messages to a worker, processed one at a time in order. */
export type ToWorker = { t: "open"; slot: Uint8Array } | { t: "close" } | { t: "stop" } | { t: "batch"; id: number; items: WireItem[]; input: ArrayBuffer; outSize: number };

/** A CKR failure as it crossed: pkcs11js' message (the CKR_* name) and the CKR value; `code` is absent for a non-PKCS#11 error. */
export interface WireError {
  message: string;
  code?: number;
}

/** An item's result: the output length in its slot (verify: 1), or the error; `secs` is the call's duration in the worker. */
export interface WireResult {
  len?: number;
  error?: WireError;
  secs: number;
}

/** Messages from a worker. */
export type FromWorker =
  | { t: "loaded"; error?: WireError }
  | { t: "opened"; session?: Uint8Array; error?: WireError }
  | { t: "closed" }
  | { t: "stopped" }
  | { t: "done"; id: number; out: ArrayBuffer; results: WireResult[] };

/**
 * Pseudo-CKR for an item the worker did not run because its session broke earlier in the batch
 * (session lost or an operation left active): the main thread re-queues it without counting an attempt.
 */
export const NOT_RUN = -1;
