import * as pk from "pkcs11js";
import { Code, HsmError } from "../errors";
import { CKR, ckrOf } from "./ckr";
import { findHandles, findInit, handle } from "./handles";
import type { DeviceCore } from "./run";
import { QUARANTINE_PREFIX, everyObjectTemplate, idAttrs, objectInfoQuery, quarantineAttrs, unextractableTemplate, wrapGuardQuery } from "./templates";
import type { ObjectInventory, Part } from "./types";

/**
 * Object administration: what the token holds of hsmd's (inventory), quarantine and its way back,
 * relabelling, clearing CKA_EXTRACTABLE, and destroying a key's objects. Reconcile at start and the
 * cluster applier drive these; none is on a crypto call's path.
 */

/** A CK_BBOOL attribute value as pkcs11js returns it (a one-byte Buffer) or as given (a boolean). */
export function boolAttr(v: unknown): boolean {
  return Buffer.isBuffer(v) ? v.length > 0 && v[0] !== 0 : v === true;
}

/**
 * Length in bytes of a secret key, or undefined when it is not a multiple of 8. SoftHSM2 leaves
 * CKA_VALUE_LEN at 0 on unwrapped keys, and the value is sensitive, so this wraps the key under the
 * domain key with CKM_AES_KEY_WRAP (RFC 3394: output = length + 8; refuses other lengths) and
 * discards the blob.
 */
export async function secretLength(c: DeviceCore, id: string, domainKeyId: string): Promise<number | undefined> {
  try {
    const blob = await c.run("C_WrapKey", pk.CKM_AES_KEY_WRAP, (s) =>
      c.p11.C_WrapKeyAsync(s, { mechanism: pk.CKM_AES_KEY_WRAP }, handle(c, s, domainKeyId, "secret"), handle(c, s, id, "secret"), Buffer.alloc(16384)),
    );
    return blob.length - 8;
  } catch (e) {
    if (e instanceof HsmError && e.code !== Code.Unavailable && e.code !== Code.Internal) return undefined;
    const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
    if (ckr === CKR.GENERAL_ERROR || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.KEY_SIZE_RANGE) return undefined;
    throw e;
  }
}

/**
 * What the token (and this process's session objects) hold of hsmd's: every key id with its
 * parts; which of them have a secret or private object that could be wrapped (CKA_EXTRACTABLE
 * true or CKA_WRAP_WITH_TRUSTED false: written by an hsmd before keys were sealed); and the
 * quarantined objects (CKA_LABEL "hsmd-quarantine:<id>") by the key id they had.
 */
export async function inventory(c: DeviceCore): Promise<ObjectInventory> {
  return c.run("C_FindObjects", undefined, (s) => {
    const inv: ObjectInventory = { keys: new Map(), weak: new Set(), quarantined: new Map() };
    findInit(c, s, everyObjectTemplate());
    let hs: Buffer[] = [];
    try {
      for (;;) {
        const batch = c.p11.C_FindObjects(s, 256);
        if (batch.length === 0) break;
        hs = hs.concat(batch);
      }
    } finally {
      c.p11.C_FindObjectsFinal(s);
    }
    for (const h of hs) {
      let attrs: pk.Attribute[];
      try {
        attrs = c.p11.C_GetAttributeValue(s, h, objectInfoQuery());
      } catch (e) {
        // A process killed while the device wrote an object can leave one it cannot read back
        // (SoftHSM2: a truncated object file answers CKR_ATTRIBUTE_VALUE_INVALID). It cannot be
        // told to be hsmd's; skip it rather than fail the whole listing (and the start).
        c.opts.log?.(`pkcs11: skipping an object whose attributes cannot be read (${(e as Error).message})`);
        continue;
      }
      const [label, id, cls] = attrs;
      const l = (label!.value as Buffer).toString("utf8");
      const quarantined = l.startsWith(QUARANTINE_PREFIX);
      if (!l.startsWith("hsmd:") && !quarantined) continue;
      const cl = (cls!.value as Buffer).readUInt32LE(0);
      const part: Part = cl === pk.CKO_SECRET_KEY ? "secret" : cl === pk.CKO_PRIVATE_KEY ? "private" : "public";
      const raw = (id!.value as Buffer).toString("utf8");
      const key = quarantined ? raw.slice(QUARANTINE_PREFIX.length) : raw;
      const into = quarantined ? inv.quarantined : inv.keys;
      if (!into.has(key)) into.set(key, new Set());
      into.get(key)!.add(part);
      if (part !== "public") {
        try {
          const [ex, wwt] = c.p11.C_GetAttributeValue(s, h, wrapGuardQuery());
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
export async function quarantine(c: DeviceCore, id: string): Promise<void> {
  await relabel(c, id, quarantineAttrs(id));
}

/** Gives quarantined objects their key id back (a record explains them again). */
export async function restoreQuarantined(c: DeviceCore, id: string): Promise<void> {
  await relabel(c, `${QUARANTINE_PREFIX}${id}`, idAttrs(id));
}

/** Destroys a key's quarantined objects (the operator asked to: --purge-orphans). */
export async function purgeQuarantined(c: DeviceCore, id: string): Promise<void> {
  await destroy(c, `${QUARANTINE_PREFIX}${id}`);
}

/** Gives every object of key `fromId` the CKA_ID and CKA_LABEL of key `toId` (see KeyDevice.rename). */
export async function rename(c: DeviceCore, fromId: string, toId: string): Promise<void> {
  await relabel(c, fromId, idAttrs(toId));
}

/** Sets `attrs` (a new CKA_ID and CKA_LABEL) on every object of key `fromId`. */
async function relabel(c: DeviceCore, fromId: string, attrs: pk.Template): Promise<void> {
  await c.run("C_SetAttributeValue", undefined, (s) => {
    for (const part of ["secret", "private", "public"] as Part[]) {
      for (const h of findHandles(c, s, fromId, part)) c.p11.C_SetAttributeValue(s, h, attrs);
    }
  });
  // Whatever this process cached under the old or the new id is stale now.
  const to = (attrs.find((a) => a.type === pk.CKA_ID)!.value as Buffer).toString("utf8");
  for (const id of [fromId, to]) {
    c.cache.kept.delete(id);
    c.cache.copies.delete(id);
  }
}

/**
 * Clears CKA_EXTRACTABLE on a key's secret or private objects in place (PKCS#11 allows true →
 * false). For keys that live only in this device and so cannot be re-materialized from a record;
 * CKA_WRAP_WITH_TRUSTED cannot be set after creation (SoftHSM2: CKR_ATTRIBUTE_READ_ONLY), but an
 * unextractable key cannot be wrapped under any key anyway.
 */
export async function makeUnextractable(c: DeviceCore, id: string): Promise<void> {
  await c.run("C_SetAttributeValue", undefined, (s) => {
    for (const part of ["secret", "private"] as Part[]) {
      for (const h of findHandles(c, s, id, part)) c.p11.C_SetAttributeValue(s, h, unextractableTemplate());
    }
    c.cache.copies.delete(id);
  });
}

/** Destroys every object of a key (all parts; a transient one too). Idempotent. */
export async function destroy(c: DeviceCore, id: string): Promise<void> {
  await c.run("C_DestroyObject", undefined, (s) => {
    for (const part of ["secret", "private", "public"] as Part[]) {
      for (const h of findHandles(c, s, id, part)) c.p11.C_DestroyObject(s, h);
    }
    c.cache.forget(id);
    c.essential.delete(id);
  });
}
