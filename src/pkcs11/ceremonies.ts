import * as pk from "pkcs11js";
import { Code, HsmError, precondition } from "../errors";
import { CKM_AES_KEY_WRAP_PAD } from "./constants";
import { handle, has, setHandle } from "./handles";
import { badBlob, newKeyIntent, onToken, readPublicSpki, retryCreation } from "./key-objects";
import { oaep } from "./mechanisms";
import { boolAttr, destroy } from "./objects";
import type { DeviceCore } from "./run";
import { domainKeyTemplate, importEphemeralTemplate, privateTemplate, publicTemplate, secretTemplate, wrapGuardQuery, type TemplateIntent } from "./templates";
import type { KeyAlgorithm, OaepHash, Usage } from "./types";

/**
 * The key ceremonies: the cluster's domain key (made at init, handed to a joining node wrapped under
 * its transport key, unwrapped there), this node's transport key pair, and BYOK import under the
 * import key. Every key moves between HSMs only wrapped, and is unwrapped only inside one.
 */

/** Finds the domain key, or generates it (AES-256, never extractable) when `create` is set. */
export async function ensureDomainKey(c: DeviceCore, id: string, create: boolean): Promise<boolean> {
  if (await has(c, id, "secret")) return true;
  if (!create) return false;
  c.mod.requireMechanism(pk.CKM_AES_KEY_GEN, "the domain key");
  c.mod.requireMechanism(CKM_AES_KEY_WRAP_PAD, "the domain key");
  await c.runCreating("C_GenerateKey", pk.CKM_AES_KEY_GEN, true, async (s) => {
    const h = await c.p11.C_GenerateKeyAsync(s, { mechanism: pk.CKM_AES_KEY_GEN }, domainKeyTemplate(id, true));
    c.cache.kept.set(id, { secret: h });
  });
  return true;
}

/**
 * Can the domain key be handed to a joining node? Only when it is extractable and guarded by
 * CKA_WRAP_WITH_TRUSTED (a domain key made before clustering is not extractable at all).
 */
export async function domainKeyShareable(c: DeviceCore, id: string): Promise<boolean> {
  return c.run("C_GetAttributeValue", undefined, (s) => {
    const [ex, wwt] = c.p11.C_GetAttributeValue(s, handle(c, s, id, "secret"), wrapGuardQuery());
    return boolAttr(ex?.value) && boolAttr(wwt?.value);
  });
}

/**
 * Finds or generates this node's transport key pair (RSA-3072) for joining a cluster; returns its
 * SPKI. The private half can only unwrap, is sensitive and never extractable: the domain key a
 * member wraps under the public half can be opened only inside this HSM.
 */
export async function ensureTransportKey(c: DeviceCore, id: string): Promise<Buffer> {
  const alg: KeyAlgorithm = { type: "rsa", bits: 3072 };
  if (!(await has(c, id, "private"))) {
    c.mod.requireMechanism(pk.CKM_RSA_PKCS_OAEP, "joining a cluster");
    const t: TemplateIntent = { id, alg, usages: ["unwrap", "wrap"], residence: { kind: "kept", token: true } };
    await c.runCreating("C_GenerateKeyPair", pk.CKM_RSA_PKCS_KEY_PAIR_GEN, true, async (s) => {
      const kp = await c.p11.C_GenerateKeyPairAsync(s, { mechanism: pk.CKM_RSA_PKCS_KEY_PAIR_GEN }, publicTemplate(t), privateTemplate(t));
      c.cache.kept.set(id, { private: kp.privateKey, public: kp.publicKey });
    });
  }
  return c.run("C_GetAttributeValue", undefined, (s) => readPublicSpki(c, s, alg, handle(c, s, id, "public")));
}

