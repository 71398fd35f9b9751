/**
 * Key-version calls (RotateKey, SetMinDecryptionVersion) over the generated KeyService client with a
 * session's token, for tests that need them whatever the SDK's wrappers are; and BYOK import of
 * known AES material, so a test can check the HSM's ciphertexts with Node's crypto.
 */
import * as grpc from "@grpc/grpc-js";
import { createDecipheriv, randomBytes } from "node:crypto";
import { KeyServiceClient } from "../../src/gen/hsm/v1/keys";
import { HsmClientError, KeySpec, KeyUsage, WrapAlgorithm, wrapForImport, type HsmClient } from "../../src/sdk";

/** Calls a KeyService method by its client name with `c`'s session; rejects with an HsmClientError. */
export function keyServiceCall<Res>(endpoint: string, c: HsmClient, method: "rotateKey" | "setMinDecryptionVersion" | "listKeyVersions", req: object): Promise<Res> {
  const client = new KeyServiceClient(endpoint, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${c.exportSession()?.token ?? ""}`);
  return new Promise<Res>((resolve, reject) => {
    const fn = (client as unknown as Record<string, (r: object, m: grpc.Metadata, cb: (e: grpc.ServiceError | null, r: Res) => void) => void>)[method]!;
    fn.call(client, req, md, (e, r) => {
      client.close();
      if (e) reject(HsmClientError.from(e));
      else resolve(r);
    });
  });
}

/** Imports known AES material (16 or 32 bytes) through BYOK; answers the key id. */
export async function importAes(c: HsmClient, material: Buffer, label = "known-aes"): Promise<string> {
  const p = await c.getImportParameters({});
  const blob = wrapForImport(Buffer.from(p.publicKeySpki), material, p.wrappingAlgorithm);
  const spec = material.length === 16 ? KeySpec.KEY_SPEC_AES_128 : KeySpec.KEY_SPEC_AES_256;
  return (await c.importKey({ spec, label, usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], importKeyId: p.importKeyId, wrappedKeyMaterial: blob })).id;
}

/**
 * A generated (hence rotatable), exportable AES-256 key whose material a test can read: `material()`
 * wraps its primary version out under an imported KEK (WrapKey, AES-KWP) and unwraps it with Node's
 * crypto (RFC 5649).
 */
export async function knownGeneratedAes(c: HsmClient, label = "known-generated"): Promise<{ id: string; material: () => Promise<Buffer> }> {
  const kek = randomBytes(32);
  const p = await c.getImportParameters({});
  const kekId = (
    await c.importKey({
      spec: KeySpec.KEY_SPEC_AES_256,
      label: `${label}-kek`,
      usages: [KeyUsage.KEY_USAGE_WRAP, KeyUsage.KEY_USAGE_UNWRAP],
      importKeyId: p.importKeyId,
      wrappedKeyMaterial: wrapForImport(Buffer.from(p.publicKeySpki), kek, p.wrappingAlgorithm),
    })
  ).id;
  const id = (await c.generateKey({ spec: KeySpec.KEY_SPEC_AES_256, label, usages: [KeyUsage.KEY_USAGE_ENCRYPT, KeyUsage.KEY_USAGE_DECRYPT], exportable: true })).id;
  const material = async () => {
    const { wrappedKey } = await c.wrapKey({ wrappingKeyId: kekId, keyId: id, algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP });
    const d = createDecipheriv("id-aes256-wrap-pad", kek, Buffer.from("A65959A6", "hex"));
    return Buffer.concat([d.update(wrappedKey), d.final()]);
  };
  return { id, material };
}
