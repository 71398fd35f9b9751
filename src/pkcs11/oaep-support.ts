import * as pk from "pkcs11js";
import { constants as cryptoConstants, generateKeyPairSync, privateDecrypt, publicEncrypt, type KeyObject } from "node:crypto";
import { precondition } from "../errors";
import { oaep } from "./mechanisms";
import type { DeviceCore } from "./run";
import { probeRsaPrivateTemplate, probeRsaPublicTemplate } from "./templates";
import type { CipherSpec, OaepHash, WrapSpec } from "./types";

/**
 * What CKM_RSA_PKCS_OAEP really does on this device, probed once at open: which hashes it takes
 * and whether it honours a label (pSourceData). The mechanism list cannot tell, and the answers
 * decide where OAEP is encoded (in the device, or on the host over CKM_RSA_X_509) and what wrapping
 * and BYOK import may use.
 */
export class OaepSupport {
  /** OAEP hashes the device does natively (probed at open). */
  private readonly native = new Set<OaepHash>();
  /** OAEP hashes for which the device also honours a label (pSourceData) both ways (probed at open). */
  private readonly labelNative = new Set<OaepHash>();

  /**
   * Which OAEP hashes CKM_RSA_PKCS_OAEP accepts: the mechanism list cannot tell (SoftHSM2 2.6 lists
   * it but takes SHA-1 only), so try each on a throw-away key pair made on the host for the purpose.
   * For each native hash, also whether the device honours an OAEP label (pSourceData) both ways:
   * SoftHSM2 2.6 refuses one on encrypt (CKR_ARGUMENTS_BAD) and ignores it on decrypt (a ciphertext
   * made with another label decrypts), so a label must never be passed to such a device.
   */
  async probe(c: DeviceCore): Promise<void> {
    if (!c.mod.mechs.has(pk.CKM_RSA_PKCS_OAEP)) return;
    const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const jwk = pair.privateKey.export({ format: "jwk" });
    await c.run("C_EncryptInit", undefined, (s) => {
      const h = c.p11.C_CreateObject(s, probeRsaPublicTemplate(jwk));
      let priv: Buffer | undefined;
      try {
        // A device that refuses private keys in the clear (as it should for real keys) simply gets
        // no native labels: labelled calls then take the host-side encoding.
        priv = c.p11.C_CreateObject(s, probeRsaPrivateTemplate(jwk));
      } catch {
        priv = undefined;
      }
      try {
        for (const hash of ["sha1", "sha256", "sha384", "sha512"] as OaepHash[]) {
          try {
            c.p11.C_EncryptInit(s, oaep(hash), h);
            c.p11.C_Encrypt(s, Buffer.from([1]), Buffer.alloc(256));
            this.native.add(hash);
          } catch {
            /* not supported */
          }
          if (this.native.has(hash) && priv && labelHonoured(c.p11, s, hash, h, priv, pair.publicKey, pair.privateKey)) this.labelNative.add(hash);
        }
      } finally {
        c.p11.C_DestroyObject(s, h);
        if (priv) c.p11.C_DestroyObject(s, priv);
      }
    });
  }

  /** Does CKM_RSA_PKCS_OAEP work with this hash on this device? */
  supports(hash: OaepHash): boolean {
    return this.native.has(hash);
  }

  /** Does CKM_RSA_PKCS_OAEP with this hash honour a label (pSourceData) on this device? */
  supportsLabel(hash: OaepHash): boolean {
    return this.labelNative.has(hash);
  }

  /** RSA-OAEP encoded on the host: the device lacks the hash, or ignores or refuses the label. */
  onHost(spec: CipherSpec): boolean {
    return spec.name === "RSA_OAEP" && (!this.native.has(spec.hash) || (!!spec.label?.length && !this.labelNative.has(spec.hash)));
  }

  /** Key wrapping has no host-side OAEP fallback: the unwrapped key must never pass through the host. */
  requireFor(spec: WrapSpec): void {
    if (spec.name === "RSA_OAEP" && !this.native.has(spec.hash)) {
      throw precondition(`the device does not support CKM_RSA_PKCS_OAEP with ${spec.hash.toUpperCase()}${this.native.has("sha1") ? "; use RSA_OAEP_SHA1" : ""}`);
    }
    if (spec.name === "RSA_OAEP" && spec.label?.length && !this.labelNative.has(spec.hash)) {
      throw precondition(
        `the device does not honour an OAEP label (CKM_RSA_PKCS_OAEP pSourceData) with ${spec.hash.toUpperCase()}, and key wrapping has no host-side fallback: wrap without oaep_label`,
      );
    }
  }

  /** The OAEP hash BYOK import uses on this device: SHA-256 where supported, else SHA-1. */
  importHash(): OaepHash {
    if (this.native.has("sha256")) return "sha256";
    if (this.native.has("sha1")) return "sha1";
    throw precondition("the device supports CKM_RSA_PKCS_OAEP with neither SHA-256 nor SHA-1: key import is not available");
  }
}

/**
 * Does the device apply an OAEP label (checked against Node's crypto): a ciphertext it makes with
 * a label opens on the host under that label, and one the host makes opens in the device under
 * that label and fails under another.
 */
function labelHonoured(p11: pk.PKCS11, s: Buffer, hash: OaepHash, pub: Buffer, priv: Buffer, hostPub: KeyObject, hostPriv: KeyObject): boolean {
  const label = Buffer.from("hsmd oaep label probe");
  const msg = Buffer.from("probe");
  const host = { padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash };
  try {
    p11.C_EncryptInit(s, oaep(hash, label), pub);
    const ct = p11.C_Encrypt(s, msg, Buffer.alloc(256));
    if (!privateDecrypt({ key: hostPriv, ...host, oaepLabel: label }, ct).equals(msg)) return false;
    const ct2 = publicEncrypt({ key: hostPub, ...host, oaepLabel: label }, msg);
    p11.C_DecryptInit(s, oaep(hash, label), priv);
    if (!Buffer.from(p11.C_Decrypt(s, ct2, Buffer.alloc(256))).equals(msg)) return false;
  } catch {
    return false;
  }
  try {
    p11.C_DecryptInit(s, oaep(hash, Buffer.from("another label")), priv);
    p11.C_Decrypt(s, publicEncrypt({ key: hostPub, ...host, oaepLabel: label }, msg), Buffer.alloc(256));
    return false; // it ignored the label
  } catch {
    return true;
  }
}
