import * as pk from "pkcs11js";
import { Code, HsmError } from "../errors";
import { FindDeferred } from "./find-gate";
import { KeyNotMaterializedError } from "./not-materialized";
import type { DeviceCore } from "./run";
import { findTemplate, sessionCopyTemplate, type TemplateIntent } from "./templates";
import type { Part } from "./types";

/** The object handles of one key's parts. */
export type PartHandles = Partial<Record<Part, Buffer>>;

/**
 * Object handles by key id, so that crypto calls never search (SoftHSM2 searches objects linearly).
 * A handle is cached when hsmd makes, materializes or finds an object, and dropped when the object
 * is destroyed or relabelled, or every one at once when the sessions are recovered or a handle went
 * stale.
 */
export class HandleCache {
  /** key id → its parts' handles */
  readonly kept = new Map<string, PartHandles>();
  /** Session-object copies of token keys for crypto calls (see cryptoHandle). */
  readonly copies = new Map<string, PartHandles>();
  /** Keys the device would not copy. */
  readonly noCopy = new Set<string>();
  /** Transient (extractable, process-private) parts of new keys not sealed yet (see sealForRecord). */
  readonly transients = new Map<string, PartHandles>();

  /** Caches one part's handle beside the key's other parts. */
  put(id: string, part: Part, h: Buffer): void {
    this.kept.set(id, { ...this.kept.get(id), [part]: h });
  }

  /** Forgets every handle and copy (after a recovery or a stale handle: the handles may be reused). */
  clear(): void {
    this.kept.clear();
    this.copies.clear();
  }

  /** Forgets what is cached of a key once its objects are destroyed. */
  forget(id: string): void {
    this.kept.delete(id);
    this.copies.delete(id);
    this.noCopy.delete(id);
    this.transients.delete(id);
  }
}

/** C_FindObjectsInit, deferred (see DeviceCore.run) while token-object creations are in flight. */
export function findInit(c: DeviceCore, s: Buffer, template: pk.Template): void {
  if (c.syncPhase && c.findGate.busy) throw new FindDeferred();
  c.p11.C_FindObjectsInit(s, template);
}

/** Every object of a key's part, by an uncached search on CKA_ID and CKA_CLASS. */
export function findHandles(c: DeviceCore, s: Buffer, id: string, part: Part): Buffer[] {
  findInit(c, s, findTemplate(id, part));
  try {
    return c.p11.C_FindObjects(s, 16);
  } finally {
    c.p11.C_FindObjectsFinal(s);
  }
}

/** The handle of a key's part, from the cache or found once by CKA_ID. */
export function handle(c: DeviceCore, s: Buffer, id: string, part: Part): Buffer {
  const cached = c.cache.kept.get(id)?.[part];
  if (cached) return cached;
  const found = findHandles(c, s, id, part);
  if (found.length === 0) {
    if (c.essential.get(id) !== part) throw new KeyNotMaterializedError(id, part);
    c.faults.suspect(`${id} not found`);
    throw new HsmError(Code.Unavailable, `the device cannot find ${id}, which this node holds: a device fault (the node is re-initializing the module); retry`, { transient: true });
  }
  const h = found[0]!;
  c.cache.put(id, part, h);
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
export function cryptoHandle(c: DeviceCore, s: Buffer, id: string, part: Part): Buffer {
  const copy = c.cache.copies.get(id)?.[part];
  if (copy) return copy;
  const h = handle(c, s, id, part);
  if (!c.opts.tokenObjects || !c.opts.sessionCopies || c.cache.noCopy.has(id)) return h;
  let cp: Buffer;
  try {
    cp = c.p11.C_CopyObject(s, h, sessionCopyTemplate());
  } catch {
    // A device (or key) that cannot copy objects: use the token object itself.
    c.cache.noCopy.add(id);
    return h;
  }
  c.cache.copies.set(id, { ...c.cache.copies.get(id), [part]: cp });
  return cp;
}

/** Caches a new object's handle; a transient one is also remembered for sealForRecord. */
export function setHandle(c: DeviceCore, id: string, part: Part, h: Buffer, t: TemplateIntent): void {
  c.cache.put(id, part, h);
  if (t.residence.kind === "transient") c.cache.transients.set(id, { ...c.cache.transients.get(id), [part]: h });
}

/**
 * Does this process hold a handle for the key's part (it made, materialized or found it)? No
 * device call: SoftHSM2 searches objects linearly, which a cluster applier cannot afford per key.
 */
export function cached(c: DeviceCore, id: string, part: Part): boolean {
  return c.cache.kept.get(id)?.[part] !== undefined;
}

/** Is this part of the key present in the device? */
export async function has(c: DeviceCore, id: string, part: Part): Promise<boolean> {
  return c.run("C_FindObjects", undefined, (s) => {
    try {
      handle(c, s, id, part);
      return true;
    } catch (e) {
      if (e instanceof KeyNotMaterializedError) return false;
      throw e;
    }
  });
}
