/**
 * Cluster membership as records in the state store: the nodes, their reports and removal; the join
 * requests and the join ceremony are in ./join.ts (reached through {@link Membership} too).
 *
 * Join: the new node's HSM generates a transport key pair; the request records the public half and
 * its fingerprint. A crypto officer approves with that fingerprint and the serving member's SO PIN;
 * the member's SO marks the transport key trusted in the member's token (a child process, see
 * `createTrustedPublicKey`), and the member's HSM wraps the domain key (CKA_WRAP_WITH_TRUSTED) under
 * it with RSA-OAEP. The joiner unwraps it into its own HSM with the private half, which never left it.
 */
import { notFound } from "../errors";
import type { Device } from "../pkcs11";
import type { StateStore } from "../store";
import { JoinCeremony, checkNodeId, joinKey, type JoinRecord } from "./join";
import { WATERMARKS_PREFIX } from "./watermark";

export { JOINS_PREFIX, TRANSPORT_KEY_ID, fingerprintOf, joinKey, type JoinRecord, type JoinState } from "./join";

export const NODES_PREFIX = "nodes/";
export const NODE_STATUS_PREFIX = "nodestatus/";
/** The node records' store key. */
export const nodeKey = (id: string) => NODES_PREFIX + id;

/** A member, as stored under `nodes/<id>`. */
export interface NodeRecord {
  id: string;
  advertise: string;
  joinedAt: number;
}

/** What each node reports about itself under `nodestatus/<id>`. */
export interface NodeReport {
  appliedRevision: number;
  storeRevision: number;
  hsmHealthy: boolean;
  storeReachable: boolean;
  keys: number;
  at: number;
}

/** A member as the cluster status shows it. Times in ms since the epoch. */
export interface MemberView {
  id: string;
  advertise: string;
  joinedAt: number;
  appliedRevision: number;
  /** undefined until the node has reported */
  lag: number | undefined;
  hsmHealthy: boolean;
  storeReachable: boolean;
  keys: number;
  lastContact: number | undefined;
}

const encode = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8");

export interface MembershipOptions {
  store: StateStore;
  device: Device;
  nodeId: string;
  advertise: string;
  joinTtlMs: number;
  /** how the member reaches its token for the SO step */
  token: { module: string; tokenLabel?: string; slot?: number };
  now?: () => number;
}

/** Joins, approvals, removal and the member list of one cluster, seen from one node. */
export class Membership {
  private readonly now: () => number;
  private readonly joins: JoinCeremony;

  constructor(private readonly o: MembershipOptions) {
    this.now = o.now ?? Date.now;
    this.joins = new JoinCeremony(o, () => this.register());
  }

  get nodeId(): string {
    return this.o.nodeId;
  }

  /** Records this node as a member (after init or a completed join). Idempotent. */
  async register(): Promise<void> {
    const cur = await this.o.store.get(nodeKey(this.o.nodeId));
    if (cur) return;
    const rec: NodeRecord = { id: this.o.nodeId, advertise: this.o.advertise, joinedAt: this.now() };
    await this.o.store.txn([{ key: nodeKey(this.o.nodeId), op: "absent" }], [{ type: "put", key: nodeKey(this.o.nodeId), value: encode(rec) }]);
  }

  async isMember(id = this.o.nodeId): Promise<boolean> {
    return !!(await this.o.store.get(nodeKey(id)));
  }

  async nodes(): Promise<NodeRecord[]> {
    return (await this.o.store.list(NODES_PREFIX)).map((e) => JSON.parse(e.value.toString("utf8")) as NodeRecord);
  }

  async reports(): Promise<Map<string, NodeReport>> {
    const out = new Map<string, NodeReport>();
    for (const e of await this.o.store.list(NODE_STATUS_PREFIX)) out.set(e.key.slice(NODE_STATUS_PREFIX.length), JSON.parse(e.value.toString("utf8")) as NodeReport);
    return out;
  }

  /**
   * Every member with its last report and its lag behind `storeRevision` (the newest revision the
   * asking node knows): what GetClusterStatus and /v1/status show. The applied revision is the
   * node's watermark (`watermarks`, see ./watermark.ts) when it has one, else its last report's.
   * Nodes that never reported show zeros and no last contact.
   */
  async members(storeRevision: number, watermarks?: Map<string, number>): Promise<MemberView[]> {
    const [nodes, reports] = await Promise.all([this.nodes(), this.reports()]);
    return nodes.map((n) => {
      const r = reports.get(n.id);
      const applied = watermarks?.get(n.id) ?? r?.appliedRevision;
      return {
        id: n.id,
        advertise: n.advertise,
        joinedAt: n.joinedAt,
        appliedRevision: applied ?? 0,
        lag: applied === undefined ? undefined : Math.max(0, storeRevision - applied),
        hsmHealthy: r?.hsmHealthy ?? false,
        storeReachable: r?.storeReachable ?? false,
        keys: r?.keys ?? 0,
        lastContact: r?.at,
      };
    });
  }

  /** Writes this node's report (applied revision, HSM health): the cluster status and lag come from these. */
  async report(r: Omit<NodeReport, "at">): Promise<void> {
    await this.o.store.put(NODE_STATUS_PREFIX + this.o.nodeId, encode({ ...r, at: this.now() }));
  }

  /** The joining side, step 1 (see {@link JoinCeremony.requestJoin}). */
  requestJoin(): Promise<JoinRecord> {
    return this.joins.requestJoin();
  }

  /** The joining side, step 2 (see {@link JoinCeremony.awaitJoin}). */
  awaitJoin(signal?: AbortSignal): Promise<string> {
    return this.joins.awaitJoin(signal);
  }

  /** Every join request, expired ones shown as such. */
  listJoins(): Promise<JoinRecord[]> {
    return this.joins.listJoins();
  }

  /** ApproveJoin's refusals that need no quorum (see {@link JoinCeremony.checkApprovable}). */
  checkApprovable(nodeId: string): Promise<void> {
    return this.joins.checkApprovable(nodeId);
  }

  /** The member side of a join (see {@link JoinCeremony.approve}). */
  approve(officer: string, nodeId: string, fingerprint: string, soPin: string, domainKeyId: string): Promise<JoinRecord> {
    return this.joins.approve(officer, nodeId, fingerprint, soPin, domainKeyId);
  }

  /** Rejects a pending join request (see {@link JoinCeremony.reject}). */
  reject(officer: string, nodeId: string): Promise<JoinRecord> {
    return this.joins.reject(officer, nodeId);
  }

  /** Removes a member: its record goes, and the node, seeing that, stops serving. */
  async remove(nodeId: string): Promise<void> {
    this.checkNodeId(nodeId);
    const res = await this.o.store.txn(
      [{ key: nodeKey(nodeId), op: "present" }],
      [
        { type: "delete", key: nodeKey(nodeId) },
        { type: "delete", key: NODE_STATUS_PREFIX + nodeId },
        { type: "delete", key: WATERMARKS_PREFIX + nodeId },
        { type: "delete", key: joinKey(nodeId) },
      ],
    );
    if (!res.succeeded) throw notFound(`node ${nodeId} is not a member`);
  }

  /** Calls `onRemoved` once when this node's member record is deleted. Returns the unsubscribe. */
  watchRemoval(onRemoved: () => void): () => void {
    return this.o.store.watch(nodeKey(this.o.nodeId), this.o.store.revision(), (ev) => {
      if (ev.type === "delete" && ev.key === nodeKey(this.o.nodeId)) onRemoved();
    });
  }

  private checkNodeId(id: string): void {
    checkNodeId(id);
  }
}
