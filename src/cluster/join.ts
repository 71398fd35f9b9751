/**
 * The join ceremony, as records in the state store: the new node's request, the officer's approval
 * that hands the domain key over wrapped under the joiner's trusted transport key, and the joiner
 * unwrapping it (see ./membership.ts for the whole picture).
 */
import { createHash, randomUUID } from "node:crypto";
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { createTrustedPublicKey, type OaepHash } from "../pkcs11";
import { getJson, getJsonLatest } from "../store";
import type { MembershipOptions } from "./membership";

/** CKA_ID of a node's transport key pair. */
export const TRANSPORT_KEY_ID = "hsmd-transport";
/** Store prefix of join requests: `joins/<node>`. */
export const JOINS_PREFIX = "joins/";
/** The join request's store key. */
export const joinKey = (id: string) => JOINS_PREFIX + id;

export type JoinState = "pending" | "approved" | "rejected" | "expired" | "completed";

/** A join request as stored under `joins/<node>`. */
export interface JoinRecord {
  nodeId: string;
  /** transport public key, SPKI DER base64 */
  spki: string;
  /** sha256 of the SPKI DER, hex */
  fingerprint: string;
  advertise: string;
  requestedAt: number;
  expiresAt: number;
  status: JoinState;
  approvedBy?: string;
  approvedOn?: string;
  rejectedBy?: string;
  /** the domain key wrapped under the transport key (base64), once approved */
  wrappedDomainKey?: string;
  oaepHash?: OaepHash;
  domainKeyId?: string;
}

const NODE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;
const encode = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8");

/** sha256 hex of an SPKI: the fingerprint a person compares. */
export function fingerprintOf(spki: Buffer): string {
  return createHash("sha256").update(spki).digest("hex");
}

/** A fingerprint as a person may type it (upper case, colon-separated) in the stored form. */
export function normalizeFingerprint(fp: string): string {
  return fp.toLowerCase().replace(/:/g, "");
}

/** INVALID_ARGUMENT unless `id` is a node id (1 to 128 letters, digits, '.', '_' or '-'). */
export function checkNodeId(id: string): void {
  if (!NODE_ID.test(id)) throw invalid("node_id must be 1 to 128 letters, digits, '.', '_' or '-'");
}

/** The join requests of one cluster and both sides of the ceremony, seen from one node. */
export class JoinCeremony {
  private readonly now: () => number;

  constructor(
    private readonly o: MembershipOptions,
    /** Records this node as a member (the joiner's last step). */
    private readonly register: () => Promise<void>,
  ) {
    this.now = o.now ?? Date.now;
  }

  /**
   * The joining side, step 1: makes sure the HSM holds a transport key pair and records a pending
   * request for it (replacing an expired, rejected or completed one of this node). Returns the
   * request; its fingerprint is what the operator shows the approving officer.
   */
  async requestJoin(): Promise<JoinRecord> {
    const spki = await this.o.device.ensureTransportKey(TRANSPORT_KEY_ID);
    const fingerprint = fingerprintOf(spki);
    for (let i = 0; i < 10; i++) {
      const cur = await getJson<JoinRecord>(this.o.store, joinKey(this.o.nodeId));
      const v = cur && this.view(cur.value);
      if (v && (v.status === "pending" || v.status === "approved") && v.fingerprint === fingerprint) return v;
      const now = this.now();
      const rec: JoinRecord = {
        nodeId: this.o.nodeId,
        spki: spki.toString("base64"),
        fingerprint,
        advertise: this.o.advertise,
        requestedAt: now,
        expiresAt: now + this.o.joinTtlMs,
        status: "pending",
      };
      const res = await this.o.store.txn(
        [cur ? { key: cur.key, op: "modRevision", equals: cur.modRevision } : { key: joinKey(this.o.nodeId), op: "absent" }],
        [{ type: "put", key: joinKey(this.o.nodeId), value: encode(rec) }],
      );
      if (res.succeeded) return rec;
    }
    throw new HsmError(Code.Unavailable, "join request: too many concurrent updates, retry", { transient: true });
  }

  /**
   * The joining side, step 2: waits for the request to be approved, unwraps the domain key into this
   * HSM and registers the node. Rejects with FAILED_PRECONDITION when the request is rejected or
   * expires first.
   */
  async awaitJoin(signal?: AbortSignal): Promise<string> {
    const key = joinKey(this.o.nodeId);
    for (;;) {
      if (signal?.aborted) throw precondition("join cancelled");
      // Watch from the revision read before the record: no change after the read can be missed.
      const seen = this.o.store.revision();
      const cur = await getJson<JoinRecord>(this.o.store, key);
      if (!cur) throw precondition(`the join request of ${this.o.nodeId} disappeared`);
      const r = this.view(cur.value);
      if (r.status === "rejected") throw precondition(`the join of ${this.o.nodeId} was rejected by ${r.rejectedBy ?? "a crypto officer"}`);
      if (r.status === "expired") throw precondition(`the join request of ${this.o.nodeId} expired unapproved: run join again`);
      if (r.status === "approved" || r.status === "completed") {
        if (!r.wrappedDomainKey || !r.domainKeyId || !r.oaepHash) throw precondition("the approved join carries no domain key");
        if (!(await this.o.device.has(r.domainKeyId, "secret"))) {
          await this.o.device.unwrapDomainKey(TRANSPORT_KEY_ID, Buffer.from(r.wrappedDomainKey, "base64"), r.oaepHash, r.domainKeyId).catch((e) => {
            throw precondition(`the domain key sent for this node does not open with its transport key (${e instanceof Error ? e.message : String(e)}): the request was answered for another key`);
          });
        }
        await this.register();
        // The wrapped copy has done its job: drop it from the record.
        const done: JoinRecord = { ...r, status: "completed", wrappedDomainKey: undefined };
        await this.o.store.txn([{ key, op: "modRevision", equals: cur.modRevision }], [{ type: "put", key, value: encode(done) }]);
        return r.domainKeyId;
      }
      await new Promise<void>((resolve) => {
        const stop = this.o.store.watch(key, seen, () => {
          stop();
          clearTimeout(t);
          resolve();
        });
        const t = setTimeout(
          () => {
            stop();
            resolve();
          },
          Math.max(50, Math.min(2000, r.expiresAt - this.now() + 10)),
        );
      });
    }
  }

