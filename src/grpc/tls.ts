import * as grpc from "@grpc/grpc-js";
import { ConfigError, TLS_REQUIRED, describeTransport, readTlsFiles, type Config } from "../config";

/**
 * The gRPC server's credentials from the compiled config: TLS with the configured certificate chain
 * and key (and, for mutual TLS, the CA client certificates must chain to), or insecure plaintext when
 * the config is in dev mode without `tls` (the config compiler allowed that only on loopback).
 *
 * The files are read again here (they were checked when the config was compiled); a file that changed
 * or vanished since is a {@link ConfigError} naming it. The key's contents never reach a message.
 */
export function grpcServerCredentials(config: Pick<Config, "tls" | "devMode">): grpc.ServerCredentials {
  const tls = config.tls;
  if (tls === null) {
    if (!config.devMode) throw new ConfigError([{ path: "/tls", message: TLS_REQUIRED }]);
    return grpc.ServerCredentials.createInsecure();
  }
  const { material, problems } = readTlsFiles(tls);
  if (!material) throw new ConfigError(problems);
  // requireClientCert: grpc-js sets requestCert and Node rejects clients whose certificate does not
  // chain to `ca` (or who send none). Without it, no client certificate is asked for.
  return grpc.ServerCredentials.createSsl(material.ca, [{ cert_chain: material.cert, private_key: material.key }], tls.requireClientCert);
}

/** "TLS, client certificates required" | "TLS" | "plaintext, DEV MODE: loopback only". */
export { describeTransport };
