/**
 * Key-version calls (RotateKey, SetMinDecryptionVersion) over the generated KeyService client with a
 * session's token, for tests that need them whatever the SDK's wrappers are; and BYOK import of
 * known AES material, so a test can check the HSM's ciphertexts with Node's crypto.
 */
import * as grpc from "@grpc/grpc-js";
import { KeyServiceClient } from "../../src/gen/hsm/v1/keys";
import { HsmClientError, KeySpec, KeyUsage, wrapForImport, type HsmClient } from "../../src/sdk";

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
