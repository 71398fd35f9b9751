import type { KeyServiceServer } from "../../gen/hsm/v1/keys";
import { Code, HsmError } from "../../errors";
import type { Key } from "../../keys";
import { checkUsername } from "../../users";
import { generateKeyFromProto, importKeyFromProto, importParametersToProto, importPublicKeyFromProto, keyPageToProto, keyToProto, listKeysFromProto, publicKeyToProto } from "../map/keys";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";
import { aliasHandlers } from "./aliases";
import { keyStateHandlers } from "./key-states";
import { keyVersionHandlers } from "./key-versions";

/** hsm.v1.KeyService: key lifecycle and sharing over the {@link KeyService}, proto ↔ domain through ../map/keys. */
export function keyService(opts: GrpcServerOptions, p: Pipeline): KeyServiceServer {
  const { keys: k, users } = opts;
  const { rpc, withQuorum, owner } = p;
  // Key.aliases: every alias of a key its viewer may see (aliases are visible to whoever may use their key).
  const withAliases = (key: Key): Key => ({ ...key, aliases: k.aliases.namesOf(key.id) });
  // An alias filter that resolves to nothing: a key id no key has ("" is not a key id), so the page is empty.
  const noKey = (e: unknown) => {
    if (e instanceof HsmError && e.code === Code.NotFound) return "";
    throw e;
  };
  return {
    generateKey: rpc("GenerateKey", async (r, c) => keyToProto(await k.generateKey(generateKeyFromProto(r), owner(c)))),
    getKey: rpc("GetKey", async (r, c) => {
      const key = withAliases(k.getKey(r, c.principal!.userId));
      const rec = opts.watermarks ? k.records.get(key.id) : undefined;
      return keyToProto(key, rec && opts.watermarks ? opts.watermarks.heldBy(rec, k.records.createRevision(rec.id)) : []);
    }),
    listKeys: rpc("ListKeys", async (r, c) => {
      const q = listKeysFromProto(r);
      // The alias filter: the key it points at for the caller; an alias the caller cannot see lists nothing.
      if (r.alias) q.keyId = await k.aliases.resolve(c.principal!.userId, r.alias, "alias").catch(noKey);
      const page = k.listKeys(q, c.principal!.userId);
      return keyPageToProto({ ...page, keys: page.keys.map(withAliases) });
    }),
    deleteKey: rpc("DeleteKey", async (r, c) => {
      await withQuorum(c, "DeleteKey", { keyId: r.keyId }, r.quorumRequestId, () => k.deleteKey(r));
      return {};
    }),
    getPublicKey: rpc("GetPublicKey", (r) => publicKeyToProto(k.getPublicKey(r))),
    importPublicKey: rpc("ImportPublicKey", async (r, c) => keyToProto(await k.importPublicKey(importPublicKeyFromProto(r), owner(c)))),
    getImportParameters: rpc("GetImportParameters", async () => importParametersToProto(await k.getImportParameters())),
    importKey: rpc("ImportKey", async (r, c) => keyToProto(await k.importKey(importKeyFromProto(r), owner(c)))),
    shareKey: rpc("ShareKey", async (r, c) => {
      const target = await users.shareTarget(r.username);
      return keyToProto(await withQuorum(c, "ShareKey", { keyId: r.keyId, username: r.username }, r.quorumRequestId, () => k.setShare(r.keyId, target, true, c.principal!.userId)));
    }),
    unshareKey: rpc("UnshareKey", async (r, c) => {
      checkUsername(r.username);
      return keyToProto(await k.setShare(r.keyId, { user: r.username, userId: "" }, false, c.principal!.userId));
    }),
    ...keyVersionHandlers(opts, p),
    ...keyStateHandlers(opts, p),
    ...aliasHandlers(opts, p),
  };
}
