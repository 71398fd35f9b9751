/**
 * M-of-N crypto-officer approval (quorum) for chosen operations: a request is recorded as pending, runs
 * only once M distinct COs approved it before it expired, and is consumed exactly once, for exactly the
 * operation and parameters that were approved.
 */
import { randomUUID } from "node:crypto";
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { getJson, type JsonEntry, type StateStore } from "../store";
import { retryTxn, type Attempt } from "./txn";
import type { Actor } from "./types";

/** Store prefix of quorum requests: `quorum/<id>`. */
export const QUORUM_PREFIX = "quorum/";
/** Default time for a request to gather its approvals, and for an approved request to be executed: 10 minutes. */
export const DEFAULT_QUORUM_TTL_MS = 600_000;

const ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const OPERATION_PATTERN = /^[A-Za-z][A-Za-z0-9._/-]{0,127}$/;
const MAX_PARAMS = 32;
const MAX_PARAM_CHARS = 1024;

/**
 * Where a request stands. pending → approved (M distinct COs) → executed (consumed once); pending or
 * approved → rejected (any CO) or expired (time limit passed).
 */
export type QuorumStatus = "pending" | "approved" | "rejected" | "expired" | "executed";

/** A quorum request, as stored under `quorum/<id>` (JSON) and as answered. */
export interface QuorumRequest {
  id: string;
  /** the operation, e.g. the RPC name `DeleteUser` */
  operation: string;
  /** what exactly the operation will act on, e.g. `{ name: "alice" }` */
  params: Record<string, string>;
  requestedBy: string;
  /** ms since the epoch */
  requestedAt: number;
  /** M: approvals needed, fixed when the request is made */
  required: number;
  status: QuorumStatus;
  /** distinct COs that approved, in order; ms since the epoch */
  approvals: Array<{ co: string; at: number }>;
  /**
   * ms since the epoch. While pending: the deadline for the approvals. Once approved: the deadline to
   * execute (approval time + ttl). Past it the request is expired.
   */
  expiresAt: number;
  approvedAt?: number;
  rejectedBy?: string;
  rejectedAt?: number;
  executedAt?: number;
}

/** The answer of {@link QuorumService.approve}: the request, whether this approval was a duplicate, and a sentence saying what happened. */
export type QuorumApproval = QuorumRequest & { duplicate: boolean; message: string };

/** Options of {@link QuorumService}. */
export interface QuorumServiceOptions {
  store: StateStore;
  /** clock in ms since the epoch (tests inject one) */
  now?: () => number;
  /** default {@link DEFAULT_QUORUM_TTL_MS} */
  ttlMs?: number;
  /** operation → M approvals; an operation absent or with M ≤ 1 needs no quorum */
  policy: Record<string, number>;
}

const key = (id: string) => QUORUM_PREFIX + id;
const encode = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8");
const nameOf = (a: Actor) => (typeof a === "string" ? a : a?.user);

function sameParams(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}

function describe(operation: string, params: Record<string, string>): string {
  return `${operation}(${Object.keys(params)
    .sort()
    .map((k) => `${k}=${JSON.stringify(params[k])}`)
    .join(", ")})`;
}

