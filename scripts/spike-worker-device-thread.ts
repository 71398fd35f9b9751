/**
 * The worker side of scripts/spike-worker-device.ts (issue 11's spike, research only): one
 * worker_thread that loads pkcs11js, calls C_Initialize (CKF_OS_LOCKING_OK) and C_Login itself,
 * opens its own session, holds session-object copies of the spike's keys, and runs each batch the
 * main thread posts synchronously (`*Init` and the operation together), answering with one
 * transferred ArrayBuffer. Nothing here is used by src/.
 */
import { randomFillSync } from "node:crypto";
import { parentPort, workerData } from "node:worker_threads";
import * as pk from "pkcs11js";

/** What the main thread hands each worker at start. */
export interface SpikeWorkerData {
  module: string;
  label: string;
  pin: string;
  /** "unwrap": C_UnwrapKey the shared wrapped copies under `wrapKey`; "create": generate fresh keys here. */
  keys: "unwrap" | "create";
  wrapKey?: Uint8Array;
  wrapped?: { p256: Uint8Array; aes: Uint8Array; hmac: Uint8Array };
}

/** The spike's three operations and their fixed input and output slot sizes (bytes). */
export const OPS = {
  sign: { inLen: 32, outLen: 64 },
  gcm: { inLen: 4096, outLen: 12 + 4096 + 16 },
  hmac: { inLen: 32, outLen: 32 },
} as const;
/** One of {@link OPS}. */
export type SpikeOp = keyof typeof OPS;

/** Messages from the main thread. */
export type ToWorker = { type: "batch"; id: number; op: SpikeOp; n: number; data: ArrayBuffer } | { type: "probe" } | { type: "finalize" } | { type: "initialize" };

/** The CKR name for the values this spike meets, else the hex code. */
export function ckrName(e: unknown): string {
  const names: Record<number, string> = {
    0: "CKR_OK",
    5: "CKR_GENERAL_ERROR",
    96: "CKR_KEY_HANDLE_INVALID",
    130: "CKR_OBJECT_HANDLE_INVALID",
    179: "CKR_SESSION_HANDLE_INVALID",
    256: "CKR_USER_ALREADY_LOGGED_IN",
    257: "CKR_USER_NOT_LOGGED_IN",
    400: "CKR_CRYPTOKI_NOT_INITIALIZED",
    401: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
  };
  const code = (e as { code?: unknown })?.code;
  if (typeof code === "number") return names[code] ?? `0x${code.toString(16)}`;
  return String((e as Error)?.message ?? e);
}

const CKM_AES_KEY_WRAP_PAD = 0x210a;
const P256_OID = Buffer.from("06082a8648ce3d030107", "hex");

function secretTemplate(keyType: number, usage: pk.Template): pk.Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: keyType },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    ...usage,
  ];
}

/** The worker's device: module, one logged-in session, and its three key handles. */
class WorkerDevice {
  readonly p11 = new pk.PKCS11();
  session!: Buffer;
  keys!: { p256: Buffer; aes: Buffer; hmac: Buffer };
  facts: Record<string, string> = {};

  constructor(private readonly d: SpikeWorkerData) {
    this.p11.load(d.module);
    this.facts.initialize = this.initialize();
    const slot = this.p11.C_GetSlotList(true).find((s) => this.p11.C_GetTokenInfo(s).label.trim() === d.label)!;
    this.session = this.p11.C_OpenSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
    try {
      this.p11.C_Login(this.session, pk.CKU_USER, d.pin);
      this.facts.login = "CKR_OK";
    } catch (e) {
      this.facts.login = ckrName(e);
      if (this.facts.login !== "CKR_USER_ALREADY_LOGGED_IN") throw e;
    }
    if (d.keys === "unwrap") {
      try {
        this.keys = this.unwrapKeys();
        this.facts.keys = "unwrapped";
        return;
      } catch (e) {
        this.facts.keys = `unwrap failed (${ckrName(e)}); generated`;
      }
    } else this.facts.keys = "generated";
    this.keys = this.generateKeys();
  }

  /** C_Initialize with CKF_OS_LOCKING_OK; its answer (CKR_CRYPTOKI_ALREADY_INITIALIZED when another thread did it). */
  initialize(): string {
    try {
      this.p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
      return "CKR_OK";
    } catch (e) {
      const name = ckrName(e);
      if (name !== "CKR_CRYPTOKI_ALREADY_INITIALIZED") throw e;
      return name;
    }
  }

