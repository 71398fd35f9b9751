import * as pk from "pkcs11js";
import { randomBytes, randomUUID } from "node:crypto";
import { Code, HsmError, precondition } from "../errors";
import { CKR, ckrOf } from "./ckr";
import { CKM_AES_KEY_WRAP_PAD, CKM_EC_EDWARDS_KEY_PAIR_GEN, HASH_MECH } from "./constants";
import { sign, verify } from "./crypto";
import { findHandles, handle, has, setHandle } from "./handles";
import { ecdhMechanism, wrapMechanism } from "./mechanisms";
import { destroy } from "./objects";
import { retrySpurious, type DeviceCore } from "./run";
import { derOctetString, partsFromSpki, spkiFromAttributes } from "./spki";
import { ecPointQuery, keptCopyTemplate, privateTemplate, publicTemplate, rsaPublicQuery, secretTemplate, type TemplateIntent } from "./templates";
import type { KeyAlgorithm, Part, Usage, WrapSpec, WrappedMaterial } from "./types";

/**
 * A key's objects over its life in the device: made (generate, createPublic, unwrap, deriveEcdh),
 * sealed for its record (wrapped under the domain key, then kept unextractable), materialized again
 * from that record, and exported wrapped under a caller's key from it.
 */

/**
 * A kept object of a key (see Residence): a token object with token objects configured, else a
 * session object. A key the device cannot wrap (EdDSA on SoftHSM2) has no copy in its record: it
 * must persist in the token.
 */
export function intent(c: DeviceCore, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): TemplateIntent {
  return { id, alg, usages, residence: { kind: "kept", token: c.opts.tokenObjects || alg.type === "ed25519" } };
}

/**
 * What a new key (generate, import, unwrap, derive) is made as: a transient session object that
 * {@link sealForRecord} wraps under the domain key and replaces by its kept form. An HMAC
 * intermediate may also sign, so that the seal can prove the kept key computes the same MACs.
 */
export function newKeyIntent(id: string, alg: KeyAlgorithm, usages: readonly Usage[]): TemplateIntent {
  const u = alg.type === "hmac" && !usages.includes("sign") ? [...usages, "sign" as const] : usages;
  return { id, alg, usages: u, residence: { kind: "transient" } };
}

/** CKA_TOKEN of objects made from this intent. */
export function onToken(t: TemplateIntent): boolean {
  return t.residence.kind === "kept" && t.residence.token;
}

/** The SPKI of a public key object, from its CKA_MODULUS/CKA_PUBLIC_EXPONENT or CKA_EC_POINT. */
export function readPublicSpki(c: DeviceCore, s: Buffer, alg: KeyAlgorithm, pub: Buffer): Buffer {
  if (alg.type === "rsa") {
    const [m, e] = c.p11.C_GetAttributeValue(s, pub, rsaPublicQuery());
    return spkiFromAttributes(alg, { modulus: m!.value as Buffer, exponent: e!.value as Buffer });
  }
  const [pt] = c.p11.C_GetAttributeValue(s, pub, ecPointQuery());
  return spkiFromAttributes(alg, { ecPoint: pt!.value as Buffer });
}

/**
 * A key creation under {@link retrySpurious}: up to 3 attempts, the key's leftovers destroyed between
 * them. `fromDevice`: the inputs are the device's or hsmd's own (a generation, a record's blob), so
 * CKR_GENERAL_ERROR every time is a device fault (UNAVAILABLE, the device checked), not a bad input.
 */
export async function retryCreation<T>(c: DeviceCore, id: string, fn: () => Promise<T>, fromDevice = false): Promise<T> {
  try {
    return await retrySpurious(fn, { what: "a key creation", attempts: 3, cleanup: () => destroy(c, id).catch(() => undefined), log: c.opts.log });
  } catch (e) {
    throw fromDevice ? c.asDeviceFault(e, "to create the key") : e;
  }
}

/**
 * SoftHSM2 reports a failed integrity check of an AES-KW/KWP or OAEP blob as CKR_GENERAL_ERROR (or a
 * decoding failure as CKR_ARGUMENTS_BAD/CKR_DATA_INVALID): the caller's blob is bad.
 */
