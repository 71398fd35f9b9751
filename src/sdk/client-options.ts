import { credentials, status, type ChannelCredentials, type ChannelOptions } from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";

/** TLS settings for {@link HsmClientOptions.tls}. Certificates and keys are PEM, as read from disk. */
export interface HsmClientTlsOptions {
  /**
   * PEM CA certificate(s) that sign the daemon's certificate.
   * @default the system's root CAs (Node's bundled list)
   */
  ca?: Buffer;
  /**
   * PEM client certificate, for mutual TLS. Give it together with {@link key}.
   * @default none: no client certificate is presented
   */
  cert?: Buffer;
  /**
   * PEM private key of {@link cert}, for mutual TLS.
   * @default none
   */
  key?: Buffer;
  /**
   * The name checked against the server certificate instead of the endpoint's host, e.g. when
   * connecting by IP address to a daemon whose certificate names `hsmd.internal`. Also sent as the
   * `:authority`. For tests and unusual deployments; prefer an endpoint whose host matches the certificate.
   * @default the endpoint's host
   */
  serverNameOverride?: string;
}

/** Retry settings of {@link HsmClientOptions.retry}. */
export interface HsmClientRetryOptions {
  /**
   * Most attempts of one call, the first included (`1` turns retrying off). Only idempotent calls are
   * retried (the table `RPC_IDEMPOTENCY`), only after a transient error (UNAVAILABLE, or
   * RESOURCE_EXHAUSTED because a device is out of sessions), and never past the call's deadline.
   * @default 5
   */
  maxAttempts?: number;
  /**
   * The backoff ceiling before the first retry, in milliseconds; the ceiling doubles on each further
   * retry up to {@link maxBackoffMs}, and the actual wait is uniformly random below it ("full jitter").
   * @default 50
   */
  initialBackoffMs?: number;
  /**
   * The largest backoff ceiling in milliseconds.
   * @default 2000
   */
  maxBackoffMs?: number;
}

/** Settings of the crypto stream, {@link HsmClientOptions.cryptoStream}. */
export interface HsmClientStreamOptions {
  /**
   * Operations in flight on one endpoint's stream at most; more wait in the client (first in, first
   * out, each within its own deadline). Match the daemon's `grpc.streamMaxInFlight`: a larger window
   * only makes the daemon stop reading, and HTTP/2 flow control pushes back.
   * @default 256
   */
  maxInFlight?: number;
  /**
   * A stream with nothing in flight for this many milliseconds is closed; the next operation opens
   * another. An open stream keeps the process alive, so a program that does not {@link HsmClient.close}
   * its client exits this long after its last operation.
   * @default 10_000
   */
  idleTimeoutMs?: number;
}

/** A user's name and password, as {@link HsmClientOptions.credentials} supplies them. */
export interface HsmClientCredentials {
  username: string;
  password: string;
}

/**
 * Supplies the credentials to log in again with when the session has ended (token expired or revoked).
 * Called only when a re-login is needed; the client does not keep what it returns.
 */
export type HsmCredentialsProvider = () => Promise<HsmClientCredentials>;

/** What {@link HsmClient} needs to reach hsmd daemons. Give exactly one of `endpoint` and `endpoints`. */
export interface HsmClientOptions {
  /**
   * One daemon's gRPC address, `"host:port"` (e.g. `"hsmd.internal:7443"`, `"127.0.0.1:7443"`,
   * `"[::1]:7443"`). The same as `endpoints: [endpoint]`.
   * @default none: give this or {@link endpoints}
   */
  endpoint?: string;
  /**
   * The gRPC addresses (`"host:port"`) of the daemons of a cluster. Calls are spread over them
   * (round robin over the reachable, healthy ones), and a call retried after a transient error goes to
   * another one. A host name that resolves to several addresses is itself balanced over them.
   * @default none: give this or {@link endpoint}
   */
  endpoints?: string[];
  /**
   * Retrying of idempotent calls after transient errors, with exponential backoff and full jitter,
   * within each call's deadline.
   * @default { maxAttempts: 5, initialBackoffMs: 50, maxBackoffMs: 2000 }
   */
  retry?: HsmClientRetryOptions;
  /**
   * Where to get a user's name and password when a call fails with UNAUTHENTICATED (the session
   * expired or was revoked, or there is none: never logged in, or after {@link HsmClient.logout}): the
   * client logs in again once, shared by every call that needs it at that moment, and repeats the call
   * once (even a call that is not idempotent: the daemon refused it before doing anything). The
   * password is used for that `Login` only, never stored. A failed re-login rejects the call with the
   * `Login`'s error. Without this option, UNAUTHENTICATED reaches the caller.
   * @default undefined (no re-login)
   */
  credentials?: HsmCredentialsProvider;
  /**
   * TLS to the daemon. When absent the client speaks **insecure plaintext** gRPC: no server
   * authentication and no encryption. That is only for the daemon's dev mode on loopback
   * (`127.0.0.1`/`localhost`); never use it across a network, as key material (BYOK imports,
   * plaintexts, unwrapped blobs) would travel in the clear.
   * @default undefined (insecure plaintext, dev mode on loopback only)
   */
  tls?: HsmClientTlsOptions;
  /**
   * Deadline of each call in milliseconds, when the call's {@link CallOptions.deadlineMs} does not set
   * one. Every call has a deadline; past it the call fails with DEADLINE_EXCEEDED.
   * @default 30_000
   */
  defaultDeadlineMs?: number;
  /**
   * Carry the crypto operations (`sign`, `verify`, `encrypt`, `decrypt`, `generateRandom`,
   * `generateDataKey`, `generateDataKeyWithoutPlaintext`, `decryptDataKey`) as messages on one
   * `CryptoStream` per endpoint instead of one unary call each: the same requests, answers and
   * errors, several times the throughput. Each operation keeps its deadline and signal; when a
   * stream breaks, its operations are sent again (on a new stream, another endpoint first) within
   * their deadlines, as retries of unary crypto calls are. A call with {@link CallOptions.metadata}
   * goes unary (a stream message has no headers of its own), as does every call to a daemon that
   * does not serve the stream. `false`: every call is unary. Batch and all other calls are always unary.
   * @default true ({ maxInFlight: 256, idleTimeoutMs: 10_000 })
   */
  cryptoStream?: boolean | HsmClientStreamOptions;
  /**
   * Extra grpc-js channel options (keepalive, message sizes, …), passed to every endpoint's channel
   * unchanged, except that {@link HsmClientTlsOptions.serverNameOverride} sets
   * `grpc.ssl_target_name_override` and `grpc.default_authority`. The client sets
   * `grpc.service_config` to `round_robin` load balancing (over the addresses an endpoint's host name
   * resolves to) unless this gives one.
   * @default {}
   */
  channelOptions?: ChannelOptions;
}

