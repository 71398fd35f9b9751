import * as pk from "pkcs11js";
import { createHash } from "node:crypto";
import { Code, HsmError, precondition, unavailable } from "../errors";
import {
  CKM_AES_KEY_WRAP_PAD,
  CKM_EC_EDWARDS_KEY_PAIR_GEN,
  CKM_EDDSA,
  DIGEST_INFO_PREFIX,
  HASH_MECH,
  OAEP_MECH,
  mechanismByName,
  mechanismName,
} from "./constants";
import { oaepDecode, oaepEncode } from "./oaep";
import { constants as cryptoConstants, generateKeyPairSync, privateDecrypt, publicEncrypt, randomBytes, randomUUID, type KeyObject } from "node:crypto";
import { CKR, ckrOf, isHandleStale, isSessionLost, mapDeviceError } from "./ckr";
import { FaultWatch, MIN_FREE_FDS_FOR_REINIT } from "./fault-watch";
import { FindDeferred, FindGate } from "./find-gate";
import { SessionPool } from "./pool";
import { derOctetString, partsFromSpki, spkiFromAttributes } from "./spki";
import {
  QUARANTINE_PREFIX,
  domainKeyTemplate,
  idAttrs,
  importEphemeralTemplate,
  privateTemplate,
  publicTemplate,
  quarantineAttrs,
  secretTemplate,
  type TemplateIntent,
} from "./templates";
import type { CipherSpec, DeviceObserver, KeyAlgorithm, OaepHash, Part, PoolStats, SignSpec, Usage, WrapSpec, WrappedMaterial } from "./types";

/** How to reach the token. The PIN is held in memory only, never logged. */
export interface DeviceOptions {
  module: string;
  tokenLabel?: string;
  slot?: number;
  pin: string;
  poolSize: number;
  /** CKA_TOKEN for hsmd's keys: persistent token objects (true) or session objects materialized on demand. */
  tokenObjects: boolean;
  /** With token objects: crypto calls use a session-object copy of the key (see cryptoHandle). @default false */
  sessionCopies?: boolean;
  /** CKM_* names treated as absent from the token's mechanism list (config device.disabledMechanisms). @default [] */
  disabledMechanisms?: readonly string[];
  observer?: DeviceObserver;
  log?: (msg: string) => void;
  /** File descriptors the process can still open, when known (a fault is not healed while there are too few). */
  freeFds?: () => number | undefined;
}

/** Token facts for /v1/status. */
export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
  slot: string;
}

/** Thrown when a key's objects are not in the device: the caller materializes it from its record. */
export class KeyNotMaterializedError extends HsmError {
  constructor(readonly keyId: string, readonly part: Part) {
    super(Code.Unavailable, `key ${keyId} is not materialized in the device`, { transient: true });
  }
}

type Handles = Partial<Record<Part, Buffer>>;

/** What {@link Device.inventory} finds: hsmd's key objects, the wrappable ones, the quarantined ones. */
export interface ObjectInventory {
  /** key id → its parts (CKA_LABEL "hsmd:<id>") */
  keys: Map<string, Set<Part>>;
  /** key ids with a secret or private object that is CKA_EXTRACTABLE or not CKA_WRAP_WITH_TRUSTED */
  weak: Set<string>;
  /** key id it had → its quarantined parts */
  quarantined: Map<string, Set<Part>>;
}

const CLASS_OF: Record<Part, number> = { secret: pk.CKO_SECRET_KEY, private: pk.CKO_PRIVATE_KEY, public: pk.CKO_PUBLIC_KEY };

/**
 * The only door to the PKCS#11 module. Loads it once per process (C_Initialize with
 * CKF_OS_LOCKING_OK), logs in once, keeps a pool of open sessions, runs every crypto call through
 * pkcs11js' async forms (libuv's thread pool) so the event loop never waits on the device, caches
 * object handles by key id, and recovers from a lost session or token by reopening and logging in
 * again. It hands out domain values (key ids, SPKI, wrapped blobs), never raw handles.
 */
export class Device {
  private readonly p11 = new pk.PKCS11();
  private slot!: Buffer;
  private readonly pool = new SessionPool();
  private readonly handles = new Map<string, Handles>();
  /** Session-object copies of token keys for crypto calls (see cryptoHandle). */
  private readonly copies = new Map<string, Handles>();
  /** Keys the device would not copy. */
  private readonly noCopy = new Set<string>();
  /** Transient (extractable, process-private) parts of new keys not sealed yet (see sealForRecord). */
  private readonly transients = new Map<string, Handles>();
  private generation = 0;
  private recovering: Promise<void> | undefined;
  private closed = false;
  private mechs = new Set<number>();
  /** Mechanisms left out of the token's list (DeviceOptions.disabledMechanisms). */
  private disabled = new Set<number>();
  /** OAEP hashes the device does natively (probed at open). */
  private oaepNative = new Set<OaepHash>();
  /** OAEP hashes for which the device also honours a label (pSourceData) both ways (probed at open). */
  private oaepLabelNative = new Set<OaepHash>();
  private importQueue: Promise<void> = Promise.resolve();
  /** Searches wait for token-object creations in flight (see FindGate). */
  private readonly findGate = new FindGate();
  /** True while a pooled call's synchronous part runs: where a search may be deferred. */
  private syncPhase = false;
  /** Objects that must be in the token while the node runs (the domain key), by id. */
  private readonly essential = new Map<string, Part>();
  /** Tells a device fault (token view lost, e.g. after EMFILE) from a missing key, and heals it. */
  readonly faults: FaultWatch;
  token!: TokenInfo;

  private constructor(private readonly opts: DeviceOptions) {
    this.faults = new FaultWatch({ essentialPresent: () => this.essentialPresent(), reinitialize: () => this.reinitialize(), freeFds: opts.freeFds, log: opts.log });
  }

  /** Opens the module, finds the token, opens the pool and logs in. */
  static async open(opts: DeviceOptions): Promise<Device> {
    const d = new Device(opts);
    for (const name of opts.disabledMechanisms ?? []) {
      const m = mechanismByName(name);
      if (m === undefined) throw precondition(`device.disabledMechanisms: ${name} is not a mechanism name hsmd knows (a PKCS#11 CKM_* constant, such as CKM_AES_CMAC)`);
      d.disabled.add(m);
    }
    try {
      d.p11.load(opts.module);
    } catch (e) {
      throw precondition(`cannot load PKCS#11 module ${opts.module}: ${(e as Error).message}`);
    }
    d.initialize();
    d.openSessions();
    await d.probeOaep();
    return d;
  }

