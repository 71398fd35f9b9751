import type { CryptoServiceServer } from "../../gen/hsm/v1/crypto";
import {
  batchResultToProto,
  dataKeyFromProto,
  dataKeyToProto,
  decryptDataKeyFromProto,
  decryptFromProto,
  deriveKeyFromProto,
  encryptFromProto,
  signFromProto,
  unwrapKeyFromProto,
  verifyFromProto,
  wrapKeyFromProto,
} from "../map/crypto";
import { keyToProto } from "../map/keys";
import type { CallContext } from "../pipeline/context";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.CryptoService: crypto operations (and batches, each item authorized) over the {@link KeyService}, proto ↔ domain through ../map/crypto. */
export function cryptoService(opts: GrpcServerOptions, p: Pipeline): CryptoServiceServer {
  const { keys: k } = opts;
  const { rpc, owner } = p;
  const batch = async <I extends { keyId: string }, O>(c: CallContext, items: I[], fn: (i: I) => Promise<O>) =>
    (
      await k.runBatch(items, async (i) => {
        await c.checkItem(i.keyId);
        return fn(i);
      })
    ).map((res) => ({ result: batchResultToProto(res) }));
  return {
    encrypt: rpc("Encrypt", (r) => k.encrypt(encryptFromProto(r))),
    decrypt: rpc("Decrypt", (r) => k.decrypt(decryptFromProto(r))),
    sign: rpc("Sign", (r) => k.sign(signFromProto(r))),
    verify: rpc("Verify", (r) => k.verify(verifyFromProto(r))),
    wrapKey: rpc("WrapKey", (r) => k.wrapKey(wrapKeyFromProto(r))),
    unwrapKey: rpc("UnwrapKey", async (r, c) => keyToProto(await k.unwrapKey(unwrapKeyFromProto(r), owner(c)))),
    deriveKey: rpc("DeriveKey", async (r, c) => keyToProto(await k.deriveKey(deriveKeyFromProto(r), owner(c)))),
    generateRandom: rpc("GenerateRandom", (r) => k.generateRandom(r)),
    generateDataKey: rpc("GenerateDataKey", async (r) => dataKeyToProto(await k.generateDataKey(dataKeyFromProto(r), true))),
    generateDataKeyWithoutPlaintext: rpc("GenerateDataKeyWithoutPlaintext", async (r) => dataKeyToProto(await k.generateDataKey(dataKeyFromProto(r), false))),
    decryptDataKey: rpc("DecryptDataKey", (r) => k.decryptDataKey(decryptDataKeyFromProto(r))),
    batchSign: rpc("BatchSign", async (r, c) => ({ results: await batch(c, r.items, (i) => k.sign(signFromProto(i))) })),
    batchVerify: rpc("BatchVerify", async (r, c) => ({ results: await batch(c, r.items, (i) => k.verify(verifyFromProto(i))) })),
    batchEncrypt: rpc("BatchEncrypt", async (r, c) => ({ results: await batch(c, r.items, (i) => k.encrypt(encryptFromProto(i))) })),
    batchDecrypt: rpc("BatchDecrypt", async (r, c) => ({ results: await batch(c, r.items, (i) => k.decrypt(decryptFromProto(i))) })),
    // Transitional (issue 11 in progress): the stream's handler lands with its own commit.
    cryptoStream: (call) => call.destroy(Object.assign(new Error("CryptoStream is not served yet"), { code: 12 })),
  };
}
