import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { precondition } from "../../errors";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** CONTRACT PLACEHOLDER (issue 13): the lane that owns this file replaces every handler. */
export function aliasHandlers(_opts: GrpcServerOptions, p: Pipeline): Pick<KeyServiceServer, "createAlias" | "updateAlias" | "deleteAlias" | "listAliases"> {
  const { rpc } = p;
  return {
    createAlias: rpc("CreateAlias", async () => {
      throw precondition("CreateAlias is not built yet");
    }),
    updateAlias: rpc("UpdateAlias", async () => {
      throw precondition("UpdateAlias is not built yet");
    }),
    deleteAlias: rpc("DeleteAlias", async () => {
      throw precondition("DeleteAlias is not built yet");
    }),
    listAliases: rpc("ListAliases", async () => {
      throw precondition("ListAliases is not built yet");
    }),
  };
}
