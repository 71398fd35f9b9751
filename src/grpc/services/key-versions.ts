import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { precondition } from "../../errors";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** CONTRACT PLACEHOLDER (issue 13): the lane that owns this file replaces every handler. */
export function keyVersionHandlers(
  _opts: GrpcServerOptions,
  p: Pipeline,
): Pick<KeyServiceServer, "rotateKey" | "listKeyVersions" | "updateRotationPolicy" | "setMinDecryptionVersion" | "trimKeyVersions"> {
  const { rpc } = p;
  return {
    rotateKey: rpc("RotateKey", async () => {
      throw precondition("RotateKey is not built yet");
    }),
    listKeyVersions: rpc("ListKeyVersions", async () => {
      throw precondition("ListKeyVersions is not built yet");
    }),
    updateRotationPolicy: rpc("UpdateRotationPolicy", async () => {
      throw precondition("UpdateRotationPolicy is not built yet");
    }),
    setMinDecryptionVersion: rpc("SetMinDecryptionVersion", async () => {
      throw precondition("SetMinDecryptionVersion is not built yet");
    }),
    trimKeyVersions: rpc("TrimKeyVersions", async () => {
      throw precondition("TrimKeyVersions is not built yet");
    }),
  };
}
