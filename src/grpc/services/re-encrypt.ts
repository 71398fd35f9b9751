/** CryptoService.ReEncrypt and BatchReEncrypt (issue 13): proto ↔ domain over KeyService.reEncrypt. */
import { reEncryptKeys } from "../../access";
import type { CryptoServiceServer, ReEncryptRequest, ReEncryptResponse } from "../../gen/hsm/v1/crypto";
import type { ReEncryptInput } from "../../keys";
import { batchResultToProto } from "../map/crypto";
import type { GrpcServerOptions } from "../options";
import { authorizeRequest } from "../pipeline/authorize";
import type { Pipeline } from "../pipeline/pipeline";

/** ReEncryptRequest → domain (the same fields). */
export const reEncryptFromProto = (r: ReEncryptRequest): ReEncryptInput => ({
  ciphertextBlob: r.ciphertextBlob,
  destinationKeyId: r.destinationKeyId,
  sourceAad: r.sourceAad,
  destinationAad: r.destinationAad,
  encryptionContext: r.encryptionContext,
  sourceKeyId: r.sourceKeyId,
});

/**
 * ReEncrypt: authorized by its rule (use of the source key its header names and of the
 * destination). BatchReEncrypt: each item authorized on its own by ReEncrypt's rule (as a crypto
 * stream message is), so a denied or malformed item fails alone; at most limits.maxBatchItems items.
 */
export function reEncryptHandlers(opts: GrpcServerOptions, p: Pipeline): Pick<CryptoServiceServer, "reEncrypt" | "batchReEncrypt"> {
  const { keys: k } = opts;
  const { rpc } = p;
  const one = (r: ReEncryptRequest): Promise<ReEncryptResponse> => k.reEncrypt(reEncryptFromProto(r));
  return {
    reEncrypt: rpc("ReEncrypt", one),
    batchReEncrypt: rpc("BatchReEncrypt", async (r, c) => ({
      results: (
        await k.runBatch(r.items, async (i) => {
          // Each item is authorized as a ReEncrypt of its own (the rule's key refs: source and destination).
          await authorizeRequest(opts.guard, "ReEncrypt", c.principal, reEncryptKeys(i as unknown as Record<string, unknown>), i as unknown as Record<string, unknown>);
          return one(i);
        })
      ).map((res) => ({ result: batchResultToProto(res) })),
    })),
  };
}