function checkParams(params: unknown): Record<string, string> {
  if (typeof params !== "object" || params === null || Array.isArray(params)) throw invalid("quorum params must be an object of strings");
  const entries = Object.entries(params as Record<string, unknown>);
  if (entries.length > MAX_PARAMS) throw invalid(`quorum params: at most ${MAX_PARAMS} entries`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (typeof v !== "string" || v.length > MAX_PARAM_CHARS || k.length > 64) {
      throw invalid(`quorum param ${k} must be a string of at most ${MAX_PARAM_CHARS} characters`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * M-of-N approvals by distinct crypto officers, as records in the state store. Which callers may
 * request, approve or reject (COs) is the auth layer's decision; this service keeps the counting, the
 * time limit and the exactly-once execution right under concurrent callers on any node.
 */
export class QuorumService {
  private readonly store: StateStore;
  private readonly now: () => number;
  private readonly ttlMs: number;
  private readonly policy: Record<string, number>;

  constructor(opts: QuorumServiceOptions) {
    this.store = opts.store;
    this.now = opts.now ?? Date.now;
    this.ttlMs = opts.ttlMs ?? DEFAULT_QUORUM_TTL_MS;
    if (!Number.isSafeInteger(this.ttlMs) || this.ttlMs <= 0) throw invalid(`quorum ttlMs must be a positive integer, got ${String(opts.ttlMs)}`);
    this.policy = {};
    for (const [op, m] of Object.entries(opts.policy ?? {})) {
      if (!Number.isSafeInteger(m) || m < 0) throw invalid(`quorum policy for ${op} must be a non-negative integer, got ${String(m)}`);
      this.policy[op] = m;
    }
  }

  /** M for an operation: the approvals it needs. 1 means no quorum (the operation runs on its own authority). */
  required(operation: string): number {
    const m = Object.hasOwn(this.policy, operation) ? this.policy[operation]! : 0;
    return Math.max(m, 1);
  }

  /**
   * Records a pending request for `operation` on `params`, valid for ttlMs. FAILED_PRECONDITION if the
   * operation needs no quorum. The requester's own approval is not implied: it approves like any CO.
   */
  async request(actor: Actor, operation: string, params: Record<string, string>): Promise<QuorumRequest> {
    if (typeof operation !== "string" || !OPERATION_PATTERN.test(operation)) throw invalid(`invalid quorum operation name ${JSON.stringify(operation)}`);
    const p = checkParams(params);
    const required = this.required(operation);
    if (required <= 1) throw precondition(`operation ${operation} does not require quorum`);
    const now = this.now();
    const rec: QuorumRequest = {
      id: randomUUID(),
      operation,
      params: p,
      requestedBy: nameOf(actor),
      requestedAt: now,
      required,
      status: "pending",
      approvals: [],
      expiresAt: now + this.ttlMs,
    };
    const res = await this.store.txn([{ key: key(rec.id), op: "absent" }], [{ type: "put", key: key(rec.id), value: encode(rec) }]);
    if (!res.succeeded) throw new HsmError(Code.Internal, "quorum request id collision");
    return rec;
  }

  /**
   * Records `coName`'s approval. Each CO counts once: approving again is a no-op that says so
   * (`duplicate: true`). When the approvals reach M the request becomes "approved" and must be
   * executed within ttlMs. FAILED_PRECONDITION for an expired ("quorum request X expired at …"),
   * rejected or executed request; NOT_FOUND for an unknown id.
   */
  async approve(coName: Actor, id: string): Promise<QuorumApproval> {
    const co = nameOf(coName);
    if (typeof co !== "string" || co.length === 0) throw invalid("approver name is required");
    const out = await retryTxn<QuorumApproval | HsmError>(this.store, `approve quorum request ${id}`, async () => {
      const cur = await this.read(id);
      const gone = this.refuseFinished(cur, "approved");
      if (gone) return gone;
      const r = cur.value;
      const count = () => `${r.approvals.length} of ${r.required} approvals`;
      if (r.approvals.some((a) => a.co === co)) {
        return { result: { ...r, duplicate: true, message: `${co} already approved quorum request ${id}: it counts once (${count()})` } };
      }
      const now = this.now();
      const next: QuorumRequest = { ...r, approvals: [...r.approvals, { co, at: now }] };
      if (next.status === "pending" && next.approvals.length >= next.required) {
        next.status = "approved";
        next.approvedAt = now;
        next.expiresAt = now + this.ttlMs;
      }
      const message =
        next.status === "approved"
          ? `quorum request ${id} is approved (${next.approvals.length} of ${next.required} approvals)`
          : `approval recorded (${next.approvals.length} of ${next.required} approvals)`;
      return {
        compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }],
        ops: [{ type: "put", key: cur.key, value: encode(next) }],
        result: { ...next, duplicate: false, message },
      };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /**
   * Rejects a pending or approved (not yet executed) request for good. Rejecting a rejected request is a
   * no-op; FAILED_PRECONDITION for an expired or executed one.
   */
  async reject(coName: Actor, id: string): Promise<QuorumRequest> {
    const co = nameOf(coName);
    if (typeof co !== "string" || co.length === 0) throw invalid("rejecting CO name is required");
    const out = await retryTxn<QuorumRequest | HsmError>(this.store, `reject quorum request ${id}`, async () => {
      const cur = await this.read(id);
      if (cur.value.status === "rejected") return { result: cur.value };
      const gone = this.refuseFinished(cur, "rejected");
      if (gone) return gone;
      const now = this.now();
      const next: QuorumRequest = { ...cur.value, status: "rejected", rejectedBy: co, rejectedAt: now };
      return { compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }], ops: [{ type: "put", key: cur.key, value: encode(next) }], result: next };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /** One request, with its status as of now (a request past its deadline shows as "expired"). NOT_FOUND if unknown. */
  async get(id: string): Promise<QuorumRequest> {
    return this.view((await this.read(id)).value);
  }

  /** Every request (oldest id order is not meaningful: sorted by id), optionally only those with one status. */
  async list(filter: { status?: QuorumStatus } = {}): Promise<QuorumRequest[]> {
    const out: QuorumRequest[] = [];
    for (const e of await this.store.list(QUORUM_PREFIX)) {
      const r = this.view(JSON.parse(e.value.toString("utf8")) as QuorumRequest);
      if (!filter.status || r.status === filter.status) out.push(r);
    }
    return out;
  }

  /**
   * Marks an approved request "executed", exactly once (a concurrent second consume fails), after
   * checking that `operation` and `params` are exactly what was approved (PERMISSION_DENIED
   * otherwise: an approval to delete user A never deletes user B). FAILED_PRECONDITION unless approved
   * and not expired. Call it just before performing the operation.
   */
  async consume(id: string, operation: string, params: Record<string, string>): Promise<QuorumRequest> {
    const p = checkParams(params);
    const out = await retryTxn<QuorumRequest | HsmError>(this.store, `consume quorum request ${id}`, async () => {
      const cur = await this.read(id);
      const gone = this.refuseFinished(cur, "executed");
      if (gone) return gone;
      const r = cur.value;
      if (r.status !== "approved") {
        return { result: precondition(`quorum request ${id} is ${r.status} with ${r.approvals.length} of ${r.required} approvals: it cannot run yet`) };
      }
      if (r.operation !== operation || !sameParams(r.params, p)) {
        return {
          result: new HsmError(Code.PermissionDenied, `quorum request ${id} approved ${describe(r.operation, r.params)}, not ${describe(operation, p)}`),
        };
      }
      const next: QuorumRequest = { ...r, status: "executed", executedAt: this.now() };
      return { compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }], ops: [{ type: "put", key: cur.key, value: encode(next) }], result: next };
    });
    if (out instanceof HsmError) throw out;
    return out;
  }

  /** Persists the "expired" status of every request past its deadline; returns the requests it changed. */
  async expireStale(): Promise<QuorumRequest[]> {
    const n: QuorumRequest[] = [];
    for (const e of await this.store.list(QUORUM_PREFIX)) {
      const r = JSON.parse(e.value.toString("utf8")) as QuorumRequest;
      if (this.view(r).status !== "expired" || r.status === "expired") continue;
      const res = await this.store.txn([{ key: e.key, op: "modRevision", equals: e.modRevision }], [{ type: "put", key: e.key, value: encode({ ...r, status: "expired" }) }]);
      if (res.succeeded) n.push({ ...r, status: "expired" });
    }
    return n;
  }

  // ---- internals -------------------------------------------------------------------------------

  private view(r: QuorumRequest): QuorumRequest {
    return (r.status === "pending" || r.status === "approved") && this.now() > r.expiresAt ? { ...r, status: "expired" } : r;
  }

  private async read(id: string): Promise<JsonEntry<QuorumRequest>> {
    if (typeof id !== "string" || !ID_PATTERN.test(id)) throw notFound(`quorum request ${String(id)} not found`);
    const cur = await getJson<QuorumRequest>(this.store, key(id));
    if (!cur) throw notFound(`quorum request ${id} not found`);
    return cur;
  }

  /**
   * The refusal for a request that can no longer be `verb`: expired (persisting the status if it was
   * only due), rejected or executed. Undefined when the request is still pending or approved.
   */
  private refuseFinished(cur: JsonEntry<QuorumRequest>, verb: string): Attempt<HsmError> | undefined {
    const r = cur.value;
    const v = this.view(r);
    const id = r.id;
    if (v.status === "expired") {
      const err = precondition(`quorum request ${id} expired at ${new Date(r.expiresAt).toISOString()}: it cannot be ${verb}; make a new request`);
      if (r.status === "expired") return { result: err };
      return {
        compares: [{ key: cur.key, op: "modRevision", equals: cur.modRevision }],
        ops: [{ type: "put", key: cur.key, value: encode({ ...r, status: "expired" }) }],
        result: err,
      };
    }
    if (r.status === "rejected") return { result: precondition(`quorum request ${id} was rejected by ${r.rejectedBy ?? "a crypto officer"}: it cannot be ${verb}`) };
    if (r.status === "executed") return { result: precondition(`quorum request ${id} was already executed: it cannot be ${verb} again`) };
    return undefined;
  }
}
