/**
 * One etcd member as the etcd store talks to it: an etcd3 client over that single host whose grpc
 * services are called directly (host choice and retries are the store's, not etcd3's), with etcd's
 * require-leader metadata on every call, and the failure of a call kept with its grpc status so that
 * the store can tell "certainly not sent" from "outcome unknown".
 */
import type { CallOptions, ChannelOptions, ClientDuplexStream, Metadata, ServiceError } from "@grpc/grpc-js";
import { Etcd3, type IOptions, type IWatchRequest, type IWatchResponse } from "etcd3";
import { invalid } from "../errors";
import type { EtcdStoreOptions } from "./etcd-options";

const GRPC_OPTIONS: ChannelOptions = {
  "grpc.max_receive_message_length": -1,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000,
};

type FaultHandling = NonNullable<IOptions["faultHandling"]>;
type Policy = NonNullable<FaultHandling["global"]>;

/** A cockatiel-compatible policy that just runs the call: host choice and retries are done here. */
const PASS_THROUGH = {
  execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> => fn({ signal: signal ?? new AbortController().signal }),
} as unknown as Policy;

type UnaryMethod = (req: unknown, md: Metadata, opts: CallOptions, cb: (err: ServiceError | null, res?: unknown) => void) => unknown;
type WatchMethod = (md: Metadata, opts: CallOptions) => ClientDuplexStream<IWatchRequest, IWatchResponse>;

/** Marks calls so that a member without a leader refuses them at once (etcd's WithRequireLeader). */
function requireLeader(md: Metadata): Metadata {
  const out = md.clone();
  out.set("hasleader", "true");
  return out;
}

/** One etcd member: an etcd3 client over that single host, whose grpc services we call directly. */
export class Member extends Etcd3 {
  suspectUntil = 0;

  constructor(
    readonly endpoint: string,
    options: IOptions,
  ) {
    super(options);
  }

  unary<T>(service: "KV" | "Maintenance", method: string, req: unknown, deadline: number): Promise<T> {
    return this.pool.withConnection(
      service,
      ({ client, metadata }) =>
        new Promise<T>((resolve, reject) => {
          const fn = (client as unknown as Record<string, UnaryMethod>)[method]!;
          fn.call(client, req, requireLeader(metadata), { deadline }, (err, res) => {
            if (err) reject(new RpcFailure(this.endpoint, err));
            else resolve(res as T);
          });
        }),
    );
  }

  watchStream(): Promise<ClientDuplexStream<IWatchRequest, IWatchResponse>> {
    return this.pool.withConnection("Watch", ({ client, metadata }) => (client as unknown as { watch: WatchMethod }).watch(requireLeader(metadata), {}));
  }
}

/** A failed call to one member, with the grpc status kept (etcd3's own error casting drops it). */
export class RpcFailure extends Error {
  readonly code: number;
  readonly details: string;

  constructor(
    readonly endpoint: string,
    err: Partial<ServiceError> & Error,
  ) {
    super(err.details || err.message);
    this.code = typeof err.code === "number" ? err.code : -1;
    this.details = err.details || err.message;
  }

  /** The member certainly did not execute the request, so another member may be asked. */
  get notSent(): boolean {
    // A deadline that passed while grpc-js was still waiting for a connection: nothing was sent.
    if (this.code === 4 && /Waiting for LB pick/i.test(this.details)) return true;
    if (this.code !== 14) return false;
    if (this.details.startsWith("etcdserver: no leader")) return true; // refused by the require-leader check
    if (this.details.startsWith("etcdserver:")) return false; // e.g. "request timed out": may still commit
    return /no connection established|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|name resolution|failed to connect/i.test(this.details);
  }

  /** A read at a revision that etcd has compacted away. */
  get compacted(): boolean {
    return this.code === 11 || /required revision has been compacted/.test(this.details);
  }

  /** A read at a revision etcd has not reached yet (same grpc status as a compacted one). */
  get futureRevision(): boolean {
    return /required revision is a future revision/.test(this.details);
  }

  /** The call ran into its deadline, or etcd's own proposal timeout. */
  get timedOut(): boolean {
    return this.code === 4 || /request timed out|leader changed/.test(this.details);
  }

  describe(): string {
    return `${this.endpoint}: ${this.details}`;
  }
}

/** Any error from a call to `endpoint` as an {@link RpcFailure}. */
export function asFailure(err: unknown, endpoint: string): RpcFailure {
  if (err instanceof RpcFailure) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  return new RpcFailure(endpoint, e);
}

/** One {@link Member} per endpoint, over TLS when `tls` is given (cert and key together, for mutual TLS). */
export function createMembers(endpoints: string[], tls: EtcdStoreOptions["tls"]): Member[] {
  if (tls && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw invalid("etcd store tls: cert and key go together (mutual TLS needs both)");
  }
  const credentials = tls ? { rootCertificate: tls.ca as Buffer, privateKey: tls.key, certChain: tls.cert } : undefined;
  return endpoints.map((endpoint) => {
    const options: IOptions = {
      hosts: endpoint,
      grpcOptions: GRPC_OPTIONS,
      faultHandling: { host: () => PASS_THROUGH, global: PASS_THROUGH },
    };
    if (credentials) options.credentials = credentials;
    return new Member(endpoint, options);
  });
}
