import { randomUUID } from "node:crypto";
import type { Config } from "../config";
import { precondition } from "../errors";
import type { Device } from "../pkcs11";
import type { StateStore } from "../store";
import type { Membership } from "../cluster";
import type { DaemonOptions } from "./options";

/** The store key of the node's cluster identity: which domain key wraps its records. */
const DOMAIN_META = "meta/domain";

interface DomainMeta {
  domainKeyId: string;
  createdAt: string;
  initializedBy: string;
}

/**
 * The domain key: created inside the HSM by `init` (AES-256, sensitive, extractable only under a
 * key the token's SO marked trusted), recorded by id in the store. A started node whose store names
 * a domain key the token lacks refuses to serve; in a cluster, `join` asks for it instead (see
 * Membership), and a node that is not a member refuses to serve.
 */
export async function ensureDomain(store: StateStore, device: Device, opts: DaemonOptions, config: Config, membership: Membership | undefined, log: (msg: string) => void): Promise<string> {
  const e = await store.get(DOMAIN_META);
  const cluster = config.cluster;
  if (e) {
    const meta = JSON.parse(e.value.toString("utf8")) as DomainMeta;
    if (!(await device.ensureDomainKey(meta.domainKeyId, false))) {
      if (!membership) throw precondition(`the token does not hold domain key ${meta.domainKeyId} that this node's records are wrapped under: wrong token, or the token was reinitialized`);
      if (!opts.join) throw precondition(`this node's HSM does not hold the domain key of cluster ${cluster!.name}: run \`hsmd join\` and have a crypto officer approve it`);
      const req = await membership.requestJoin();
      log(
        `join request recorded for node ${config.node.id}: transport key sha256 ${req.fingerprint}; waiting for a crypto officer to approve it (ApproveJoin) until ${new Date(req.expiresAt).toISOString()}`,
      );
      opts.onJoinRequest?.(req);
      await membership.awaitJoin();
      log(`joined cluster ${cluster!.name}: domain key ${meta.domainKeyId} unwrapped into this HSM`);
      return meta.domainKeyId;
    }
    if (membership && !(await membership.isMember())) {
      if (!opts.join) throw precondition(`node ${config.node.id} is not a member of cluster ${cluster!.name} (removed?): run \`hsmd join\` to ask again`);
      // A removed node asking again: its old copy of the domain key is not proof of anything.
      await device.destroy(meta.domainKeyId);
      return ensureDomain(store, device, opts, config, membership, log);
    }
    return meta.domainKeyId;
  }
  if (opts.join) throw precondition(`cluster ${cluster?.name ?? ""} has not been initialized: run \`hsmd init\` on its first node`);
  if (!opts.init) throw precondition("this node is not initialized: run `hsmd init` (creates the domain key inside the HSM)");
  const meta: DomainMeta = { domainKeyId: `hsmd-domain-${randomUUID()}`, createdAt: new Date().toISOString(), initializedBy: config.node.id };
  await device.ensureDomainKey(meta.domainKeyId, true);
  const res = await store.txn([{ key: DOMAIN_META, op: "absent" }], [{ type: "put", key: DOMAIN_META, value: Buffer.from(JSON.stringify(meta)) }]);
  if (!res.succeeded) {
    await device.destroy(meta.domainKeyId);
    return ensureDomain(store, device, { ...opts, init: false }, config, membership, log);
  }
  await membership?.register();
  return meta.domainKeyId;
}
