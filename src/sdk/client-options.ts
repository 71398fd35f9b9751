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

/** What {@link HsmClient} needs to reach an hsmd daemon. */
export interface HsmClientOptions {
  /** The daemon's gRPC address, `"host:port"` (e.g. `"hsmd.internal:7443"`, `"127.0.0.1:7443"`). Required. */
  endpoint: string;
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
   * Extra grpc-js channel options (keepalive, message sizes, …), passed to the channel unchanged
   * except that {@link HsmClientTlsOptions.serverNameOverride} sets `grpc.ssl_target_name_override`
   * and `grpc.default_authority`.
   * @default {}
   */
  channelOptions?: ChannelOptions;
}

/** Default of {@link HsmClientOptions.defaultDeadlineMs}. */
export const DEFAULT_DEADLINE_MS = 30_000;

/** {@link HsmClientOptions} with every default resolved, so the client never sees `undefined`. */
export interface CompiledHsmClientOptions {
  readonly endpoint: string;
  readonly credentials: ChannelCredentials;
  /** True when the channel is insecure plaintext. */
  readonly insecure: boolean;
  readonly defaultDeadlineMs: number;
  readonly channelOptions: Readonly<ChannelOptions>;
}

/**
 * Validates user options once, reporting every problem together in one INVALID_ARGUMENT
 * {@link HsmClientError}, and resolves defaults into a frozen {@link CompiledHsmClientOptions}.
 */
export function compileHsmClientOptions(options: HsmClientOptions): CompiledHsmClientOptions {
  const problems: string[] = [];
  const { endpoint, tls, defaultDeadlineMs = DEFAULT_DEADLINE_MS, channelOptions = {} } = options ?? {};

  if (typeof endpoint !== "string" || endpoint.trim() === "") {
    problems.push('endpoint: must be a non-empty "host:port" string');
  }
  if (typeof defaultDeadlineMs !== "number" || !Number.isFinite(defaultDeadlineMs) || defaultDeadlineMs <= 0) {
    problems.push("defaultDeadlineMs: must be a finite number of milliseconds greater than 0");
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
  const resolvedChannelOptions: ChannelOptions = { ...channelOptions };
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
    endpoint: endpoint.trim(),
    credentials: creds,
    insecure: tls === undefined,
    defaultDeadlineMs,
    channelOptions: Object.freeze(resolvedChannelOptions),
  });
}
