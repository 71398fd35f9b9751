import type { CryptoServiceServer } from "../../gen/hsm/v1/crypto";
import type { CallContext } from "../pipeline/context";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.CryptoService: crypto operations (and batches, each item authorized) over the {@link KeyService}. */
export function cryptoService(opts: GrpcServerOptions, p: Pipeline): CryptoServiceServer {
  const { keys: k } = opts;
  const { rpc, owner } = p;
  const batch = <I extends { keyId: string }, O>(c: CallContext, items: I[], fn: (i: I) => Promise<O>) =>
    k.runBatch(items, async (i) => {
      await c.checkItem(i.keyId);
      return fn(i);
    });
  return {
    encrypt: rpc("Encrypt", (r) => k.encrypt(r)),
    decrypt: rpc("Decrypt", (r) => k.decrypt(r)),
    sign: rpc("Sign", (r) => k.sign(r)),
    verify: rpc("Verify", (r) => k.verify(r)),
    wrapKey: rpc("WrapKey", (r) => k.wrapKey(r)),
    unwrapKey: rpc("UnwrapKey", (r, c) => k.unwrapKey(r, owner(c))),
    deriveKey: rpc("DeriveKey", (r, c) => k.deriveKey(r, owner(c))),
    generateRandom: rpc("GenerateRandom", (r) => k.generateRandom(r)),
    generateDataKey: rpc("GenerateDataKey", (r) => k.generateDataKey(r, true)),
    generateDataKeyWithoutPlaintext: rpc("GenerateDataKeyWithoutPlaintext", (r) => k.generateDataKey(r, false)),
    decryptDataKey: rpc("DecryptDataKey", (r) => k.decryptDataKey(r)),
    batchSign: rpc("BatchSign", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.sign(i))).map((result) => ({ result })) })),
    batchVerify: rpc("BatchVerify", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.verify(i))).map((result) => ({ result })) })),
    batchEncrypt: rpc("BatchEncrypt", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.encrypt(i))).map((result) => ({ result })) })),
    batchDecrypt: rpc("BatchDecrypt", async (r, c) => ({ results: (await batch(c, r.items, (i) => k.decrypt(i))).map((result) => ({ result })) })),
  };
}
