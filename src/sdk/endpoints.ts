import * as grpc from "@grpc/grpc-js";

/**
 * The client's view of one daemon: its own channel (grpc-js `round_robin` over the addresses its host
 * name resolves to) and whether it is sitting out after a failure.
 */
export interface Endpoint {
  readonly address: string;
  readonly channel: grpc.Channel;
  /** A plain grpc-js client on {@link channel}; every hsm.v1 call is a `makeUnaryRequest` on it. */
  readonly client: grpc.Client;
  /** True after a call to it failed with UNAVAILABLE, until a health check says it serves again. */
  ejected: boolean;
  /** Wait before the next health check while ejected. */
  probeBackoffMs: number;
  probeTimer: NodeJS.Timeout | undefined;
  probing: boolean;
}

/** `grpc.health.v1.Health/Check`, served by every hsmd without authentication. */
const HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check";
/** `HealthCheckResponse.ServingStatus.SERVING`. */
const SERVING = 1;
/** Deadline of one health check. */
const PROBE_DEADLINE_MS = 2_000;
/** First and largest wait between health checks of an ejected endpoint (jittered ±50 %). */
const PROBE_BACKOFF_MS = { initial: 500, max: 30_000 } as const;

/**
 * The endpoints of one {@link HsmClient} and how a call picks one.
 *
 * Why one channel per endpoint rather than a single grpc-js channel over an `ipv4:a,b,c` target:
 * each endpoint keeps its own host name, so grpc-js resolves it (and re-resolves it when connections
 * fail) and TLS checks each daemon's certificate against that daemon's own name; a single channel has
 * one authority for every address and would need host names resolved once, here, at construction.
 * Knowing which endpoint a call went to also lets a retry go to a different one for certain (round_robin
 * inside one channel only makes that likely) and lets the client sit out the endpoint that failed.
 *
 * Picking is round robin over the endpoints in the best tier: connected and not ejected, then
 * connecting or idle, then ejected, then those whose connection attempts fail; endpoints a call already
 * tried are skipped while any other remains.
 *
 * Health: grpc-js 1.14 does not implement client-side health checking (gRFC A17): its service-config
 * parser drops `healthCheckConfig` and nothing in it calls grpc.health.v1. So the client checks health
 * itself, on demand: an endpoint that answers UNAVAILABLE is ejected and probed with
 * `grpc.health.v1.Health/Check` (service `""`) with backoff until it answers SERVING (or UNIMPLEMENTED,
 * a server without the health service, as A17 treats it); a transient refusal by a serving node thus
 * costs it one round trip out of rotation, while a NOT_SERVING or unreachable one stays out.
 */
/**
 * Largest answer the client reads: twice the daemon's largest possible `limits.maxMessageBytes`
 * (256 MiB; an Encrypt answer carries its ciphertext raw and in the self-describing blob) plus its
 * 1 MiB transport slack.
 */
const MAX_ANSWER_BYTES = 513 * 1024 * 1024;

export class EndpointPool {
  readonly endpoints: readonly Endpoint[];
  private cursor = 0;
  private closed = false;

  constructor(addresses: readonly string[], credentials: grpc.ChannelCredentials, channelOptions: grpc.ChannelOptions) {
    this.endpoints = addresses.map((address) => {
      // channelz bookkeeping costs CPU on every call and nothing here reads it: off unless asked for.
      const channel = new grpc.Channel(address, credentials, {
        "grpc.enable_channelz": 0,
        // Subchannels of its own: a new client to a node that just restarted must not inherit the
        // reconnect backoff another client's connection to the old process ran into.
        "grpc.use_local_subchannel_pool": 1,
        // grpc-js clients take 4 MiB answers by default; a full batch answers ~16 MiB with the daemon's
        // default limits. The daemon bounds what it sends (limits.maxMessageBytes + 1 MiB, at most 257 MiB).
        "grpc.max_receive_message_length": MAX_ANSWER_BYTES,
        ...channelOptions,
      });
      const client = new grpc.Client(address, credentials, { channelOverride: channel });
      return { address, channel, client, ejected: false, probeBackoffMs: PROBE_BACKOFF_MS.initial, probeTimer: undefined, probing: false };
    });
    // With a choice to make, connect to every endpoint now so that picking sees which are up; with one
    // endpoint, connect on the first call as before.
    if (this.endpoints.length > 1) for (const e of this.endpoints) e.channel.getConnectivityState(true);
  }