/** Default of {@link HsmClientOptions.defaultDeadlineMs}. */
export const DEFAULT_DEADLINE_MS = 30_000;

/** Defaults of {@link HsmClientOptions.retry}. */
export const DEFAULT_RETRY: Readonly<Required<HsmClientRetryOptions>> = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 50,
  maxBackoffMs: 2_000,
});

/** Defaults of {@link HsmClientOptions.cryptoStream}. */
export const DEFAULT_CRYPTO_STREAM: Readonly<Required<HsmClientStreamOptions>> = Object.freeze({
  maxInFlight: 256,
  idleTimeoutMs: 10_000,
});

/** Channel option giving each endpoint's channel grpc-js's client-side `round_robin` load balancing. */
const ROUND_ROBIN_SERVICE_CONFIG = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });

/** {@link HsmClientOptions} with every default resolved, so the client never sees `undefined`. */
export interface CompiledHsmClientOptions {
  /** Every endpoint, trimmed, in the order given (at least one). */
  readonly endpoints: readonly string[];
  readonly retry: Readonly<Required<HsmClientRetryOptions>>;
  readonly credentialsProvider: HsmCredentialsProvider | undefined;
  readonly credentials: ChannelCredentials;
  /** True when the channel is insecure plaintext. */
  readonly insecure: boolean;
  readonly defaultDeadlineMs: number;
  readonly channelOptions: Readonly<ChannelOptions>;
  /** The crypto stream's settings, or false when crypto calls are unary. */
  readonly cryptoStream: Readonly<Required<HsmClientStreamOptions>> | false;
}

/**
 * Validates user options once, reporting every problem together in one INVALID_ARGUMENT
 * {@link HsmClientError}, and resolves defaults into a frozen {@link CompiledHsmClientOptions}.
 */
