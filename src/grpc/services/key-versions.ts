import type { KeyServiceServer, ListKeyVersionsResponse } from "../../gen/hsm/v1/keys";
import type { KeyVersionList } from "../../keys";
import { keyToProto } from "../map/keys";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** ListKeyVersions' domain answer as the response (the same fields). */
const versionsToProto = (l: KeyVersionList): ListKeyVersionsResponse => ({
  keyId: l.keyId,
  versions: l.versions.map((v) => ({ ...v })),
  primaryVersion: l.primaryVersion,
  minDecryptionVersion: l.minDecryptionVersion,
});

/**
 * Key versions (issue 13): RotateKey, ListKeyVersions, UpdateRotationPolicy, SetMinDecryptionVersion,
 * TrimKeyVersions (quorum-able as DeleteKey: auth.quorum.operations may name it). Who may call each
 * is src/access/policy.ts's (the owner, except ListKeyVersions: whoever may use the key).
 */
export function keyVersionHandlers(
  opts: GrpcServerOptions,
  p: Pipeline,
): Pick<KeyServiceServer, "rotateKey" | "listKeyVersions" | "updateRotationPolicy" | "setMinDecryptionVersion" | "trimKeyVersions"> {
  const { keys: k } = opts;
  const { rpc, withQuorum } = p;
  return {
    rotateKey: rpc("RotateKey", async (r, c) => keyToProto(await k.rotateKey(r, c.principal!.userId))),
    listKeyVersions: rpc("ListKeyVersions", (r) => versionsToProto(k.listKeyVersions(r))),
    updateRotationPolicy: rpc("UpdateRotationPolicy", async (r, c) => keyToProto(await k.updateRotationPolicy(r, c.principal!.userId))),
    setMinDecryptionVersion: rpc("SetMinDecryptionVersion", async (r, c) => keyToProto(await k.setMinDecryptionVersion(r, c.principal!.userId))),
    trimKeyVersions: rpc("TrimKeyVersions", async (r, c) => keyToProto(await withQuorum(c, "TrimKeyVersions", { keyId: r.keyId }, r.quorumRequestId, () => k.trimKeyVersions(r, c.principal!.userId)))),
  };
}
