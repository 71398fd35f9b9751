import type { Alias, KeyServiceServer } from "../../gen/hsm/v1/keys";
import type { AliasRecord } from "../../keys";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** An alias row as the API's Alias (the owner by name). */
export const aliasToProto = (a: AliasRecord): Alias => ({ name: a.name, targetKeyId: a.targetKeyId, owner: a.owner.user, createdAt: a.createdAt, updatedAt: a.updatedAt });

/**
 * hsm.v1.KeyService's aliases (issue 13) over KeyService.aliases. The access layer has already
 * checked (and resolved, when it was an alias) `target_key_id`: the caller owns it. The alias's own
 * owner is checked here (KeyAliases: PERMISSION_DENIED for another owner's, NOT_FOUND for one the
 * caller may not see).
 */
export function aliasHandlers(opts: GrpcServerOptions, p: Pipeline): Pick<KeyServiceServer, "createAlias" | "updateAlias" | "deleteAlias" | "listAliases"> {
  const { keys: k, guard } = opts;
  const { rpc, owner } = p;
  return {
    createAlias: rpc("CreateAlias", async (r, c) => aliasToProto(await k.aliases.create(owner(c), r.aliasName, k.record(r.targetKeyId, "target_key_id")))),
    updateAlias: rpc("UpdateAlias", async (r, c) => aliasToProto(await k.aliases.update(owner(c), r.aliasName, k.record(r.targetKeyId, "target_key_id")))),
    deleteAlias: rpc("DeleteAlias", async (r, c) => {
      await k.aliases.delete(owner(c), r.aliasName);
      return {};
    }),
    listAliases: rpc("ListAliases", async (r, c) => {
      // The key filter takes an id or an alias, and only a key the caller may use (NOT_FOUND otherwise, as GetKey).
      const keyId = r.keyId ? (await guard.key(c.principal!, r.keyId, "use", "key_id")).id : undefined;
      const page = k.aliases.list(c.principal!.userId, { keyId, pageSize: r.pageSize, pageToken: r.pageToken });
      return { aliases: page.aliases.map(aliasToProto), nextPageToken: page.nextPageToken };
    }),
  };
}