  private unwrapKeys(): { p256: Buffer; aes: Buffer; hmac: Buffer } {
    const w = Buffer.from(this.d.wrapKey!);
    const mech = { mechanism: CKM_AES_KEY_WRAP_PAD };
    const unwrap = (blob: Uint8Array, tpl: pk.Template) => this.p11.C_UnwrapKey(this.session, mech, w, Buffer.from(blob), tpl);
    return {
      p256: unwrap(this.d.wrapped!.p256, [
        { type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY },
        { type: pk.CKA_KEY_TYPE, value: pk.CKK_EC },
        { type: pk.CKA_TOKEN, value: false },
        { type: pk.CKA_SENSITIVE, value: true },
        { type: pk.CKA_EXTRACTABLE, value: false },
        { type: pk.CKA_SIGN, value: true },
      ]),
      aes: unwrap(this.d.wrapped!.aes, secretTemplate(pk.CKK_AES, [{ type: pk.CKA_ENCRYPT, value: true }])),
      hmac: unwrap(this.d.wrapped!.hmac, secretTemplate(pk.CKK_GENERIC_SECRET, [{ type: pk.CKA_SIGN, value: true }])),
    };
  }

  private generateKeys(): { p256: Buffer; aes: Buffer; hmac: Buffer } {
    const s = this.session;
    const kp = this.p11.C_GenerateKeyPair(
      s,
      { mechanism: pk.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pk.CKA_TOKEN, value: false },
        { type: pk.CKA_EC_PARAMS, value: P256_OID },
        { type: pk.CKA_VERIFY, value: true },
      ],
      [
        { type: pk.CKA_TOKEN, value: false },
        { type: pk.CKA_SIGN, value: true },
        { type: pk.CKA_SENSITIVE, value: true },
      ],
    );
    const aes = this.p11.C_GenerateKey(s, { mechanism: pk.CKM_AES_KEY_GEN }, [...secretTemplate(pk.CKK_AES, [{ type: pk.CKA_ENCRYPT, value: true }]), { type: pk.CKA_VALUE_LEN, value: 32 }]);
    const hmac = this.p11.C_GenerateKey(s, { mechanism: pk.CKM_GENERIC_SECRET_KEY_GEN }, [
      ...secretTemplate(pk.CKK_GENERIC_SECRET, [{ type: pk.CKA_SIGN, value: true }]),
      { type: pk.CKA_VALUE_LEN, value: 32 },
    ]);
    return { p256: kp.privateKey, aes, hmac };
  }

  /** Runs `n` operations of one kind, init and call together, synchronously; outputs in fixed slots. */
  batch(op: SpikeOp, n: number, data: ArrayBuffer): ArrayBuffer {
    const { inLen, outLen } = OPS[op];
    const out = new ArrayBuffer(n * outLen);
    const input = Buffer.from(data);
    const output = Buffer.from(out);
    const s = this.session;
    for (let i = 0; i < n; i++) {
      const inp = input.subarray(i * inLen, (i + 1) * inLen);
      const slot = output.subarray(i * outLen, (i + 1) * outLen);
      if (op === "sign") {
        this.p11.C_SignInit(s, { mechanism: pk.CKM_ECDSA }, this.keys.p256);
        this.p11.C_Sign(s, inp, slot);
      } else if (op === "hmac") {
        this.p11.C_SignInit(s, { mechanism: pk.CKM_SHA256_HMAC }, this.keys.hmac);
        this.p11.C_Sign(s, inp, slot);
      } else {
        const iv = randomFillSync(slot.subarray(0, 12));
        this.p11.C_EncryptInit(s, { mechanism: pk.CKM_AES_GCM, parameter: { type: pk.CK_PARAMS_AES_GCM, iv, ivBits: 96, tagBits: 128 } as pk.AesGCM }, this.keys.aes);
        this.p11.C_Encrypt(s, inp, slot.subarray(12));
      }
    }
    return out;
  }
}

function serve(): void {
  const port = parentPort!;
  let dev: WorkerDevice;
  try {
    dev = new WorkerDevice(workerData as SpikeWorkerData);
  } catch (e) {
    port.postMessage({ type: "ready", error: ckrName(e) });
    return;
  }
  port.postMessage({ type: "ready", facts: dev.facts });
  port.on("message", (m: ToWorker) => {
    if (m.type === "batch") {
      try {
        const out = dev.batch(m.op, m.n, m.data);
        port.postMessage({ type: "done", id: m.id, out }, [out]);
      } catch (e) {
        port.postMessage({ type: "done", id: m.id, error: ckrName(e) });
      }
      return;
    }
    let answer = "CKR_OK";
    try {
      if (m.type === "probe") dev.batch("hmac", 1, new ArrayBuffer(OPS.hmac.inLen));
      else if (m.type === "finalize") dev.p11.C_Finalize();
      else answer = dev.initialize();
    } catch (e) {
      answer = ckrName(e);
    }
    port.postMessage({ type: m.type, answer });
  });
}

if (parentPort) serve();