  /** Every join request, a pending one past its expiry shown as expired. */
  async listJoins(): Promise<JoinRecord[]> {
    return (await this.o.store.list(JOINS_PREFIX)).map((e) => this.view(JSON.parse(e.value.toString("utf8")) as JoinRecord));
  }

  /**
   * The member side: checks the request (pending, not expired, the fingerprint the officer was
   * shown), has the SO mark the transport key trusted, wraps the domain key under it inside the HSM
   * and records the approval. The SO PIN is used for this call only.
   */
  /**
   * ApproveJoin's refusals that need neither the quorum nor the SO step, checked before either is
   * asked for: NOT_FOUND without a request from `nodeId`, FAILED_PRECONDITION when it is not pending.
   */
  async checkApprovable(nodeId: string): Promise<void> {
    const pending = (await this.listJoins()).find((j) => j.nodeId === nodeId);
    if (!pending) throw notFound(`no join request from node ${nodeId}`);
    if (pending.status !== "pending") throw precondition(`the join request of ${nodeId} is ${pending.status}: it cannot be approved`);
  }

  async approve(officer: string, nodeId: string, fingerprint: string, soPin: string, domainKeyId: string): Promise<JoinRecord> {
    this.checkNodeId(nodeId);
    if (!FINGERPRINT.test(fingerprint)) throw invalid("transport_key_sha256 must be the 64 hex digits the joining node printed");
    if (!soPin) throw invalid("so_pin is required: the token's security officer marks the joiner's transport key trusted");
    // Read from etcd itself, not the mirror: the decision is about the request as it stands now.
    const cur = await getJsonLatest<JoinRecord>(this.o.store, joinKey(nodeId));
    if (!cur) throw notFound(`no join request from node ${nodeId}`);
    const r = this.view(cur.value);
    if (r.status !== "pending") throw precondition(`the join request of ${nodeId} is ${r.status}: it cannot be approved`);
    if (r.fingerprint !== fingerprint)
      throw new HsmError(Code.PermissionDenied, `the join request of ${nodeId} carries transport key ${r.fingerprint}, not ${fingerprint}: refusing (the request is not the one the node printed)`);
    const spki = Buffer.from(r.spki, "base64");
    if (fingerprintOf(spki) !== r.fingerprint) throw new HsmError(Code.PermissionDenied, `the join request of ${nodeId} is inconsistent: its key does not match its fingerprint`);
    if (!(await this.o.device.domainKeyShareable(domainKeyId))) {
      throw precondition("this node's domain key cannot be handed over: it was created non-extractable (before clustering); create the cluster from a node initialized with this version");
    }
    const hash = this.o.device.transportOaepHash();
    const trustedId = `hsmd-trust-${randomUUID()}`;
    await createTrustedPublicKey({ ...this.o.token, soPin, id: trustedId, spki });
    const blob = await this.o.device.wrapDomainKeyForJoiner(domainKeyId, trustedId, hash);
    const next: JoinRecord = { ...r, status: "approved", approvedBy: officer, approvedOn: this.o.nodeId, wrappedDomainKey: blob.toString("base64"), oaepHash: hash, domainKeyId };
    const res = await this.o.store.txn([{ key: cur.key, op: "modRevision", equals: cur.modRevision }], [{ type: "put", key: cur.key, value: encode(next) }]);
    if (!res.succeeded) throw new HsmError(Code.Unavailable, `the join request of ${nodeId} changed during approval; retry`, { transient: true });
    return next;
  }

  /** Rejects a pending join request (NOT_FOUND, FAILED_PRECONDITION when it is not pending). */
  async reject(officer: string, nodeId: string): Promise<JoinRecord> {
    this.checkNodeId(nodeId);
    const cur = await getJsonLatest<JoinRecord>(this.o.store, joinKey(nodeId));
    if (!cur) throw notFound(`no join request from node ${nodeId}`);
    const r = this.view(cur.value);
    if (r.status !== "pending") throw precondition(`the join request of ${nodeId} is ${r.status}: it cannot be rejected`);
    const next: JoinRecord = { ...r, status: "rejected", rejectedBy: officer };
    const res = await this.o.store.txn([{ key: cur.key, op: "modRevision", equals: cur.modRevision }], [{ type: "put", key: cur.key, value: encode(next) }]);
    if (!res.succeeded) throw new HsmError(Code.Unavailable, `the join request of ${nodeId} changed; retry`, { transient: true });
    return next;
  }

  private view(r: JoinRecord): JoinRecord {
    return r.status === "pending" && this.now() > r.expiresAt ? { ...r, status: "expired" } : r;
  }

  private checkNodeId(id: string): void {
    checkNodeId(id);
  }
}