export function badBlob(e: unknown): never {
  const ckr = e instanceof HsmError ? ckrOf(e.cause) : undefined;
  if (ckr === CKR.GENERAL_ERROR || ckr === CKR.ARGUMENTS_BAD || ckr === CKR.DATA_INVALID || ckr === CKR.DATA_LEN_RANGE || ckr === CKR.ENCRYPTED_DATA_INVALID || ckr === CKR.ENCRYPTED_DATA_LEN_RANGE) {
    throw new HsmError(Code.InvalidArgument, "unwrap: the wrapped key blob failed its integrity check or does not decode under this key", { cause: (e as HsmError).cause });
  }
  throw e;
}

/**
 * Generates a key inside the device. Returns the SPKI for key pairs. The secret or private part is
 * made transient (see {@link newKeyIntent}) for {@link sealForRecord}, the public half as a kept
 * object; a key the device cannot wrap (Ed25519 on SoftHSM2 2.6) is made kept at once.
 */
export async function generate(c: DeviceCore, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<{ spki?: Buffer }> {
  const kept = intent(c, id, alg, usages);
  const t = alg.type === "ed25519" ? kept : newKeyIntent(id, alg, usages);
  if (alg.type === "aes" || alg.type === "hmac") {
    const mech = alg.type === "aes" ? pk.CKM_AES_KEY_GEN : pk.CKM_GENERIC_SECRET_KEY_GEN;
    c.mod.requireMechanism(mech, `${alg.type.toUpperCase()} key generation`);
    return retryCreation(
      c,
      id,
      () =>
        c.runCreating("C_GenerateKey", mech, onToken(t), async (s) => {
          const h = await c.p11.C_GenerateKeyAsync(s, { mechanism: mech }, secretTemplate(t, true));
          setHandle(c, id, "secret", h, t);
          return {};
        }),
      true,
    );
  }
  const mech = alg.type === "rsa" ? pk.CKM_RSA_PKCS_KEY_PAIR_GEN : alg.type === "ec" ? pk.CKM_EC_KEY_PAIR_GEN : CKM_EC_EDWARDS_KEY_PAIR_GEN;
  c.mod.requireMechanism(mech, `${alg.type} key pair generation`);
  return retryCreation(
    c,
    id,
    () =>
      c.runCreating("C_GenerateKeyPair", mech, onToken(kept), async (s) => {
        let kp: pk.KeyPair;
        try {
          kp = await c.p11.C_GenerateKeyPairAsync(s, { mechanism: mech }, publicTemplate(kept), privateTemplate(t));
        } catch (e) {
          if (alg.type === "ec" && (ckrOf(e) === 0x130 /* CKR_DOMAIN_PARAMS_INVALID */ || ckrOf(e) === CKR.ATTRIBUTE_VALUE_INVALID)) {
            throw precondition(`the device does not support the ${alg.curve} curve`);
          }
          throw e;
        }
        setHandle(c, id, "private", kp.privateKey, t);
        setHandle(c, id, "public", kp.publicKey, kept);
        return { spki: readPublicSpki(c, s, alg, kp.publicKey) };
      }),
    true,
  );
}

/** Creates a public key object from an SPKI (import, and materializing a pair's public half). */
export async function createPublic(c: DeviceCore, id: string, spki: Buffer, usages: readonly Usage[]): Promise<KeyAlgorithm> {
  const parts = partsFromSpki(spki);
  const t = intent(c, id, parts.alg, usages);
  const tpl = publicTemplate(t, {
    modulus: parts.modulus,
    exponent: parts.exponent,
    ecPointDer: parts.point ? derOctetString(parts.point) : undefined,
  });
  await c.run("C_CreateObject", undefined, (s) => {
    const h = c.p11.C_CreateObject(s, tpl);
    c.cache.put(id, "public", h);
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
export async function sealForRecord(c: DeviceCore, id: string, alg: KeyAlgorithm, usages: readonly Usage[], domainKeyId: string): Promise<WrappedMaterial | undefined> {
  const secret = alg.type === "aes" || alg.type === "hmac";
  const part: Part = secret ? "secret" : "private";
  const e = c.cache.transients.get(id)?.[part];
  if (!e) return undefined;
  c.mod.requireMechanism(CKM_AES_KEY_WRAP_PAD, "wrapping keys under the domain key");
  const t = intent(c, id, alg, usages);
  let blob: Buffer;
  try {
    blob = Buffer.from(
      await c.run("C_WrapKey", CKM_AES_KEY_WRAP_PAD, (s) => c.p11.C_WrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, handle(c, s, domainKeyId, "secret"), e, Buffer.alloc(16384))),
    );
  } catch (err) {
    if (!(err instanceof HsmError && ckrOf(err.cause) === CKR.KEY_NOT_WRAPPABLE)) throw err;
    await c.run(
      "C_CopyObject",
      undefined,
      (s) => {
        const h = c.p11.C_CopyObject(s, e, keptCopyTemplate(onToken(t)));
        c.p11.C_DestroyObject(s, e);
        c.cache.put(id, part, h);
      },
      true,
      onToken(t),
    );
    c.cache.transients.delete(id);
    return undefined;
  }
  const material: WrappedMaterial = { alg: "AES_KWP", wrappingKeyId: domainKeyId, blob };
  // A session copy a crypto call made of the intermediate (see cryptoHandle) goes first.
  const copy = c.cache.copies.get(id)?.[part];
  if (copy) {
    c.cache.copies.set(id, { ...c.cache.copies.get(id), [part]: undefined });
    await c.run("C_DestroyObject", undefined, (s) => c.mod.safe(() => c.p11.C_DestroyObject(s, copy)));
  }
  // Between attempts, whatever a failed unwrap left of this part goes; the intermediate and a
  // pair's public half stay.
  const cleanup = () =>
    c
      .run("C_DestroyObject", undefined, (s) => {
        for (const h of findHandles(c, s, id, part)) if (!h.equals(e)) c.p11.C_DestroyObject(s, h);
      })
      .catch(() => undefined);
  await retrySpurious(
    () =>
      c.runCreating("C_UnwrapKey", CKM_AES_KEY_WRAP_PAD, onToken(t), async (s) => {
        const h = await c.p11.C_UnwrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, handle(c, s, domainKeyId, "secret"), blob, secret ? secretTemplate(t, false) : privateTemplate(t));
        c.cache.put(id, part, h);
      }),
    { what: "sealing a key", attempts: 3, cleanup, log: c.opts.log },
  ).catch((err: unknown) => {
    // The blob was wrapped by this device a moment ago: a failure here is the device's.
    throw c.asDeviceFault(err, "to seal the key");
  });
  try {
    if (alg.type === "hmac") await sameMac(c, id, e, alg, usages);
  } finally {
    await c.run("C_DestroyObject", undefined, (s) => c.mod.safe(() => c.p11.C_DestroyObject(s, e)));
    c.cache.transients.delete(id);
  }
  return material;
}

/** Does the kept HMAC key `id` compute the MAC its transient intermediate `e` computes? INVALID_ARGUMENT if not. */
async function sameMac(c: DeviceCore, id: string, e: Buffer, alg: Extract<KeyAlgorithm, { type: "hmac" }>, usages: readonly Usage[]): Promise<void> {
  const mech = { mechanism: HASH_MECH[alg.hash].hmac };
  const challenge = randomBytes(32);
  const mac = Buffer.from(
    await c.run("C_Sign", mech.mechanism, (s) => {
      c.p11.C_SignInit(s, mech, e);
      return c.p11.C_SignAsync(s, challenge, Buffer.alloc(64));
    }),
  );
  // The kept key may be sign-only or verify-only: ask it the way its usages allow.
  const same = usages.includes("sign")
    ? mac.equals(await sign(c, id, { name: "HMAC", hash: alg.hash }, challenge, "secret"))
    : await verify(c, id, { name: "HMAC", hash: alg.hash }, challenge, mac, "secret");
  if (!same) throw new HsmError(Code.InvalidArgument, "secret key material must be a multiple of 8 bytes long: the device cannot wrap other lengths faithfully under the domain key");
}

/**
 * WrapKey for an exportable key: its record's blob is unwrapped under the domain key into a
 * transient, process-private session object, which is wrapped under the caller's key and destroyed
 * at once. The key's kept objects can never be wrapped (CKA_EXTRACTABLE=false).
 */
export async function exportWrapped(c: DeviceCore, wrappingKeyId: string, wrappingPart: Part, spec: WrapSpec, alg: KeyAlgorithm, material: WrappedMaterial): Promise<Buffer> {
  c.oaep.requireFor(spec);
  const mech = wrapMechanism(spec);
  c.mod.requireMechanism(mech.mechanism, `wrap with ${spec.name}`);
  const secret = alg.type === "aes" || alg.type === "hmac";
  const t: TemplateIntent = { id: `hsmd-export-${randomUUID()}`, alg, usages: [], residence: { kind: "transient" } };
  const out = await c.run("C_WrapKey", mech.mechanism, async (s) => {
    const x = await c.p11.C_UnwrapKeyAsync(
      s,
      { mechanism: CKM_AES_KEY_WRAP_PAD },
      handle(c, s, material.wrappingKeyId, "secret"),
      material.blob,
      secret ? secretTemplate(t, false) : privateTemplate(t),
    );
    try {
      return await c.p11.C_WrapKeyAsync(s, mech, handle(c, s, wrappingKeyId, wrappingPart), x, Buffer.alloc(16384));
    } finally {
      c.mod.safe(() => c.p11.C_DestroyObject(s, x));
    }
  });
  return Buffer.from(out);
}

/** Unwraps a record's material under the domain key into the device (materialization), as kept objects. */
export async function materialize(c: DeviceCore, id: string, alg: KeyAlgorithm, usages: readonly Usage[], material: WrappedMaterial, spki?: Buffer): Promise<void> {
  const t = intent(c, id, alg, usages);
  const secret = alg.type === "aes" || alg.type === "hmac";
  await retryCreation(
    c,
    id,
    () =>
      c.runCreating("C_UnwrapKey", CKM_AES_KEY_WRAP_PAD, onToken(t), async (s) => {
        const h = await c.p11.C_UnwrapKeyAsync(
          s,
          { mechanism: CKM_AES_KEY_WRAP_PAD },
          handle(c, s, material.wrappingKeyId, "secret"),
          material.blob,
          secret ? secretTemplate(t, false) : privateTemplate(t),
        );
        c.cache.put(id, secret ? "secret" : "private", h);
      }),
    true,
  );
  if (!secret && spki && !(await has(c, id, "public"))) await createPublic(c, id, spki, usages);
}

/** Unwraps a caller's blob under one of hsmd's keys into a new key. */
export async function unwrap(c: DeviceCore, unwrappingKeyId: string, unwrappingPart: Part, spec: WrapSpec, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
  c.oaep.requireFor(spec);
  const mech = wrapMechanism(spec);
  c.mod.requireMechanism(mech.mechanism, `unwrap with ${spec.name}`);
  const t = newKeyIntent(id, alg, usages);
  const secret = alg.type === "aes" || alg.type === "hmac";
  await retryCreation(c, id, () =>
    c.runCreating("C_UnwrapKey", mech.mechanism, onToken(t), async (s) => {
      const h = await c.p11.C_UnwrapKeyAsync(s, mech, handle(c, s, unwrappingKeyId, unwrappingPart), blob, secret ? secretTemplate(t, false) : privateTemplate(t));
      setHandle(c, id, secret ? "secret" : "private", h, t);
    }),
  ).catch(badBlob);
}

/** ECDH (CKM_ECDH1_DERIVE, CKD_NULL) with a peer's public point into a new AES key. */
export async function deriveEcdh(c: DeviceCore, privateKeyId: string, peerPoint: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[]): Promise<void> {
  c.mod.requireMechanism(pk.CKM_ECDH1_DERIVE, "ECDH key derivation");
  const t = newKeyIntent(id, alg, usages);
  await c.runCreating("C_DeriveKey", pk.CKM_ECDH1_DERIVE, onToken(t), async (s) => {
    const h = await c.p11.C_DeriveKeyAsync(s, ecdhMechanism(peerPoint), handle(c, s, privateKeyId, "private"), secretTemplate(t, true));
    setHandle(c, id, "secret", h, t);
  });
}
