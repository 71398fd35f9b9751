import type { CryptoServiceServer, DecryptDataKeyRequest, DecryptRequest, EncryptRequest, GenerateDataKeyRequest, GenerateRandomRequest, SignRequest, VerifyRequest } from "../../gen/hsm/v1/crypto";
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
import { reEncryptHandlers } from "./re-encrypt";

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
  // The bodies the unary calls and the crypto stream share (the same mapping, the same KeyService call).
  const encrypt = (r: EncryptRequest) => k.encrypt(encryptFromProto(r));
  const decrypt = (r: DecryptRequest) => k.decrypt(decryptFromProto(r));
  const sign = (r: SignRequest) => k.sign(signFromProto(r));
  const verify = (r: VerifyRequest) => k.verify(verifyFromProto(r));
  const generateRandom = (r: GenerateRandomRequest) => k.generateRandom(r);
  const generateDataKey = async (r: GenerateDataKeyRequest) => dataKeyToProto(await k.generateDataKey(dataKeyFromProto(r), true));
  const generateDataKeyWithoutPlaintext = async (r: GenerateDataKeyRequest) => dataKeyToProto(await k.generateDataKey(dataKeyFromProto(r), false));
  const decryptDataKey = (r: DecryptDataKeyRequest) => k.decryptDataKey(decryptDataKeyFromProto(r));
  return {
    encrypt: rpc("Encrypt", encrypt),
    decrypt: rpc("Decrypt", decrypt),
    sign: rpc("Sign", sign),
    verify: rpc("Verify", verify),
    wrapKey: rpc("WrapKey", (r) => k.wrapKey(wrapKeyFromProto(r))),
    unwrapKey: rpc("UnwrapKey", async (r, c) => keyToProto(await k.unwrapKey(unwrapKeyFromProto(r), owner(c)))),
    deriveKey: rpc("DeriveKey", async (r, c) => keyToProto(await k.deriveKey(deriveKeyFromProto(r), owner(c)))),
    generateRandom: rpc("GenerateRandom", generateRandom),
    generateDataKey: rpc("GenerateDataKey", generateDataKey),
    generateDataKeyWithoutPlaintext: rpc("GenerateDataKeyWithoutPlaintext", generateDataKeyWithoutPlaintext),
    decryptDataKey: rpc("DecryptDataKey", decryptDataKey),
    batchSign: rpc("BatchSign", async (r, c) => ({ results: await batch(c, r.items, (i) => k.sign(signFromProto(i))) })),
    batchVerify: rpc("BatchVerify", async (r, c) => ({ results: await batch(c, r.items, (i) => k.verify(verifyFromProto(i))) })),
    batchEncrypt: rpc("BatchEncrypt", async (r, c) => ({ results: await batch(c, r.items, (i) => k.encrypt(encryptFromProto(i))) })),
    batchDecrypt: rpc("BatchDecrypt", async (r, c) => ({ results: await batch(c, r.items, (i) => k.decrypt(decryptFromProto(i))) })),
    // Each stream message is authorized by its unary method's rule and runs that method's body.
    cryptoStream: p.stream({
      sign: { method: "Sign", run: sign },
      verify: { method: "Verify", run: verify },
      encrypt: { method: "Encrypt", run: encrypt },
      decrypt: { method: "Decrypt", run: decrypt },
      generateRandom: { method: "GenerateRandom", run: generateRandom },
      generateDataKey: { method: "GenerateDataKey", run: generateDataKey },
      generateDataKeyWithoutPlaintext: { method: "GenerateDataKeyWithoutPlaintext", run: generateDataKeyWithoutPlaintext },
      decryptDataKey: { method: "DecryptDataKey", run: decryptDataKey },
    }),
    ...reEncryptHandlers(opts, p),
  };
}
