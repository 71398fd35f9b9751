/**
 * The raw side of `npm run bench`: pkcs11js in the benchmark's own process on the same token, a
 * fixed pool of sessions, one operation per session at a time, async calls. The device's ceiling.
 */
import { createHash, randomBytes } from "node:crypto";
import * as pk from "pkcs11js";

const MODULE = process.env.SOFTHSM2_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so";

/** Raw in-process PKCS#11: a fixed pool of sessions, one operation per session, async calls. */
export class RawDevice {
  p11 = new pk.PKCS11();
  sessions: Buffer[] = [];
  free: Buffer[] = [];
  waiters: Array<(s: Buffer) => void> = [];
  constructor(label: string, pin: string, pool: number) {
    this.p11.load(MODULE);
    this.p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
    const slot = this.p11.C_GetSlotList(true).find((s) => this.p11.C_GetTokenInfo(s).label.trim() === label)!;
    for (let i = 0; i < pool; i++) this.sessions.push(this.p11.C_OpenSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION));
    this.p11.C_Login(this.sessions[0]!, pk.CKU_USER, pin);
    this.free = [...this.sessions];
  }
  async with<T>(fn: (s: Buffer) => Promise<T>): Promise<T> {
    const s = this.free.pop() ?? (await new Promise<Buffer>((r) => this.waiters.push(r)));
    try {
      return await fn(s);
    } finally {
      const w = this.waiters.shift();
      if (w) w(s);
      else this.free.push(s);
    }
  }
  close() {
    this.p11.C_Finalize();
  }
}

/**
 * Session-object keys for the four benchmarked mechanisms (P-256, RSA-2048, AES-256, HMAC) made on
 * `raw`, and one operation per mechanism on them, keyed by the row name the daemon side uses too.
 */
export function rawOps(raw: RawDevice, msg: Buffer, block: Buffer): Record<string, () => Promise<unknown>> {
  const s0 = raw.sessions[0]!;
  const p256 = raw.p11.C_GenerateKeyPair(
    s0,
    { mechanism: pk.CKM_EC_KEY_PAIR_GEN },
    [
      { type: pk.CKA_EC_PARAMS, value: Buffer.from("06082a8648ce3d030107", "hex") },
      { type: pk.CKA_VERIFY, value: true },
    ],
    [
      { type: pk.CKA_SIGN, value: true },
      { type: pk.CKA_SENSITIVE, value: true },
    ],
  );
  const rsa = raw.p11.C_GenerateKeyPair(
    s0,
    { mechanism: pk.CKM_RSA_PKCS_KEY_PAIR_GEN },
    [
      { type: pk.CKA_MODULUS_BITS, value: 2048 },
      { type: pk.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
      { type: pk.CKA_VERIFY, value: true },
    ],
    [
      { type: pk.CKA_SIGN, value: true },
      { type: pk.CKA_SENSITIVE, value: true },
    ],
  );
  const aes = raw.p11.C_GenerateKey(s0, { mechanism: pk.CKM_AES_KEY_GEN }, [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_VALUE_LEN, value: 32 },
    { type: pk.CKA_ENCRYPT, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
  ]);
  const hmac = raw.p11.C_GenerateKey(s0, { mechanism: pk.CKM_GENERIC_SECRET_KEY_GEN }, [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_GENERIC_SECRET },
    { type: pk.CKA_VALUE_LEN, value: 32 },
    { type: pk.CKA_SIGN, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
  ]);

  return {
    "ECDSA P-256 sign": () =>
      raw.with((s) => {
        raw.p11.C_SignInit(s, { mechanism: pk.CKM_ECDSA }, p256.privateKey);
        return raw.p11.C_SignAsync(s, createHash("sha256").update(msg).digest(), Buffer.alloc(128));
      }),
    "RSA-2048 sign": () =>
      raw.with((s) => {
        raw.p11.C_SignInit(s, { mechanism: pk.CKM_SHA256_RSA_PKCS }, rsa.privateKey);
        return raw.p11.C_SignAsync(s, msg, Buffer.alloc(512));
      }),
    "AES-GCM 4 KiB encrypt": () =>
      raw.with((s) => {
        raw.p11.C_EncryptInit(s, { mechanism: pk.CKM_AES_GCM, parameter: { type: pk.CK_PARAMS_AES_GCM, iv: randomBytes(12), ivBits: 96, tagBits: 128 } as pk.AesGCM }, aes);
        return raw.p11.C_EncryptAsync(s, block, Buffer.alloc(4096 + 32));
      }),
    "HMAC-SHA256": () =>
      raw.with((s) => {
        raw.p11.C_SignInit(s, { mechanism: pk.CKM_SHA256_HMAC }, hmac);
        return raw.p11.C_SignAsync(s, msg, Buffer.alloc(64));
      }),
  };
}
