import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { keyToProto } from "../map/keys";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/**
 * Key states and metadata (issue 13, lane S): EnableKey, DisableKey, ScheduleKeyDeletion,
 * CancelKeyDeletion, UpdateKeyDescription, TagKey, UntagKey. The access layer has checked that the
 * caller owns the key (src/access/policy.ts); the rules of each change live in src/keys/key-lifecycle.ts.
 */
export function keyStateHandlers(
  opts: GrpcServerOptions,
  p: Pipeline,
): Pick<KeyServiceServer, "enableKey" | "disableKey" | "scheduleKeyDeletion" | "cancelKeyDeletion" | "updateKeyDescription" | "tagKey" | "untagKey"> {
  const { rpc } = p;
  const k = opts.keys;
  return {
    enableKey: rpc("EnableKey", async (r, c) => keyToProto(await k.enableKey(r.keyId, c.principal!.userId))),
    disableKey: rpc("DisableKey", async (r, c) => keyToProto(await k.disableKey(r.keyId, c.principal!.userId))),
    scheduleKeyDeletion: rpc("ScheduleKeyDeletion", async (r, c) => keyToProto(await k.scheduleKeyDeletion(r.keyId, r.pendingWindowDays, c.principal!.userId))),
    cancelKeyDeletion: rpc("CancelKeyDeletion", async (r, c) => keyToProto(await k.cancelKeyDeletion(r.keyId, c.principal!.userId))),
    updateKeyDescription: rpc("UpdateKeyDescription", async (r, c) => keyToProto(await k.updateKeyDescription(r.keyId, r.description, c.principal!.userId))),
    tagKey: rpc("TagKey", async (r, c) => keyToProto(await k.tagKey(r.keyId, { ...r.tags }, c.principal!.userId))),
    untagKey: rpc("UntagKey", async (r, c) => keyToProto(await k.untagKey(r.keyId, [...r.tagKeys], c.principal!.userId))),
  };
}