  /**
   * Which OAEP hashes CKM_RSA_PKCS_OAEP accepts: the mechanism list cannot tell (SoftHSM2 2.6 lists
   * it but takes SHA-1 only), so try each on a throw-away key pair made on the host for the purpose.
   * For each native hash, also whether the device honours an OAEP label (pSourceData) both ways:
   * SoftHSM2 2.6 refuses one on encrypt (CKR_ARGUMENTS_BAD) and ignores it on decrypt (a ciphertext
   * made with another label decrypts), so a label must never be passed to such a device.
   */
  private async probeOaep(): Promise<void> {
    if (!this.mechs.has(pk.CKM_RSA_PKCS_OAEP)) return;
    const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const jwk = pair.privateKey.export({ format: "jwk" });
    const b = (x: string | undefined) => Buffer.from(x!, "base64url");
    await this.run("C_EncryptInit", undefined, (s) => {
      const h = this.p11.C_CreateObject(s, [
        { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
        { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
        { type: pk.CKA_TOKEN, value: false },
        { type: pk.CKA_ENCRYPT, value: true },
        { type: pk.CKA_MODULUS, value: b(jwk.n) },
        { type: pk.CKA_PUBLIC_EXPONENT, value: b(jwk.e) },
      ]);
      let priv: Buffer | undefined;
      try {
        // A device that refuses private keys in the clear (as it should for real keys) simply gets
        // no native labels: labelled calls then take the host-side encoding.
        priv = this.p11.C_CreateObject(s, [
          { type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY },
          { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
          { type: pk.CKA_TOKEN, value: false },
          { type: pk.CKA_SENSITIVE, value: true },
          { type: pk.CKA_DECRYPT, value: true },
          { type: pk.CKA_MODULUS, value: b(jwk.n) },
          { type: pk.CKA_PUBLIC_EXPONENT, value: b(jwk.e) },
          { type: pk.CKA_PRIVATE_EXPONENT, value: b(jwk.d) },
          { type: pk.CKA_PRIME_1, value: b(jwk.p) },
          { type: pk.CKA_PRIME_2, value: b(jwk.q) },
          { type: pk.CKA_EXPONENT_1, value: b(jwk.dp) },
          { type: pk.CKA_EXPONENT_2, value: b(jwk.dq) },
          { type: pk.CKA_COEFFICIENT, value: b(jwk.qi) },
        ]);
      } catch {
        priv = undefined;
      }
      try {
        for (const hash of ["sha1", "sha256", "sha384", "sha512"] as OaepHash[]) {
          try {
            this.p11.C_EncryptInit(s, oaep(hash), h);
            this.p11.C_Encrypt(s, Buffer.from([1]), Buffer.alloc(256));
            this.oaepNative.add(hash);
          } catch {
            /* not supported */
          }
          if (this.oaepNative.has(hash) && priv && this.labelHonoured(s, hash, h, priv, pair.publicKey, pair.privateKey)) this.oaepLabelNative.add(hash);
        }
      } finally {
        this.p11.C_DestroyObject(s, h);
        if (priv) this.p11.C_DestroyObject(s, priv);
      }
    });
  }

  /**
   * Does the device apply an OAEP label (checked against Node's crypto): a ciphertext it makes with
   * a label opens on the host under that label, and one the host makes opens in the device under
   * that label and fails under another.
   */
  private labelHonoured(s: Buffer, hash: OaepHash, pub: Buffer, priv: Buffer, hostPub: KeyObject, hostPriv: KeyObject): boolean {
    const label = Buffer.from("hsmd oaep label probe");
    const msg = Buffer.from("probe");
    const host = { padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash };
    try {
      this.p11.C_EncryptInit(s, oaep(hash, label), pub);
      const ct = this.p11.C_Encrypt(s, msg, Buffer.alloc(256));
      if (!privateDecrypt({ key: hostPriv, ...host, oaepLabel: label }, ct).equals(msg)) return false;
      const ct2 = publicEncrypt({ key: hostPub, ...host, oaepLabel: label }, msg);
      this.p11.C_DecryptInit(s, oaep(hash, label), priv);
      if (!Buffer.from(this.p11.C_Decrypt(s, ct2, Buffer.alloc(256))).equals(msg)) return false;
    } catch {
      return false;
    }
    try {
      this.p11.C_DecryptInit(s, oaep(hash, Buffer.from("another label")), priv);
      this.p11.C_Decrypt(s, publicEncrypt({ key: hostPub, ...host, oaepLabel: label }, msg), Buffer.alloc(256));
      return false; // it ignored the label
    } catch {
      return true;
    }
  }

  /** Does CKM_RSA_PKCS_OAEP work with this hash on this device? */
  supportsOaep(hash: OaepHash): boolean {
    return this.oaepNative.has(hash);
  }

  /** Does CKM_RSA_PKCS_OAEP with this hash honour a label (pSourceData) on this device? */
  supportsOaepLabel(hash: OaepHash): boolean {
    return this.oaepLabelNative.has(hash);
  }

  private initialize(): void {
    try {
      this.p11.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
    } catch (e) {
      if (ckrOf(e) !== 0x191 /* CKR_CRYPTOKI_ALREADY_INITIALIZED */) throw mapDeviceError(e, "C_Initialize");
    }
    this.slot = this.findSlot();
    const ti = this.p11.C_GetTokenInfo(this.slot);
    this.token = {
      label: ti.label.trim(),
      manufacturer: ti.manufacturerID.trim(),
      model: ti.model.trim(),
      serial: ti.serialNumber.trim(),
      slot: this.slot.toString("hex"),
    };
    this.mechs = new Set(this.p11.C_GetMechanismList(this.slot).filter((m) => !this.disabled.has(m)));
  }

  private findSlot(): Buffer {
    const slots = this.p11.C_GetSlotList(true);
    if (this.opts.tokenLabel !== undefined) {
      for (const s of slots) {
        if (this.p11.C_GetTokenInfo(s).label.trim() === this.opts.tokenLabel) return s;
      }
      throw precondition(`no token labelled "${this.opts.tokenLabel}" in ${this.opts.module} (initialize one, e.g. scripts/dev-token.sh)`);
    }
    const idx = this.opts.slot ?? 0;
    if (idx >= slots.length) throw precondition(`slot index ${idx} not present: the module shows ${slots.length} slot(s) with a token`);
    return slots[idx]!;
  }

  private openSessions(): void {
    const sessions: Buffer[] = [];
    for (let i = 0; i < this.opts.poolSize; i++) {
      try {
        sessions.push(this.p11.C_OpenSession(this.slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION));
      } catch (e) {
        for (const s of sessions) this.safe(() => this.p11.C_CloseSession(s));
        throw mapDeviceError(e, "C_OpenSession");
      }
    }
    try {
      this.p11.C_Login(sessions[0]!, pk.CKU_USER, this.opts.pin);
    } catch (e) {
      if (ckrOf(e) !== CKR.USER_ALREADY_LOGGED_IN) {
        for (const s of sessions) this.safe(() => this.p11.C_CloseSession(s));
        throw mapDeviceError(e, "C_Login");
      }
    }
    this.pool.reset(sessions);
  }

  private safe(fn: () => void): void {
    try {
      fn();
    } catch {
      /* best effort */
    }
  }

  /** The mechanism list read at start (C_GetMechanismList). */
  mechanisms(): number[] {
    return [...this.mechs].sort((a, b) => a - b);
  }

  supports(mech: number): boolean {
    return this.mechs.has(mech);
  }

  /** FAILED_PRECONDITION naming the mechanism when the device lacks it. */
  requireMechanism(mech: number, purpose: string): void {
    if (!this.mechs.has(mech)) throw precondition(`the device does not support ${mechanismName(mech)}, needed for ${purpose}`);
  }

  poolStats(): PoolStats {
    return this.pool.stats();
  }

  // ---- session handling ----------------------------------------------------------------------

  /**
   * Runs `fn` on a pooled session. Session loss triggers one recovery and one retry; a stale object
   * handle clears the cache and retries once. Every error leaves as an HsmError.
   *
   * `createsTokenObject` marks a call whose async part creates a token object: it waits while a
   * search holds the FindGate and counts as in flight until it settles. A search in the synchronous
   * part of any call (a handle cache miss, has(), destroy()) that would overlap such creations is
   * deferred: the call releases its session, waits at the gate, and runs again holding it.
   */
  private async run<T>(op: string, mech: number | undefined, fn: (s: Buffer) => Promise<T> | T, retry = true, createsTokenObject = false, gateHeld?: () => void): Promise<T> {
    if (this.recovering) await this.recovering.catch(() => undefined);
    const gen = this.generation;
    if (createsTokenObject && !gateHeld) await this.findGate.open();
    let session = await this.pool.acquire();
    if (createsTokenObject && !gateHeld && this.findGate.held) {
      // A search took the gate while this call waited for a session.
      this.pool.release(session);
      return this.run(op, mech, fn, retry, createsTokenObject);
    }
    const t0 = process.hrtime.bigint();
    let ok = false;
    let released = false;
    let entered = false;
    try {
      let pending: Promise<T> | T;
      this.syncPhase = true;
      try {
        pending = fn(session);
      } finally {
        this.syncPhase = false;
        gateHeld?.();
      }
      if (createsTokenObject) {
        this.findGate.enter();
        entered = true;
      }
      const r = await pending;
      ok = true;
      return r;
    } catch (e) {
      if (e instanceof FindDeferred) {
        // (An async fn rejects rather than throws: nothing of it started, but it was counted.)
        if (entered) this.findGate.leave();
        entered = false;
        this.pool.release(session);
        released = true;
        const release = await this.findGate.acquire();
        try {
          return await this.run(op, mech, fn, retry, createsTokenObject, release);
        } finally {
          release();
        }
      }
      const ckr = ckrOf(e);
      if (retry && !this.closed && gen === this.generation && ckr === CKR.OPERATION_ACTIVE) {
        // An earlier failure left an operation open on this session (SoftHSM2 2.6 does that after
        // some errors, where PKCS#11 says the operation ends): swap in a fresh session and retry.
        session = this.replaceSession(session);
        this.pool.release(session);
        released = true;
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      if (retry && !this.closed && isSessionLost(ckr)) {
        this.pool.release(session, gen !== this.generation);
        released = true;
        await this.recover(gen);
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      if (retry && isHandleStale(ckr)) {
        this.handles.clear();
        this.copies.clear();
        this.pool.release(session, gen !== this.generation);
        released = true;
        return this.run(op, mech, fn, false, createsTokenObject);
      }
      throw mapDeviceError(e, op);
    } finally {
      if (entered) this.findGate.leave();
      if (!released) this.pool.release(session, gen !== this.generation);
      if (mech !== undefined && this.opts.observer) {
        this.opts.observer(mechanismName(mech), Number(process.hrtime.bigint() - t0) / 1e9, ok);
      }
    }
  }

  /**
   * A key creation under {@link retrySpurious}: up to 3 attempts, the key's leftovers destroyed between
   * them. `fromDevice`: the inputs are the device's or hsmd's own (a generation, a record's blob), so
   * CKR_GENERAL_ERROR every time is a device fault (UNAVAILABLE, the device checked), not a bad input.
   */
  private async retryCreation<T>(id: string, fn: () => Promise<T>, fromDevice = false): Promise<T> {
    try {
      return await retrySpurious(fn, { what: "a key creation", attempts: 3, cleanup: () => this.destroy(id).catch(() => undefined), log: this.opts.log });
    } catch (e) {
      throw fromDevice ? this.asDeviceFault(e, "to create the key") : e;
    }
  }

  /**
   * CKR_GENERAL_ERROR on every attempt of a step whose inputs are the device's or hsmd's own is a
   * device fault: UNAVAILABLE (transient), and the device is checked. Anything else is returned as is.
   */
  private asDeviceFault(e: unknown, what: string): unknown {
    if (!(e instanceof HsmError) || ckrOf(e.cause) !== CKR.GENERAL_ERROR) return e;
    this.faults.suspect(`the device failed ${what} with CKR_GENERAL_ERROR 3 times`);
    return new HsmError(Code.Unavailable, `the device failed ${what} (CKR_GENERAL_ERROR, 3 attempts): the node is checking the device; retry`, { cause: e.cause, transient: true });
  }

  /**
   * Declares an object that must exist while the node runs (the domain key): not finding it is then
   * a device fault (UNAVAILABLE, the module re-initialized), never a missing key.
   */
  markEssential(id: string, part: Part): void {
    this.essential.set(id, part);
  }

  /** Every essential object found by an uncached search (C_FindObjects). */
  private async essentialPresent(): Promise<boolean> {
    for (const [id, part] of this.essential) {
      const found = await this.run("C_FindObjects", undefined, (s) => this.findHandles(s, id, part).length > 0);
      if (!found) return false;
    }
    return true;
  }

  /**
   * Finalizes and initializes the module again, then reopens the sessions and logs in: the only way
   * to make SoftHSM2 read a token it marked invalid. New calls wait; calls running on the thread pool
   * are waited for first (finalizing under them crashes the process).
   */
  private reinitialize(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.recovering) return this.recovering;
    this.recovering = (async () => {
      if (!(await this.pool.drained(10_000))) throw unavailable("device calls still running after 10 s");
      this.safe(() => this.p11.C_CloseAllSessions(this.slot));
      this.safe(() => this.p11.C_Finalize());
      this.generation++;
      this.handles.clear();
      this.copies.clear();
      this.initialize();
      this.openSessions();
    })().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /** {@link run} for a call that creates an object, a token object when `token` is set. */
  private runCreating<T>(op: string, mech: number, token: boolean, fn: (s: Buffer) => Promise<T> | T): Promise<T> {
    return this.run(op, mech, fn, true, token);
  }

  /** Closes one session and opens another in its place (logging in again if that was the last one). */
  private replaceSession(old: Buffer): Buffer {
    this.safe(() => this.p11.C_CloseSession(old));
    const fresh = this.p11.C_OpenSession(this.slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
    try {
      this.p11.C_Login(fresh, pk.CKU_USER, this.opts.pin);
    } catch (e) {
      if (ckrOf(e) !== CKR.USER_ALREADY_LOGGED_IN) throw e;
    }
    return fresh;
  }

  /**
   * Reopens every session and logs in again; if the token itself went away, finalizes and
   * re-initializes the module. Concurrent callers share one recovery.
   */
  private recover(seenGeneration: number): Promise<void> {
    if (seenGeneration !== this.generation) return Promise.resolve();
    if (this.recovering) return this.recovering;
    this.recovering = (async () => {
      this.opts.log?.("pkcs11: device session lost; reopening sessions and logging in again");
      let lastErr: unknown;
      for (let attempt = 0; attempt < 6; attempt++) {
        this.safe(() => this.p11.C_CloseAllSessions(this.slot));
        if (attempt > 0) {
          // Finalizing without the descriptors C_Initialize needs would leave the module finalized.
          const free = this.opts.freeFds?.();
          if (free !== undefined && free < MIN_FREE_FDS_FOR_REINIT) {
            lastErr = new Error(`the process has only ${free} free file descriptors`);
            break;
          }
        }
        try {
          if (attempt > 0) {
            this.safe(() => this.p11.C_Finalize());
            this.initialize();
          }
          this.openSessions();
          this.handles.clear();
          this.copies.clear();
          this.generation++;
          this.opts.log?.(`pkcs11: recovered after ${attempt + 1} attempt(s)`);
          return;
        } catch (e) {
          lastErr = e;
          await new Promise((r) => setTimeout(r, 100 * 2 ** attempt));
        }
      }
      this.generation++;
      throw unavailable(`the device did not come back: ${(lastErr as Error)?.message ?? lastErr}`, lastErr);
    })().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  /** Health probe for /readyz: a session answers C_GetSessionInfo and is logged in. */
  async healthy(): Promise<boolean> {
    try {
      return await this.run("C_GetSessionInfo", undefined, (s) => {
        const info = this.p11.C_GetSessionInfo(s);
        // CKS_RW_USER_FUNCTIONS = 3
        if (info.state !== 3) throw Object.assign(new Error("CKR_USER_NOT_LOGGED_IN"), { code: CKR.USER_NOT_LOGGED_IN });
        return true;
      });
    } catch {
      return false;
    }
  }

  /**
   * Refuses new calls, waits (up to 10 s) for the calls still running on the thread pool to settle,
   * then closes every session and finalizes the module. Closing sessions or finalizing under a
   * running C_*Async call crashes the process (a daemon stopped while its applier unwrapped keys
   * died with SIGSEGV); if calls are still running after the wait, the module is left as it is for
   * the process's exit to end.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pool.close("the device is shutting down");
    if (!(await this.pool.drained(10_000))) {
      this.opts.log?.(`pkcs11: ${this.pool.stats().busy} device call(s) still running after 10 s; leaving the sessions open for the process exit`);
      return;
    }
    this.safe(() => this.p11.C_CloseAllSessions(this.slot));
    this.safe(() => this.p11.C_Finalize());
  }

  /** Test hook: closes every session behind the pool's back, as a device reset would. */
  simulateSessionLoss(): void {
    this.safe(() => this.p11.C_CloseAllSessions(this.slot));
  }

  // ---- object lookup -------------------------------------------------------------------------

  /** C_FindObjectsInit, deferred (see run) while token-object creations are in flight. */
  private findInit(s: Buffer, template: pk.Template): void {
    if (this.syncPhase && this.findGate.busy) throw new FindDeferred();
    this.p11.C_FindObjectsInit(s, template);
  }

  private findHandles(s: Buffer, id: string, part: Part): Buffer[] {
    this.findInit(s, [{ type: pk.CKA_ID, value: Buffer.from(id, "utf8") }, { type: pk.CKA_CLASS, value: CLASS_OF[part] }]);
    try {
      return this.p11.C_FindObjects(s, 16);
    } finally {
      this.p11.C_FindObjectsFinal(s);
    }
  }

  /** The handle of a key's part, from the cache or found once by CKA_ID. */
  private handle(s: Buffer, id: string, part: Part): Buffer {
    const cached = this.handles.get(id)?.[part];
    if (cached) return cached;
    const found = this.findHandles(s, id, part);
    if (found.length === 0) {
      if (this.essential.get(id) !== part) throw new KeyNotMaterializedError(id, part);
      this.faults.suspect(`${id} not found`);
      throw new HsmError(Code.Unavailable, `the device cannot find ${id}, which this node holds: a device fault (the node is re-initializing the module); retry`, { transient: true });
    }
    const h = found[0]!;
    this.handles.set(id, { ...this.handles.get(id), [part]: h });
    return h;
  }

  /**
   * The handle crypto calls use: with token objects and `sessionCopies` (the profile's
   * quirks.sessionCopiesForCrypto), a session-object copy of the key's part (C_CopyObject with
   * CKA_TOKEN=false, made once and cached). SoftHSM2 re-reads a token object's file
   * state on every attribute access, so C_SignInit and friends (which pkcs11js runs synchronously, on
   * the event loop) cost about twice as much on a token object as on a session object: measured 54
   * against 29 µs per ECDSA C_SignInit. The copy has the same attributes (sensitive, not extractable
   * as the original) and the same CKA_ID, so destroy() removes it with the key; it lives as long as
   * the pooled session that made it, and a stale copy is found again like any stale handle.
   */
  private cryptoHandle(s: Buffer, id: string, part: Part): Buffer {
    const copy = this.copies.get(id)?.[part];
    if (copy) return copy;
    const h = this.handle(s, id, part);
    if (!this.opts.tokenObjects || !this.opts.sessionCopies || this.noCopy.has(id)) return h;
    let c: Buffer;
    try {
      c = this.p11.C_CopyObject(s, h, [{ type: pk.CKA_TOKEN, value: false }]);
    } catch {
      // A device (or key) that cannot copy objects: use the token object itself.
      this.noCopy.add(id);
      return h;
    }
    this.copies.set(id, { ...this.copies.get(id), [part]: c });
    return c;
  }

  /**
   * Does this process hold a handle for the key's part (it made, materialized or found it)? No
   * device call: SoftHSM2 searches objects linearly, which a cluster applier cannot afford per key.
   */
  cached(id: string, part: Part): boolean {
    return this.handles.get(id)?.[part] !== undefined;
  }

  /** Is this part of the key present in the device? */
  async has(id: string, part: Part): Promise<boolean> {
    return this.run("C_FindObjects", undefined, (s) => {
      try {
        this.handle(s, id, part);
        return true;
      } catch (e) {
        if (e instanceof KeyNotMaterializedError) return false;
        throw e;
      }
    });
  }

  /**
   * Length in bytes of a secret key, or undefined when it is not a multiple of 8. SoftHSM2 leaves
   * CKA_VALUE_LEN at 0 on unwrapped keys, and the value is sensitive, so this wraps the key under the
   * domain key with CKM_AES_KEY_WRAP (RFC 3394: output = length + 8; refuses other lengths) and
   * discards the blob.
   */
  async secretLength(id: string, domainKeyId: string): Promise<number | undefined> {
    try {
      const blob = await this.run("C_WrapKey", pk.CKM_AES_KEY_WRAP, (s) =>
        this.p11.C_WrapKeyAsync(s, { mechanism: pk.CKM_AES_KEY_WRAP }, this.handle(s, domainKeyId, "secret"), this.handle(s, id, "secret"), Buffer.alloc(16384)),
      );
      return blob.length - 8;
    } catch (e) {
      if (e instanceof HsmError && e.code !== Code.Unavailable && e.code !== Code.Internal) return undefined;
      const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
      if (ckr === CKR.GENERAL_ERROR || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.KEY_SIZE_RANGE) return undefined;
      throw e;
    }
  }

  /** Every CKA_ID of hsmd's objects (label "hsmd:…") in the token, with their classes. */
  async listObjectIds(): Promise<Map<string, Set<Part>>> {
    return (await this.inventory()).keys;
  }

  /**
   * What the token (and this process's session objects) hold of hsmd's: every key id with its
   * parts; which of them have a secret or private object that could be wrapped (CKA_EXTRACTABLE
   * true or CKA_WRAP_WITH_TRUSTED false: written by an hsmd before keys were sealed); and the
   * quarantined objects (CKA_LABEL "hsmd-quarantine:<id>") by the key id they had.
   */
  async inventory(): Promise<ObjectInventory> {
    return this.run("C_FindObjects", undefined, (s) => {
      const inv: ObjectInventory = { keys: new Map(), weak: new Set(), quarantined: new Map() };
      this.findInit(s, []);
      let hs: Buffer[] = [];
      try {
        for (;;) {
          const batch = this.p11.C_FindObjects(s, 256);
          if (batch.length === 0) break;
          hs = hs.concat(batch);
        }
      } finally {
        this.p11.C_FindObjectsFinal(s);
      }
      for (const h of hs) {
        let attrs: pk.Attribute[];
        try {
          attrs = this.p11.C_GetAttributeValue(s, h, [{ type: pk.CKA_LABEL }, { type: pk.CKA_ID }, { type: pk.CKA_CLASS }]);
        } catch (e) {
          // A process killed while the device wrote an object can leave one it cannot read back
          // (SoftHSM2: a truncated object file answers CKR_ATTRIBUTE_VALUE_INVALID). It cannot be
          // told to be hsmd's; skip it rather than fail the whole listing (and the start).
          this.opts.log?.(`pkcs11: skipping an object whose attributes cannot be read (${(e as Error).message})`);
          continue;
        }
        const [label, id, cls] = attrs;
        const l = (label!.value as Buffer).toString("utf8");
        const quarantined = l.startsWith(QUARANTINE_PREFIX);
        if (!l.startsWith("hsmd:") && !quarantined) continue;
        const c = (cls!.value as Buffer).readUInt32LE(0);
        const part: Part = c === pk.CKO_SECRET_KEY ? "secret" : c === pk.CKO_PRIVATE_KEY ? "private" : "public";
        const raw = (id!.value as Buffer).toString("utf8");
        const key = quarantined ? raw.slice(QUARANTINE_PREFIX.length) : raw;
        const into = quarantined ? inv.quarantined : inv.keys;
        if (!into.has(key)) into.set(key, new Set());
        into.get(key)!.add(part);
        if (part !== "public") {
          try {
            const [ex, wwt] = this.p11.C_GetAttributeValue(s, h, [{ type: pk.CKA_EXTRACTABLE }, { type: pk.CKA_WRAP_WITH_TRUSTED }]);
            if (boolAttr(ex?.value) || !boolAttr(wwt?.value)) inv.weak.add(key);
          } catch {
            inv.weak.add(key);
          }
        }
      }
      return inv;
    });
  }

  /**
   * Quarantines a key's objects: CKA_ID and CKA_LABEL move behind "hsmd-quarantine:" (both are
   * modifiable attributes), so hsmd no longer finds them as a key, and nothing is destroyed.
   */
  async quarantine(id: string): Promise<void> {
    await this.relabel(id, quarantineAttrs(id));
  }

  /** Gives quarantined objects their key id back (a record explains them again). */
  async restoreQuarantined(id: string): Promise<void> {
    await this.relabel(`${QUARANTINE_PREFIX}${id}`, idAttrs(id));
  }

  /** Destroys a key's quarantined objects (the operator asked to: --purge-orphans). */
  async purgeQuarantined(id: string): Promise<void> {
    await this.destroy(`${QUARANTINE_PREFIX}${id}`);
  }

  private async relabel(fromId: string, attrs: pk.Template): Promise<void> {
    await this.run("C_SetAttributeValue", undefined, (s) => {
      for (const part of ["secret", "private", "public"] as Part[]) {
        for (const h of this.findHandles(s, fromId, part)) this.p11.C_SetAttributeValue(s, h, attrs);
      }
    });
    // Whatever this process cached under the old or the new id is stale now.
    const to = (attrs.find((a) => a.type === pk.CKA_ID)!.value as Buffer).toString("utf8");
    for (const id of [fromId, to]) {
      this.handles.delete(id);
      this.copies.delete(id);
    }
  }

  /**
   * Clears CKA_EXTRACTABLE on a key's secret or private objects in place (PKCS#11 allows true →
   * false). For keys that live only in this device and so cannot be re-materialized from a record;
   * CKA_WRAP_WITH_TRUSTED cannot be set after creation (SoftHSM2: CKR_ATTRIBUTE_READ_ONLY), but an
   * unextractable key cannot be wrapped under any key anyway.
   */
  async makeUnextractable(id: string): Promise<void> {
    await this.run("C_SetAttributeValue", undefined, (s) => {
      for (const part of ["secret", "private"] as Part[]) {
        for (const h of this.findHandles(s, id, part)) this.p11.C_SetAttributeValue(s, h, [{ type: pk.CKA_EXTRACTABLE, value: false }]);
      }
      this.copies.delete(id);
    });
  }

  /** Destroys every object of a key (all parts; a transient one too). Idempotent. */
  async destroy(id: string): Promise<void> {
    await this.run("C_DestroyObject", undefined, (s) => {
      for (const part of ["secret", "private", "public"] as Part[]) {
        for (const h of this.findHandles(s, id, part)) this.p11.C_DestroyObject(s, h);
      }
      this.handles.delete(id);
      this.copies.delete(id);
      this.noCopy.delete(id);
      this.transients.delete(id);
      this.essential.delete(id);
    });
  }

  /**
   * A kept object of a key (see Residence): a token object with token objects configured, else a
   * session object. A key the device cannot wrap (EdDSA on SoftHSM2) has no copy in its record: it
   * must persist in the token.
   */
  private intent(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): TemplateIntent {
    return { id, alg, usages, residence: { kind: "kept", token: this.opts.tokenObjects || alg.type === "ed25519" } };
  }

  /**
   * What a new key (generate, import, unwrap, derive) is made as: a transient session object that
   * {@link sealForRecord} wraps under the domain key and replaces by its kept form. An HMAC
   * intermediate may also sign, so that the seal can prove the kept key computes the same MACs.
   */
  private newKeyIntent(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): TemplateIntent {
    const u = alg.type === "hmac" && !usages.includes("sign") ? [...usages, "sign" as const] : usages;
    return { id, alg, usages: u, residence: { kind: "transient" } };
  }

  /** CKA_TOKEN of objects made from this intent. */
  private static onToken(t: TemplateIntent): boolean {
    return t.residence.kind === "kept" && t.residence.token;
  }

  private readPublicSpki(s: Buffer, alg: KeyAlgorithm, pub: Buffer): Buffer {
    if (alg.type === "rsa") {
      const [m, e] = this.p11.C_GetAttributeValue(s, pub, [{ type: pk.CKA_MODULUS }, { type: pk.CKA_PUBLIC_EXPONENT }]);
      return spkiFromAttributes(alg, { modulus: m!.value as Buffer, exponent: e!.value as Buffer });
    }
    const [pt] = this.p11.C_GetAttributeValue(s, pub, [{ type: pk.CKA_EC_POINT }]);
    return spkiFromAttributes(alg, { ecPoint: pt!.value as Buffer });
  }

  // ---- key creation ----------------------------------------------------------------------------

  /**
   * Generates a key inside the device. Returns the SPKI for key pairs. The secret or private part is
   * made transient (see {@link newKeyIntent}) for {@link sealForRecord}, the public half as a kept
   * object; a key the device cannot wrap (Ed25519 on SoftHSM2 2.6) is made kept at once.
   */
  async generate(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<{ spki?: Buffer }> {
    const kept = this.intent(id, alg, usages);
    const t = alg.type === "ed25519" ? kept : this.newKeyIntent(id, alg, usages);
    if (alg.type === "aes" || alg.type === "hmac") {
      const mech = alg.type === "aes" ? pk.CKM_AES_KEY_GEN : pk.CKM_GENERIC_SECRET_KEY_GEN;
      this.requireMechanism(mech, `${alg.type.toUpperCase()} key generation`);
      return this.retryCreation(id, () =>
        this.runCreating("C_GenerateKey", mech, Device.onToken(t), async (s) => {
          const h = await this.p11.C_GenerateKeyAsync(s, { mechanism: mech }, secretTemplate(t, true));
          this.setHandle(id, "secret", h, t);
          return {};
        }),
        true,
      );
    }
    const mech = alg.type === "rsa" ? pk.CKM_RSA_PKCS_KEY_PAIR_GEN : alg.type === "ec" ? pk.CKM_EC_KEY_PAIR_GEN : CKM_EC_EDWARDS_KEY_PAIR_GEN;
    this.requireMechanism(mech, `${alg.type} key pair generation`);
    return this.retryCreation(id, () => this.runCreating("C_GenerateKeyPair", mech, Device.onToken(kept), async (s) => {
      let kp: pk.KeyPair;
      try {
        kp = await this.p11.C_GenerateKeyPairAsync(s, { mechanism: mech }, publicTemplate(kept), privateTemplate(t));
      } catch (e) {
        if (alg.type === "ec" && (ckrOf(e) === 0x130 /* CKR_DOMAIN_PARAMS_INVALID */ || ckrOf(e) === CKR.ATTRIBUTE_VALUE_INVALID)) {
          throw precondition(`the device does not support the ${alg.curve} curve`);
        }
        throw e;
      }
      this.setHandle(id, "private", kp.privateKey, t);
      this.setHandle(id, "public", kp.publicKey, kept);
      return { spki: this.readPublicSpki(s, alg, kp.publicKey) };
    }), true);
  }

  /** Caches a new object's handle; a transient one is also remembered for {@link sealForRecord}. */
  private setHandle(id: string, part: Part, h: Buffer, t: TemplateIntent): void {
    this.handles.set(id, { ...this.handles.get(id), [part]: h });
    if (t.residence.kind === "transient") this.transients.set(id, { ...this.transients.get(id), [part]: h });
  }

  /** Creates a public key object from an SPKI (import, and materializing a pair's public half). */
  async createPublic(id: string, spki: Buffer, usages: readonly Usage[]): Promise<KeyAlgorithm> {
    const parts = partsFromSpki(spki);
    const t = this.intent(id, parts.alg, usages);
    const tpl = publicTemplate(t, {
      modulus: parts.modulus,
      exponent: parts.exponent,
      ecPointDer: parts.point ? derOctetString(parts.point) : undefined,
    });
    await this.run("C_CreateObject", undefined, (s) => {
      const h = this.p11.C_CreateObject(s, tpl);
      this.handles.set(id, { ...this.handles.get(id), public: h });
    });
    return parts.alg;
  }

  /**
   * Seals a new key: wraps its transient secret or private part under the domain key
   * (CKM_AES_KEY_WRAP_PAD) for its record, unwraps that blob into the key's kept object
   * (CKA_EXTRACTABLE=false, CKA_WRAP_WITH_TRUSTED=true; the unwrap also proves the blob is good) and
   * destroys the transient one. For HMAC keys the kept key must compute the intermediate's MAC:
   * SoftHSM2 2.6 zero-pads secrets whose length is not a multiple of 8 when it wraps them, and such
   * a key would change when materialized from its record (INVALID_ARGUMENT).
   *
   * Returns undefined for a key that is kept already (made so because the device cannot wrap its
   * kind, Ed25519 on SoftHSM2 2.6) or that the device refuses to wrap (CKR_KEY_NOT_WRAPPABLE: it is
   * then copied into its kept form with CKA_EXTRACTABLE=false): such a key lives only in this device.
   */
  async sealForRecord(id: string, alg: KeyAlgorithm, usages: readonly Usage[], domainKeyId: string): Promise<WrappedMaterial | undefined> {
    const secret = alg.type === "aes" || alg.type === "hmac";
    const part: Part = secret ? "secret" : "private";
    const e = this.transients.get(id)?.[part];
    if (!e) return undefined;
    this.requireMechanism(CKM_AES_KEY_WRAP_PAD, "wrapping keys under the domain key");
    const t = this.intent(id, alg, usages);
    let blob: Buffer;
    try {
      blob = Buffer.from(await this.run("C_WrapKey", CKM_AES_KEY_WRAP_PAD, (s) =>
        this.p11.C_WrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, this.handle(s, domainKeyId, "secret"), e, Buffer.alloc(16384)),
      ));
    } catch (err) {
      if (!(err instanceof HsmError && ckrOf(err.cause) === CKR.KEY_NOT_WRAPPABLE)) throw err;
      await this.run("C_CopyObject", undefined, (s) => {
        const h = this.p11.C_CopyObject(s, e, [{ type: pk.CKA_TOKEN, value: Device.onToken(t) }, { type: pk.CKA_EXTRACTABLE, value: false }]);
        this.p11.C_DestroyObject(s, e);
        this.handles.set(id, { ...this.handles.get(id), [part]: h });
      }, true, Device.onToken(t));
      this.transients.delete(id);
      return undefined;
    }
    const material: WrappedMaterial = { alg: "AES_KWP", wrappingKeyId: domainKeyId, blob };
    // A session copy a crypto call made of the intermediate (see cryptoHandle) goes first.
    const copy = this.copies.get(id)?.[part];
    if (copy) {
      this.copies.set(id, { ...this.copies.get(id), [part]: undefined });
      await this.run("C_DestroyObject", undefined, (s) => this.safe(() => this.p11.C_DestroyObject(s, copy)));
    }
    // Between attempts, whatever a failed unwrap left of this part goes; the intermediate and a
    // pair's public half stay.
    const cleanup = () =>
      this.run("C_DestroyObject", undefined, (s) => {
        for (const h of this.findHandles(s, id, part)) if (!h.equals(e)) this.p11.C_DestroyObject(s, h);
      }).catch(() => undefined);
    await retrySpurious(
      () =>
        this.runCreating("C_UnwrapKey", CKM_AES_KEY_WRAP_PAD, Device.onToken(t), async (s) => {
          const h = await this.p11.C_UnwrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, this.handle(s, domainKeyId, "secret"), blob, secret ? secretTemplate(t, false) : privateTemplate(t));
          this.handles.set(id, { ...this.handles.get(id), [part]: h });
        }),
      { what: "sealing a key", attempts: 3, cleanup, log: this.opts.log },
    ).catch((err: unknown) => {
      // The blob was wrapped by this device a moment ago: a failure here is the device's.
      throw this.asDeviceFault(err, "to seal the key");
    });
    try {
      if (alg.type === "hmac") await this.sameMac(id, e, alg, usages);
    } finally {
      await this.run("C_DestroyObject", undefined, (s) => this.safe(() => this.p11.C_DestroyObject(s, e)));
      this.transients.delete(id);
    }
    return material;
  }

  /** Does the kept HMAC key `id` compute the MAC its transient intermediate `e` computes? INVALID_ARGUMENT if not. */
  private async sameMac(id: string, e: Buffer, alg: Extract<KeyAlgorithm, { type: "hmac" }>, usages: readonly Usage[]): Promise<void> {
    const mech = { mechanism: HASH_MECH[alg.hash].hmac };
    const challenge = randomBytes(32);
    const mac = Buffer.from(await this.run("C_Sign", mech.mechanism, (s) => {
      this.p11.C_SignInit(s, mech, e);
      return this.p11.C_SignAsync(s, challenge, Buffer.alloc(64));
    }));
    // The kept key may be sign-only or verify-only: ask it the way its usages allow.
    const same = usages.includes("sign") ? mac.equals(await this.sign(id, { name: "HMAC", hash: alg.hash }, challenge, "secret")) : await this.verify(id, { name: "HMAC", hash: alg.hash }, challenge, mac, "secret");
    if (!same) throw new HsmError(Code.InvalidArgument, "secret key material must be a multiple of 8 bytes long: the device cannot wrap other lengths faithfully under the domain key");
  }

  /**
   * WrapKey for an exportable key: its record's blob is unwrapped under the domain key into a
   * transient, process-private session object, which is wrapped under the caller's key and destroyed
   * at once. The key's kept objects can never be wrapped (CKA_EXTRACTABLE=false).
   */
  async exportWrapped(wrappingKeyId: string, wrappingPart: Part, spec: WrapSpec, alg: KeyAlgorithm, material: WrappedMaterial): Promise<Buffer> {
    this.requireOaepFor(spec);
    const mech = wrapMechanism(spec);
    this.requireMechanism(mech.mechanism, `wrap with ${spec.name}`);
    const secret = alg.type === "aes" || alg.type === "hmac";
    const t: TemplateIntent = { id: `hsmd-export-${randomUUID()}`, alg, usages: [], residence: { kind: "transient" } };
    const out = await this.run("C_WrapKey", mech.mechanism, async (s) => {
      const x = await this.p11.C_UnwrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, this.handle(s, material.wrappingKeyId, "secret"), material.blob, secret ? secretTemplate(t, false) : privateTemplate(t));
      try {
        return await this.p11.C_WrapKeyAsync(s, mech, this.handle(s, wrappingKeyId, wrappingPart), x, Buffer.alloc(16384));
      } finally {
        this.safe(() => this.p11.C_DestroyObject(s, x));
      }
    });
    return Buffer.from(out);
  }

  /** Unwraps a record's material under the domain key into the device (materialization), as kept objects. */
  async materialize(id: string, alg: KeyAlgorithm, usages: readonly Usage[], material: WrappedMaterial, spki?: Buffer): Promise<void> {
    const t = this.intent(id, alg, usages);
    const secret = alg.type === "aes" || alg.type === "hmac";
    await this.retryCreation(id, () => this.runCreating("C_UnwrapKey", CKM_AES_KEY_WRAP_PAD, Device.onToken(t), async (s) => {
      const h = await this.p11.C_UnwrapKeyAsync(
        s,
        { mechanism: CKM_AES_KEY_WRAP_PAD },
        this.handle(s, material.wrappingKeyId, "secret"),
        material.blob,
        secret ? secretTemplate(t, false) : privateTemplate(t),
      );
      this.handles.set(id, { ...this.handles.get(id), [secret ? "secret" : "private"]: h });
    }), true);
    if (!secret && spki && !(await this.has(id, "public"))) await this.createPublic(id, spki, usages);
  }

  /** Finds the domain key, or generates it (AES-256, never extractable) when `create` is set. */
  async ensureDomainKey(id: string, create: boolean): Promise<boolean> {
    if (await this.has(id, "secret")) return true;
    if (!create) return false;
    this.requireMechanism(pk.CKM_AES_KEY_GEN, "the domain key");
    this.requireMechanism(CKM_AES_KEY_WRAP_PAD, "the domain key");
    await this.runCreating("C_GenerateKey", pk.CKM_AES_KEY_GEN, true, async (s) => {
      const h = await this.p11.C_GenerateKeyAsync(s, { mechanism: pk.CKM_AES_KEY_GEN }, domainKeyTemplate(id, true));
      this.handles.set(id, { secret: h });
    });
    return true;
  }

  /**
   * Can the domain key be handed to a joining node? Only when it is extractable and guarded by
   * CKA_WRAP_WITH_TRUSTED (a domain key made before clustering is not extractable at all).
   */
  async domainKeyShareable(id: string): Promise<boolean> {
    return this.run("C_GetAttributeValue", undefined, (s) => {
      const [ex, wwt] = this.p11.C_GetAttributeValue(s, this.handle(s, id, "secret"), [{ type: pk.CKA_EXTRACTABLE }, { type: pk.CKA_WRAP_WITH_TRUSTED }]);
      return boolAttr(ex?.value) && boolAttr(wwt?.value);
    });
  }

  /**
   * Finds or generates this node's transport key pair (RSA-3072) for joining a cluster; returns its
   * SPKI. The private half can only unwrap, is sensitive and never extractable: the domain key a
   * member wraps under the public half can be opened only inside this HSM.
   */
  async ensureTransportKey(id: string): Promise<Buffer> {
    const alg: KeyAlgorithm = { type: "rsa", bits: 3072 };
    if (!(await this.has(id, "private"))) {
      this.requireMechanism(pk.CKM_RSA_PKCS_OAEP, "joining a cluster");
      const t: TemplateIntent = { id, alg, usages: ["unwrap", "wrap"], residence: { kind: "kept", token: true } };
      await this.runCreating("C_GenerateKeyPair", pk.CKM_RSA_PKCS_KEY_PAIR_GEN, true, async (s) => {
        const kp = await this.p11.C_GenerateKeyPairAsync(s, { mechanism: pk.CKM_RSA_PKCS_KEY_PAIR_GEN }, publicTemplate(t), privateTemplate(t));
        this.handles.set(id, { private: kp.privateKey, public: kp.publicKey });
      });
    }
    return this.run("C_GetAttributeValue", undefined, (s) => this.readPublicSpki(s, alg, this.handle(s, id, "public")));
  }

  /** The OAEP hash domain-key transport uses on this device: SHA-256 where supported, else SHA-1 (SoftHSM2 2.6). */
  transportOaepHash(): OaepHash {
    return this.importOaepHash();
  }

  /**
   * Wraps the domain key (CKA_WRAP_WITH_TRUSTED) under a joiner's transport public key that a
   * security officer has just placed in this token as a trusted object (`trustedId`, see
   * {@link createTrustedPublicKey}): CKM_RSA_PKCS_OAEP inside the HSM. The device itself refuses
   * to wrap the domain key under anything untrusted. The trusted object is destroyed afterwards.
   */
  async wrapDomainKeyForJoiner(domainKeyId: string, trustedId: string, hash: OaepHash): Promise<Buffer> {
    try {
      return await this.run("C_WrapKey", pk.CKM_RSA_PKCS_OAEP, async (s) => {
        this.handles.delete(trustedId);
        return this.p11.C_WrapKeyAsync(s, oaep(hash), this.handle(s, trustedId, "public"), this.handle(s, domainKeyId, "secret"), Buffer.alloc(1024));
      });
    } finally {
      await this.destroy(trustedId).catch(() => undefined);
    }
  }

  /**
   * Unwraps a domain key a member wrapped for this node with its transport key, as a token object
   * with the domain key's attributes (so this node can in turn approve later joins).
   */
  async unwrapDomainKey(transportKeyId: string, blob: Buffer, hash: OaepHash, domainKeyId: string): Promise<void> {
    await this.runCreating("C_UnwrapKey", pk.CKM_RSA_PKCS_OAEP, true, async (s) => {
      const h = await this.p11.C_UnwrapKeyAsync(s, oaep(hash), this.handle(s, transportKeyId, "private"), blob, domainKeyTemplate(domainKeyId, false));
      this.handles.set(domainKeyId, { secret: h });
    });
  }

  /**
   * BYOK: `blob` = RSA-OAEP-SHA256(ephemeral AES-256 key) ‖ AES-KWP(ephemeral key, material), where
   * the RSA key is the import key. Both unwraps run inside the device; the ephemeral key is a
   * session object destroyed at once.
   */
  async importWrapped(importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash: OaepHash = this.importOaepHash()): Promise<void> {
    const rsaLen = 384;
    if (!this.oaepNative.has(hash)) throw precondition(`the device does not support CKM_RSA_PKCS_OAEP with ${hash.toUpperCase()}, which the import key is used with`);
    if (blob.length <= rsaLen + 8) throw new HsmError(Code.InvalidArgument, `wrapped key material must be ${rsaLen} bytes of RSA-OAEP then the AES-KWP blob; got ${blob.length} bytes`);
    // Imports are rare: run them one at a time, so the import key is never used concurrently.
    const turn = this.importQueue.then(() => undefined);
    let done!: () => void;
    this.importQueue = new Promise<void>((r) => (done = r));
    await turn;
    try {
      await this.importWrappedNow(importKeyId, blob, id, alg, usages, hash);
    } finally {
      done();
    }
  }

  private async importWrappedNow(importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash: OaepHash): Promise<void> {
    const rsaLen = 384;
    const t = this.newKeyIntent(id, alg, usages);
    const secret = alg.type === "aes" || alg.type === "hmac";
    await this.retryCreation(id, () => this.runCreating("C_UnwrapKey", pk.CKM_RSA_PKCS_OAEP, Device.onToken(t), async (s) => {
      const eph = await this.p11.C_UnwrapKeyAsync(s, oaep(hash), this.handle(s, importKeyId, "private"), blob.subarray(0, rsaLen), importEphemeralTemplate());
      try {
        const h = await this.p11.C_UnwrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, eph, blob.subarray(rsaLen), secret ? secretTemplate(t, false) : privateTemplate(t));
        this.setHandle(id, secret ? "secret" : "private", h, t);
      } finally {
        this.safe(() => this.p11.C_DestroyObject(s, eph));
      }
    })).catch(badBlob);
  }

  /** Key wrapping has no host-side OAEP fallback: the unwrapped key must never pass through the host. */
  private requireOaepFor(spec: WrapSpec): void {
    if (spec.name === "RSA_OAEP" && !this.oaepNative.has(spec.hash)) {
      throw precondition(`the device does not support CKM_RSA_PKCS_OAEP with ${spec.hash.toUpperCase()}${this.oaepNative.has("sha1") ? "; use RSA_OAEP_SHA1" : ""}`);
    }
    if (spec.name === "RSA_OAEP" && spec.label?.length && !this.oaepLabelNative.has(spec.hash)) {
      throw precondition(
        `the device does not honour an OAEP label (CKM_RSA_PKCS_OAEP pSourceData) with ${spec.hash.toUpperCase()}, and key wrapping has no host-side fallback: wrap without oaep_label`,
      );
    }
  }

  /** The OAEP hash BYOK import uses on this device: SHA-256 where supported, else SHA-1. */
  importOaepHash(): OaepHash {
    if (this.oaepNative.has("sha256")) return "sha256";
    if (this.oaepNative.has("sha1")) return "sha1";
    throw precondition("the device supports CKM_RSA_PKCS_OAEP with neither SHA-256 nor SHA-1: key import is not available");
  }

  /** Unwraps a caller's blob under one of hsmd's keys into a new key. */
  async unwrap(unwrappingKeyId: string, unwrappingPart: Part, spec: WrapSpec, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
    this.requireOaepFor(spec);
    const mech = wrapMechanism(spec);
    this.requireMechanism(mech.mechanism, `unwrap with ${spec.name}`);
    const t = this.newKeyIntent(id, alg, usages);
    const secret = alg.type === "aes" || alg.type === "hmac";
    await this.retryCreation(id, () =>
      this.runCreating("C_UnwrapKey", mech.mechanism, Device.onToken(t), async (s) => {
        const h = await this.p11.C_UnwrapKeyAsync(s, mech, this.handle(s, unwrappingKeyId, unwrappingPart), blob, secret ? secretTemplate(t, false) : privateTemplate(t));
        this.setHandle(id, secret ? "secret" : "private", h, t);
      }),
    ).catch(badBlob);
  }

  /** ECDH (CKM_ECDH1_DERIVE, CKD_NULL) with a peer's public point into a new AES key. */
  async deriveEcdh(privateKeyId: string, peerPoint: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
    this.requireMechanism(pk.CKM_ECDH1_DERIVE, "ECDH key derivation");
    const t = this.newKeyIntent(id, alg, usages);
    await this.runCreating("C_DeriveKey", pk.CKM_ECDH1_DERIVE, Device.onToken(t), async (s) => {
      const h = await this.p11.C_DeriveKeyAsync(
        s,
        { mechanism: pk.CKM_ECDH1_DERIVE, parameter: { type: pk.CK_PARAMS_EC_DH, kdf: pk.CKD_NULL, publicData: peerPoint } as pk.ECDH1 },
        this.handle(s, privateKeyId, "private"),
        secretTemplate(t, true),
      );
      this.setHandle(id, "secret", h, t);
    });
  }

  // ---- crypto --------------------------------------------------------------------------------

  /** RSA-OAEP encoded on the host: the device lacks the hash, or ignores or refuses the label. */
  private oaepOnHost(spec: CipherSpec): boolean {
    return spec.name === "RSA_OAEP" && (!this.oaepNative.has(spec.hash) || (!!spec.label?.length && !this.oaepLabelNative.has(spec.hash)));
  }

  async encrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
    if (spec.name === "RSA_OAEP" && this.oaepOnHost(spec)) {
      // RSA in the device, OAEP encoding on the host (only the message passes through the host).
      const em = oaepEncode(data, spec.k, spec.hash, spec.label);
      this.requireMechanism(pk.CKM_RSA_X_509, `RSA-OAEP with ${spec.hash}`);
      const out = await this.run("C_Encrypt", pk.CKM_RSA_X_509, (s) => {
        this.p11.C_EncryptInit(s, { mechanism: pk.CKM_RSA_X_509 }, this.cryptoHandle(s, id, part));
        return this.p11.C_EncryptAsync(s, em, Buffer.alloc(spec.k));
      });
      return Buffer.concat([Buffer.alloc(spec.k - out.length), out]);
    }
    const mech = cipherMechanism(spec);
    this.requireMechanism(mech.mechanism, spec.name);
    const out = await this.run("C_Encrypt", mech.mechanism, (s) => {
      this.p11.C_EncryptInit(s, mech, this.cryptoHandle(s, id, part));
      return this.p11.C_EncryptAsync(s, ptr(data), Buffer.alloc(outLen));
    });
    return Buffer.from(out);
  }

  async decrypt(id: string, part: Part, spec: CipherSpec, data: Buffer, outLen: number): Promise<Buffer> {
    if (spec.name === "RSA_OAEP" && this.oaepOnHost(spec)) {
      this.requireMechanism(pk.CKM_RSA_X_509, `RSA-OAEP with ${spec.hash}`);
      if (data.length !== spec.k) throw new HsmError(Code.InvalidArgument, `RSA-OAEP ciphertext must be ${spec.k} bytes for this key; got ${data.length}`);
      let em: Buffer;
      try {
        em = await this.run("C_Decrypt", pk.CKM_RSA_X_509, (s) => {
          this.p11.C_DecryptInit(s, { mechanism: pk.CKM_RSA_X_509 }, this.cryptoHandle(s, id, part));
          return this.p11.C_DecryptAsync(s, data, Buffer.alloc(spec.k));
        });
      } catch (e) {
        // A ciphertext at or above the modulus: one answer for every kind of bad ciphertext.
        if (e instanceof HsmError && e.code !== Code.Unavailable && !(e instanceof KeyNotMaterializedError)) {
          throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext");
        }
        throw e;
      }
      const m = oaepDecode(Buffer.from(em), spec.k, spec.hash, spec.label);
      em.fill(0);
      if (!m) throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext");
      return m;
    }
    const mech = cipherMechanism(spec);
    this.requireMechanism(mech.mechanism, spec.name);
    try {
      const out = await this.run("C_Decrypt", mech.mechanism, (s) => {
        this.p11.C_DecryptInit(s, mech, this.cryptoHandle(s, id, part));
        return this.p11.C_DecryptAsync(s, ptr(data), Buffer.alloc(outLen));
      });
      return Buffer.from(out);
    } catch (e) {
      const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
      // A native OAEP decoding failure (SoftHSM2: CKR_GENERAL_ERROR; others CKR_ENCRYPTED_DATA_*):
      // the same one answer as the host-side decoding gives, for every kind of bad ciphertext.
      if (spec.name === "RSA_OAEP" && (ckr === CKR.GENERAL_ERROR || ckr === CKR.ENCRYPTED_DATA_INVALID || ckr === CKR.ENCRYPTED_DATA_LEN_RANGE || ckr === CKR.DATA_INVALID || ckr === CKR.DATA_LEN_RANGE)) {
        throw new HsmError(Code.InvalidArgument, "decrypt: RSA-OAEP decryption failed: wrong key, hash or ciphertext", { cause: (e as HsmError).cause });
      }
      // SoftHSM2 answers a failed GCM tag check or bad CBC padding with CKR_GENERAL_ERROR.
      if (e instanceof HsmError && ckr === CKR.GENERAL_ERROR && spec.name !== "RSA_OAEP") {
        throw new HsmError(Code.InvalidArgument, `decrypt: ${spec.name} authentication or padding check failed: wrong key, IV, tag, AAD or ciphertext`, { cause: e.cause });
      }
      throw e;
    }
  }

  /** Signs; ECDSA signatures come back raw (r ‖ s), as PKCS#11 returns them. */
  async sign(id: string, spec: SignSpec, data: Buffer, part: Part = spec.name === "HMAC" || spec.name === "AES_CMAC" ? "secret" : "private"): Promise<Buffer> {
    const { mech, input } = signMechanism(spec, data, this.mechs);
    this.requireMechanism(mech.mechanism, spec.name);
    // No input makes a sound key fail to sign: a CKR_GENERAL_ERROR here is the device's, not the
    // caller's. SoftHSM2 answered one once in about 20 full test runs, to the first sign on a key the
    // cluster applier had just materialized (cause not found). Signing again is harmless: 2 attempts.
    const out = await retrySpurious(
      () =>
        this.run("C_Sign", mech.mechanism, (s) => {
          this.p11.C_SignInit(s, mech, this.cryptoHandle(s, id, part));
          return this.p11.C_SignAsync(s, ptr(input), Buffer.alloc(1024));
        }),
      { what: `C_Sign on key ${id}`, attempts: 2, log: this.opts.log },
    );
    return Buffer.from(out);
  }

  /** Verifies; a signature that does not verify (or has the wrong length) is `false`, not an error. */
  async verify(id: string, spec: SignSpec, data: Buffer, signature: Buffer, part: Part = spec.name === "HMAC" || spec.name === "AES_CMAC" ? "secret" : "public"): Promise<boolean> {
    const { mech, input } = signMechanism(spec, data, this.mechs);
    this.requireMechanism(mech.mechanism, spec.name);
    try {
      return await this.run("C_Verify", mech.mechanism, (s) => {
        this.p11.C_VerifyInit(s, mech, this.cryptoHandle(s, id, part));
        return this.p11.C_VerifyAsync(s, ptr(input), ptr(signature));
      });
    } catch (e) {
      const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
      if (ckr === CKR.SIGNATURE_INVALID || ckr === CKR.SIGNATURE_LEN_RANGE || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.DATA_INVALID) return false;
      throw e;
    }
  }

  /** C_GenerateRandom (blocking, but short for the sizes the limits allow). */
  async random(n: number): Promise<Buffer> {
    return this.run("C_GenerateRandom", undefined, (s) => Buffer.from(this.p11.C_GenerateRandom(s, Buffer.alloc(n))));
  }
}

/**
 * pkcs11js passes a NULL pointer for a zero-length Buffer, which SoftHSM2 refuses with
 * CKR_ARGUMENTS_BAD; a zero-length view of a real allocation passes a valid pointer and length 0.
 */
function ptr(b: Buffer): Buffer {
  return b.length === 0 ? Buffer.alloc(1).subarray(0, 0) : b;
}

/**
 * SoftHSM2 reports a failed integrity check of an AES-KW/KWP or OAEP blob as CKR_GENERAL_ERROR (or a
 * decoding failure as CKR_ARGUMENTS_BAD/CKR_DATA_INVALID): the caller's blob is bad.
 */
function badBlob(e: unknown): never {
  const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
  if (ckr === CKR.GENERAL_ERROR || ckr === CKR.ARGUMENTS_BAD || ckr === CKR.DATA_INVALID || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.ENCRYPTED_DATA_INVALID || ckr === CKR.ENCRYPTED_DATA_LEN_RANGE) {
    throw new HsmError(Code.InvalidArgument, "unwrap: the wrapped key blob failed its integrity check or does not decode under this key", { cause: (e as HsmError).cause });
  }
  throw e;
}

/**
 * SoftHSM2 2.6 now and then fails a sound call with CKR_GENERAL_ERROR (or, for a creation,
 * CKR_TEMPLATE_INCONSISTENT) under concurrent load. For token-object creations the FindGate removes
 * the cause hsmd itself makes (searches beside creations); what is left (another process searching
 * the same token) is retried, after `cleanup` (destroying whatever the failed attempt left under the
 * key's id) and a short pause. A bad blob fails every time, so the answer is unchanged; only its
 * cost grows. Each retry is logged.
 */
async function retrySpurious<T>(fn: () => Promise<T>, o: { what: string; attempts: number; cleanup?: () => Promise<void>; log?: (msg: string) => void }): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
      if (attempt >= o.attempts || (ckr !== CKR.GENERAL_ERROR && ckr !== 0xd1) /* CKR_TEMPLATE_INCONSISTENT */) throw e;
      o.log?.(`pkcs11: ${o.what} failed with ${ckr === CKR.GENERAL_ERROR ? "CKR_GENERAL_ERROR" : "CKR_TEMPLATE_INCONSISTENT"}; trying again (attempt ${attempt + 1} of ${o.attempts})`);
      // Whatever the failed attempt left under this id goes first, so the retry makes exactly one.
      await o.cleanup?.();
      await new Promise((r) => setTimeout(r, 5 * 4 ** (attempt - 1) + Math.random() * 5));
    }
  }
}

