import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { precondition } from "../../errors";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** CONTRACT PLACEHOLDER (issue 13): the lane that owns this file replaces every handler. */
export function keyStateHandlers(
  _opts: GrpcServerOptions,
  p: Pipeline,
): Pick<KeyServiceServer, "enableKey" | "disableKey" | "scheduleKeyDeletion" | "cancelKeyDeletion" | "updateKeyDescription" | "tagKey" | "untagKey"> {
  const { rpc } = p;
  return {
    enableKey: rpc("EnableKey", async () => {
      throw precondition("EnableKey is not built yet");
    }),
    disableKey: rpc("DisableKey", async () => {
      throw precondition("DisableKey is not built yet");
    }),
    scheduleKeyDeletion: rpc("ScheduleKeyDeletion", async () => {
      throw precondition("ScheduleKeyDeletion is not built yet");
    }),
    cancelKeyDeletion: rpc("CancelKeyDeletion", async () => {
      throw precondition("CancelKeyDeletion is not built yet");
    }),
    updateKeyDescription: rpc("UpdateKeyDescription", async () => {
      throw precondition("UpdateKeyDescription is not built yet");
    }),
    tagKey: rpc("TagKey", async () => {
      throw precondition("TagKey is not built yet");
    }),
    untagKey: rpc("UntagKey", async () => {
      throw precondition("UntagKey is not built yet");
    }),
  };
}
