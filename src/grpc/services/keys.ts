import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { checkUsername } from "../../users";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.KeyService: key lifecycle and sharing over the {@link KeyService}. */
export function keyService(opts: GrpcServerOptions, p: Pipeline): KeyServiceServer {
  const { keys: k, users, guard } = opts;
  const { rpc, withQuorum, owner } = p;
  return {
    generateKey: rpc("GenerateKey", (r, c) => k.generateKey(r, owner(c))),
    getKey: rpc("GetKey", async (r, c) => {
      const key = k.getKey(r, c.principal!.userId);
      return opts.membership ? { ...key, heldBy: (await k.coverage(key.id)).sort() } : key;
    }),
    listKeys: rpc("ListKeys", (r, c) => k.listKeys(r, guard.visibleTo(c.principal!), c.principal!.userId)),
    deleteKey: rpc("DeleteKey", async (r, c) => {
      await withQuorum(c, "DeleteKey", { keyId: r.keyId }, r.quorumRequestId, () => k.deleteKey(r));
      return {};
    }),
    getPublicKey: rpc("GetPublicKey", (r) => k.getPublicKey(r)),
    importPublicKey: rpc("ImportPublicKey", (r, c) => k.importPublicKey(r, owner(c))),
    getImportParameters: rpc("GetImportParameters", () => k.getImportParameters()),
    importKey: rpc("ImportKey", (r, c) => k.importKey(r, owner(c))),
    shareKey: rpc("ShareKey", async (r, c) => {
      const target = await users.shareTarget(r.username);
      return withQuorum(c, "ShareKey", { keyId: r.keyId, username: r.username }, r.quorumRequestId, () => k.setShare(r.keyId, target, true, c.principal!.userId));
    }),
    unshareKey: rpc("UnshareKey", async (r, c) => {
      checkUsername(r.username);
      return k.setShare(r.keyId, { user: r.username, userId: "" }, false, c.principal!.userId);
    }),
  };
}
