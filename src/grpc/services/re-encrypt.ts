/** CryptoService.ReEncrypt and BatchReEncrypt (issue 13): proto ↔ domain over KeyService.reEncrypt. */
import { reEncryptKeys } from "../../access";
import { invalid } from "../../errors";
import type { CryptoServiceServer, ReEncryptRequest, ReEncryptResponse } from "../../gen/hsm/v1/crypto";
import type { ReEncryptInput } from "../../keys";
import { batchResultToProto } from "../map/crypto";
import type { GrpcServerOptions } from "../options";
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
 * destination). BatchReEncrypt: each item authorized the same way on its own (c.checkItem per key
 * the item names), so a denied or malformed item fails alone; at most limits.maxBatchItems items.
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
          for (const ref of reEncryptKeys(i as unknown as Record<string, unknown>)) {
            if (ref.invalid !== undefined) throw invalid(ref.invalid);
            await c.checkItem(ref.id);
          }
          return one(i);
        })
      ).map((res) => ({ result: batchResultToProto(res) })),
    })),
  };
}
