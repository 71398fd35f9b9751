import * as pk from "pkcs11js";
import { precondition } from "../errors";
import { CKR, ckrOf, mapDeviceError } from "./ckr";
import { mechanismByName, mechanismName } from "./constants";
import { SessionPool } from "./pool";
import type { DeviceOptions, TokenInfo } from "./types";

/**
 * The PKCS#11 module and its token: loads the module once per process, C_Initialize with
 * CKF_OS_LOCKING_OK, finds the slot, reads the token's facts and mechanism list, and opens (or
 * replaces) the pool's sessions, logged in as the user. The run pipeline ({@link DeviceCore})
 * decides when; this file knows how.
 */
export class Pkcs11Module {
  readonly p11 = new pk.PKCS11();
  /** The pooled sessions, one operation per session at a time. */
  readonly pool = new SessionPool();
  slot!: Buffer;
  token!: TokenInfo;
  /** The token's mechanism list (C_GetMechanismList) less the disabled ones. */
  mechs = new Set<number>();
  /** Mechanisms left out of the token's list (DeviceOptions.disabledMechanisms). */
  private readonly disabled = new Set<number>();

  constructor(private readonly opts: DeviceOptions) {}

  /** Checks the disabled mechanism names and loads the module (FAILED_PRECONDITION naming what is wrong). */
  load(): void {
    for (const name of this.opts.disabledMechanisms ?? []) {
      const m = mechanismByName(name);
      if (m === undefined) throw precondition(`device.disabledMechanisms: ${name} is not a mechanism name hsmd knows (a PKCS#11 CKM_* constant, such as CKM_AES_CMAC)`);
      this.disabled.add(m);
    }
    try {
      this.p11.load(this.opts.module);
    } catch (e) {
      throw precondition(`cannot load PKCS#11 module ${this.opts.module}: ${(e as Error).message}`);
    }
  }

  /** C_Initialize (CKF_OS_LOCKING_OK; already initialized is fine), then the slot, token facts and mechanisms. */
  initialize(): void {
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

  /** Opens `poolSize` read-write sessions, logs in (C_Login CKU_USER) and hands them to the pool. */
  openSessions(): void {
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

  /** Closes one session and opens another in its place (logging in again if that was the last one). */
  replaceSession(old: Buffer): Buffer {
    this.safe(() => this.p11.C_CloseSession(old));
    const fresh = this.p11.C_OpenSession(this.slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
    try {
      this.p11.C_Login(fresh, pk.CKU_USER, this.opts.pin);
    } catch (e) {
      if (ckrOf(e) !== CKR.USER_ALREADY_LOGGED_IN) throw e;
    }
    return fresh;
  }

  /** C_CloseAllSessions on the slot, best effort. */
  closeAllSessions(): void {
    this.safe(() => this.p11.C_CloseAllSessions(this.slot));
  }

  /** C_Finalize, best effort. */
  finalize(): void {
    this.safe(() => this.p11.C_Finalize());
  }

  /** Runs a cleanup call whose failure changes nothing (closing, destroying a throw-away object). */
  safe(fn: () => void): void {
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

  /** Is the mechanism in the token's list (and not disabled)? */
  supports(mech: number): boolean {
    return this.mechs.has(mech);
  }

  /** FAILED_PRECONDITION naming the mechanism when the device lacks it. */
  requireMechanism(mech: number, purpose: string): void {
    if (!this.mechs.has(mech)) throw precondition(`the device does not support ${mechanismName(mech)}, needed for ${purpose}`);
  }
}
