import type { CryptoServiceServer } from "../../gen/hsm/v1/crypto";
import { precondition } from "../../errors";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** CONTRACT PLACEHOLDER (issue 13): the lane that owns this file replaces every handler. */
export function reEncryptHandlers(_opts: GrpcServerOptions, p: Pipeline): Pick<CryptoServiceServer, "reEncrypt" | "batchReEncrypt"> {
  const { rpc } = p;
  return {
    reEncrypt: rpc("ReEncrypt", async () => {
      throw precondition("ReEncrypt is not built yet");
    }),
    batchReEncrypt: rpc("BatchReEncrypt", async () => {
      throw precondition("BatchReEncrypt is not built yet");
    }),
  };
}