function boolAttr(v: unknown): boolean {
  return Buffer.isBuffer(v) ? v.length > 0 && v[0] !== 0 : v === true;
}

/** CKM_RSA_PKCS_OAEP with MGF1 of the same hash; a non-empty label goes in pSourceData (CKZ_DATA_SPECIFIED). */
function oaep(hash: OaepHash, label?: Buffer): pk.Mechanism {
  return {
    mechanism: pk.CKM_RSA_PKCS_OAEP,
    parameter: {
      type: pk.CK_PARAMS_RSA_OAEP,
      hashAlg: OAEP_MECH[hash].digest,
      mgf: OAEP_MECH[hash].mgf,
      source: 1 /* CKZ_DATA_SPECIFIED */,
      ...(label?.length ? { sourceData: label } : {}),
    } as pk.RsaOAEP,
  };
}

function wrapMechanism(spec: WrapSpec): pk.Mechanism {
  switch (spec.name) {
    case "AES_KW":
      return { mechanism: pk.CKM_AES_KEY_WRAP };
    case "AES_KWP":
      return { mechanism: CKM_AES_KEY_WRAP_PAD };
    case "RSA_OAEP":
      return oaep(spec.hash, spec.label);
  }
}

function cipherMechanism(spec: CipherSpec): pk.Mechanism {
  switch (spec.name) {
    case "AES_GCM":
      return {
        mechanism: pk.CKM_AES_GCM,
        parameter: { type: pk.CK_PARAMS_AES_GCM, iv: spec.iv, aad: spec.aad.length ? spec.aad : undefined, ivBits: spec.iv.length * 8, tagBits: spec.tagBytes * 8 } as pk.AesGCM,
      };
    case "AES_CBC_PAD":
      return { mechanism: pk.CKM_AES_CBC_PAD, parameter: spec.iv };
    case "AES_CTR": {
      // CK_AES_CTR_PARAMS { CK_ULONG ulCounterBits; CK_BYTE cb[16]; } on LP64.
      const prm = Buffer.alloc(24);
      prm.writeBigUInt64LE(128n, 0);
      spec.iv.copy(prm, 8);
      return { mechanism: pk.CKM_AES_CTR, parameter: prm };
    }
    case "RSA_OAEP":
      return oaep(spec.hash, spec.label);
  }
}