/**
 * Wraps the domain key (CKA_WRAP_WITH_TRUSTED) under a joiner's transport public key that a
 * security officer has just placed in this token as a trusted object (`trustedId`, see
 * createTrustedPublicKey): CKM_RSA_PKCS_OAEP inside the HSM. The device itself refuses
 * to wrap the domain key under anything untrusted. The trusted object is destroyed afterwards.
 */
export async function wrapDomainKeyForJoiner(c: DeviceCore, domainKeyId: string, trustedId: string, hash: OaepHash): Promise<Buffer> {
  try {
    return await c.run("C_WrapKey", pk.CKM_RSA_PKCS_OAEP, async (s) => {
      c.cache.kept.delete(trustedId);
      return c.p11.C_WrapKeyAsync(s, oaep(hash), handle(c, s, trustedId, "public"), handle(c, s, domainKeyId, "secret"), Buffer.alloc(1024));
    });
  } finally {
    await destroy(c, trustedId).catch(() => undefined);
  }
}

/**
 * Unwraps a domain key a member wrapped for this node with its transport key, as a token object
 * with the domain key's attributes (so this node can in turn approve later joins).
 */
export async function unwrapDomainKey(c: DeviceCore, transportKeyId: string, blob: Buffer, hash: OaepHash, domainKeyId: string): Promise<void> {
  await c.runCreating("C_UnwrapKey", pk.CKM_RSA_PKCS_OAEP, true, async (s) => {
    const h = await c.p11.C_UnwrapKeyAsync(s, oaep(hash), handle(c, s, transportKeyId, "private"), blob, domainKeyTemplate(domainKeyId, false));
    c.cache.kept.set(domainKeyId, { secret: h });
  });
}

/**
 * BYOK: `blob` = RSA-OAEP-SHA256(ephemeral AES-256 key) ‖ AES-KWP(ephemeral key, material), where
 * the RSA key is the import key. Both unwraps run inside the device; the ephemeral key is a
 * session object destroyed at once.
 */
export async function importWrapped(c: DeviceCore, importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash: OaepHash = c.oaep.importHash()): Promise<void> {
  const rsaLen = 384;
  if (!c.oaep.supports(hash)) throw precondition(`the device does not support CKM_RSA_PKCS_OAEP with ${hash.toUpperCase()}, which the import key is used with`);
  if (blob.length <= rsaLen + 8) throw new HsmError(Code.InvalidArgument, `wrapped key material must be ${rsaLen} bytes of RSA-OAEP then the AES-KWP blob; got ${blob.length} bytes`);
  // Imports are rare: run them one at a time, so the import key is never used concurrently.
  const turn = c.importQueue.then(() => undefined);
  let done!: () => void;
  c.importQueue = new Promise<void>((r) => (done = r));
  await turn;
  try {
    await importWrappedNow(c, importKeyId, blob, id, alg, usages, hash);
  } finally {
    done();
  }
}

async function importWrappedNow(c: DeviceCore, importKeyId: string, blob: Buffer, id: string, alg: KeyAlgorithm, usages: readonly Usage[], hash: OaepHash): Promise<void> {
  const rsaLen = 384;
  const t = newKeyIntent(id, alg, usages);
  const secret = alg.type === "aes" || alg.type === "hmac";
  await retryCreation(c, id, () =>
    c.runCreating("C_UnwrapKey", pk.CKM_RSA_PKCS_OAEP, onToken(t), async (s) => {
      const eph = await c.p11.C_UnwrapKeyAsync(s, oaep(hash), handle(c, s, importKeyId, "private"), blob.subarray(0, rsaLen), importEphemeralTemplate());
      try {
        const h = await c.p11.C_UnwrapKeyAsync(s, { mechanism: CKM_AES_KEY_WRAP_PAD }, eph, blob.subarray(rsaLen), secret ? secretTemplate(t, false) : privateTemplate(t));
        setHandle(c, id, secret ? "secret" : "private", h, t);
      } finally {
        c.mod.safe(() => c.p11.C_DestroyObject(s, eph));
      }
    }),
  ).catch(badBlob);
}