export function compileHsmClientOptions(options: HsmClientOptions): CompiledHsmClientOptions {
  const problems: string[] = [];
  const { endpoint, endpoints, tls, retry = {}, credentials: credentialsProvider, defaultDeadlineMs = DEFAULT_DEADLINE_MS, channelOptions = {}, cryptoStream = true } = options ?? {};

  const addresses: string[] = [];
  if (endpoint !== undefined && endpoints !== undefined) {
    problems.push("endpoint, endpoints: give exactly one of them, not both");
  } else if (endpoint === undefined && endpoints === undefined) {
    problems.push('endpoint: required (or endpoints): a "host:port" string');
  } else if (endpoints === undefined) {
    const problem = endpointProblem(endpoint);
    if (problem === undefined) addresses.push((endpoint as string).trim());
    else problems.push(`endpoint: ${problem}`);
  } else if (!Array.isArray(endpoints) || endpoints.length === 0) {
    problems.push('endpoints: must be a non-empty array of "host:port" strings');
  } else {
    endpoints.forEach((e, i) => {
      const problem = endpointProblem(e);
      if (problem !== undefined) problems.push(`endpoints[${i}]: ${problem}`);
      else if (addresses.includes(e.trim())) problems.push(`endpoints[${i}]: ${JSON.stringify(e)} is listed twice`);
      else addresses.push(e.trim());
    });
  }

  const resolvedRetry = { ...DEFAULT_RETRY };
  if (typeof retry !== "object" || retry === null) {
    problems.push("retry: must be an object");
  } else {
    const { maxAttempts = DEFAULT_RETRY.maxAttempts, initialBackoffMs = DEFAULT_RETRY.initialBackoffMs, maxBackoffMs = DEFAULT_RETRY.maxBackoffMs } = retry;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) problems.push("retry.maxAttempts: must be an integer of at least 1");
    if (typeof initialBackoffMs !== "number" || !Number.isFinite(initialBackoffMs) || initialBackoffMs < 0) {
      problems.push("retry.initialBackoffMs: must be a finite number of milliseconds, 0 or more");
    }
    if (typeof maxBackoffMs !== "number" || !Number.isFinite(maxBackoffMs) || maxBackoffMs < initialBackoffMs) {
      problems.push("retry.maxBackoffMs: must be a finite number of milliseconds, at least retry.initialBackoffMs");
    }
    Object.assign(resolvedRetry, { maxAttempts, initialBackoffMs, maxBackoffMs });
  }
  if (credentialsProvider !== undefined && typeof credentialsProvider !== "function") {
    problems.push("credentials: must be a function returning a promise of { username, password }");
  }
  if (typeof defaultDeadlineMs !== "number" || !Number.isFinite(defaultDeadlineMs) || defaultDeadlineMs <= 0) {
    problems.push("defaultDeadlineMs: must be a finite number of milliseconds greater than 0");
  }
  let resolvedStream: Required<HsmClientStreamOptions> | false = false;
  if (cryptoStream === true) {
    resolvedStream = { ...DEFAULT_CRYPTO_STREAM };
  } else if (typeof cryptoStream === "object" && cryptoStream !== null) {
    const { maxInFlight = DEFAULT_CRYPTO_STREAM.maxInFlight, idleTimeoutMs = DEFAULT_CRYPTO_STREAM.idleTimeoutMs } = cryptoStream;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > 65_536) problems.push("cryptoStream.maxInFlight: must be an integer from 1 to 65536");
    if (typeof idleTimeoutMs !== "number" || !Number.isFinite(idleTimeoutMs) || idleTimeoutMs <= 0) {
      problems.push("cryptoStream.idleTimeoutMs: must be a finite number of milliseconds greater than 0");
    }
    resolvedStream = { maxInFlight, idleTimeoutMs };
  } else if (cryptoStream !== false) {
    problems.push("cryptoStream: must be true, false or { maxInFlight, idleTimeoutMs }");
  }
  if (tls !== undefined) {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      problems.push("tls: cert and key must be given together (mutual TLS) or not at all");
    }
    for (const field of ["ca", "cert", "key"] as const) {
      const value = tls[field];
      if (value !== undefined && !Buffer.isBuffer(value)) problems.push(`tls.${field}: must be a Buffer (PEM)`);
    }
    if (tls.serverNameOverride !== undefined && (typeof tls.serverNameOverride !== "string" || tls.serverNameOverride === "")) {
      problems.push("tls.serverNameOverride: must be a non-empty string");
    }
  }
  if (problems.length > 0) {
    throw new HsmClientError(status.INVALID_ARGUMENT, `invalid HsmClientOptions: ${problems.join("; ")}`);
  }

  let creds: ChannelCredentials;
  // Each endpoint's channel balances over the addresses its name resolves to; the caller may override.
  const resolvedChannelOptions: ChannelOptions = { "grpc.service_config": ROUND_ROBIN_SERVICE_CONFIG, ...channelOptions };
  if (tls === undefined) {
    creds = credentials.createInsecure();
  } else {
    try {
      creds = credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
    } catch (err) {
      throw new HsmClientError(status.INVALID_ARGUMENT, `invalid HsmClientOptions: tls: ${(err as Error).message}`, {
        cause: err,
      });
    }
    if (tls.serverNameOverride !== undefined) {
      resolvedChannelOptions["grpc.ssl_target_name_override"] = tls.serverNameOverride;
      resolvedChannelOptions["grpc.default_authority"] = tls.serverNameOverride;
    }
  }

  return Object.freeze({
    endpoints: Object.freeze(addresses),
    retry: Object.freeze(resolvedRetry),
    credentialsProvider,
    credentials: creds,
    insecure: tls === undefined,
    defaultDeadlineMs,
    channelOptions: Object.freeze(resolvedChannelOptions),
    cryptoStream: resolvedStream === false ? false : Object.freeze(resolvedStream),
  });
}

/**
 * Why `value` is not a `"host:port"` endpoint, or undefined when it is one: a host name or IPv4
 * address, or an IPv6 address in brackets, then a port from 1 to 65535.
 */
function endpointProblem(value: unknown): string | undefined {
  const expected = 'must be "host:port" (e.g. "hsmd.internal:7443", "127.0.0.1:7443", "[::1]:7443")';
  if (typeof value !== "string" || value.trim() === "") return `${expected}, not ${value === "" ? "empty" : String(value)}`;
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^\s:/[\]@]+)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : 0;
  if (!m || port < 1 || port > 65_535 || (m[1] !== undefined && !m[1].includes(":"))) {
    return `${expected}, not ${JSON.stringify(value)}`;
  }
  return undefined;
}