  /** The endpoint for the next attempt of a call that already tried `tried`. */
  pick(tried: ReadonlySet<Endpoint>): Endpoint {
    const n = this.endpoints.length;
    if (n === 1) return this.endpoints[0]!;
    const skipTried = tried.size < n;
    let chosen = -1;
    let chosenTier = Number.POSITIVE_INFINITY;
    for (let i = 0; i < n; i++) {
      const index = (this.cursor + i) % n;
      const e = this.endpoints[index]!;
      if (skipTried && tried.has(e)) continue;
      const tier = this.tierOf(e);
      if (tier < chosenTier) {
        chosen = index;
        chosenTier = tier;
        if (tier === 0) break;
      }
    }
    this.cursor = (chosen + 1) % n;
    return this.endpoints[chosen]!;
  }

  /** Takes an endpoint that answered UNAVAILABLE out of rotation until a health check says it serves. */
  reportUnavailable(e: Endpoint): void {
    if (this.closed || this.endpoints.length === 1 || e.ejected) return;
    e.ejected = true;
    e.probeBackoffMs = PROBE_BACKOFF_MS.initial;
    this.probe(e);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const e of this.endpoints) {
      clearTimeout(e.probeTimer);
      e.probeTimer = undefined;
      e.channel.close();
    }
  }

  /** 0 connected, 1 connecting or idle, 2 ejected, 3 failing to connect (or shut down). */
  private tierOf(e: Endpoint): number {
    const state = e.channel.getConnectivityState(false);
    if (state === grpc.connectivityState.TRANSIENT_FAILURE || state === grpc.connectivityState.SHUTDOWN) return 3;
    if (state === grpc.connectivityState.IDLE) e.channel.getConnectivityState(true); // reconnect in the background
    if (e.ejected) return 2;
    return state === grpc.connectivityState.READY ? 0 : 1;
  }

  private probe(e: Endpoint): void {
    e.probeTimer = undefined;
    if (this.closed || e.probing) return;
    e.probing = true;
    const done = (serving: boolean): void => {
      e.probing = false;
      if (this.closed) return;
      if (serving) {
        e.ejected = false;
        e.probeBackoffMs = PROBE_BACKOFF_MS.initial;
        return;
      }
      const wait = e.probeBackoffMs * (0.5 + Math.random());
      e.probeBackoffMs = Math.min(PROBE_BACKOFF_MS.max, e.probeBackoffMs * 2);
      // unref: a background check never keeps the process alive.
      e.probeTimer = setTimeout(() => this.probe(e), wait).unref();
    };
    try {
      e.client.makeUnaryRequest(
        HEALTH_CHECK_PATH,
        () => Buffer.alloc(0), // HealthCheckRequest { service: "" }: every field default, so no bytes
        servingStatusOf,
        {},
        new grpc.Metadata(),
        { deadline: new Date(Date.now() + PROBE_DEADLINE_MS) },
        (err, servingStatus) => done(err ? err.code === grpc.status.UNIMPLEMENTED : servingStatus === SERVING),
      );
    } catch {
      done(false);
    }
  }
}

/** `HealthCheckResponse.status` (field 1, a varint enum) from its wire bytes; 0 (UNKNOWN) when absent. */
function servingStatusOf(bytes: Buffer): number {
  let i = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; i < bytes.length && shift < 35; shift += 7) {
      const b = bytes[i++]!;
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return value;
    }
    throw new Error("truncated varint in HealthCheckResponse");
  };
  while (i < bytes.length) {
    const tag = varint();
    const wireType = tag & 7;
    if (tag >>> 3 === 1 && wireType === 0) return varint();
    if (wireType === 0) varint();
    else if (wireType === 2) i += varint();
    else if (wireType === 1) i += 8;
    else if (wireType === 5) i += 4;
    else throw new Error(`unexpected wire type ${wireType} in HealthCheckResponse`);
  }
  return 0;
}