function pssParams(hash: "sha256" | "sha384" | "sha512"): pk.RsaPSS {
  return { type: pk.CK_PARAMS_RSA_PSS, hashAlg: HASH_MECH[hash].digest, mgf: HASH_MECH[hash].mgf, saltLen: HASH_MECH[hash].len };
}

/** Picks the mechanism and the bytes the device signs, hashing on the host where the device only signs digests. */
function signMechanism(spec: SignSpec, data: Buffer, mechs: Set<number>): { mech: pk.Mechanism; input: Buffer } {
  switch (spec.name) {
    case "RSA_PKCS1":
      if (spec.input === "message" && mechs.has(HASH_MECH[spec.hash].rsaPkcs)) return { mech: { mechanism: HASH_MECH[spec.hash].rsaPkcs }, input: data };
      return { mech: { mechanism: pk.CKM_RSA_PKCS }, input: Buffer.concat([DIGEST_INFO_PREFIX[spec.hash], digestOf(spec.hash, data, spec.input)]) };
    case "RSA_PSS":
      if (spec.input === "message" && mechs.has(HASH_MECH[spec.hash].rsaPss)) return { mech: { mechanism: HASH_MECH[spec.hash].rsaPss, parameter: pssParams(spec.hash) }, input: data };
      return { mech: { mechanism: pk.CKM_RSA_PKCS_PSS, parameter: pssParams(spec.hash) }, input: digestOf(spec.hash, data, spec.input) };
    case "ECDSA":
      return { mech: { mechanism: pk.CKM_ECDSA }, input: digestOf(spec.hash, data, spec.input) };
    case "EDDSA":
      return { mech: { mechanism: CKM_EDDSA }, input: data };
    case "HMAC":
      return { mech: { mechanism: HASH_MECH[spec.hash].hmac }, input: data };
    case "AES_CMAC":
      return { mech: { mechanism: pk.CKM_AES_CMAC }, input: data };
  }
}

function digestOf(hash: "sha256" | "sha384" | "sha512", data: Buffer, input: "message" | "digest"): Buffer {
  return input === "digest" ? data : createHash(hash).update(data).digest();
}

