import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { BlockList } from "node:net";
import { isAbsolute, resolve } from "node:path";
import type { ConfigProblem, ListenAddress, TlsConfig } from "./types";

/*
 * The transport rule: gRPC runs over TLS unless the config says `devMode: true` and every listen
 * address is loopback. TLS files are checked here once at compile time and read again, through the
 * same code, when the daemon binds; problems name the file and the reason, never its contents.
 */

/** The message of the `/tls` problem when neither TLS nor dev mode is configured. */
export const TLS_REQUIRED = "required unless devMode is true (plaintext gRPC is for loopback development only)";

const loopback = new BlockList();
loopback.addSubnet("127.0.0.0", 8, "ipv4");
loopback.addAddress("::1", "ipv6");
loopback.addSubnet("::ffff:127.0.0.0", 104, "ipv6");

/** True for `localhost`, 127.0.0.0/8 and ::1 (the hosts a dev-mode daemon may listen on). */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === "localhost" || h === "localhost.") return true;
  try {
    if (/^\d{1,3}(\.\d{1,3}){3}$/.test(h)) return loopback.check(h, "ipv4");
    if (h.includes(":")) return loopback.check(h, "ipv6");
  } catch {
    return false;
  }
  return false;
}

/** The raw `tls` section once the schema has passed it. */
export interface RawTls {
  cert: string;
  key: string;
  ca?: string;
  requireClientCert?: boolean;
}

/**
 * Checks the transport rule and the TLS files. `tls` is undefined when absent (or schema-invalid:
 * then `tlsSchemaOk` is false and no further TLS problem is reported); a listen address is undefined
 * when it did not parse (reported elsewhere).
 */
export function checkTransport(input: { tls: RawTls | undefined; tlsSchemaOk: boolean; devMode: boolean; listen: { grpc?: ListenAddress; admin?: ListenAddress }; baseDir: string }): {
  problems: ConfigProblem[];
  tls?: TlsConfig | null;
} {
  const { tls, devMode, listen, baseDir } = input;
  if (!input.tlsSchemaOk) return { problems: [] };
  if (tls === undefined) {
    if (!devMode) return { problems: [{ path: "/tls", message: TLS_REQUIRED }] };
    const problems: ConfigProblem[] = [];
    for (const which of ["grpc", "admin"] as const) {
      const a = listen[which];
      if (a && !isLoopbackHost(a.host)) {
        problems.push({
          path: `/listen/${which}`,
          message: `must be a loopback address (127.0.0.0/8, ::1, localhost) in devMode without /tls, not ${a.host}: configure /tls to listen on the network`,
        });
      }
    }
    return { problems, tls: null };
  }
  const path = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  const resolved: TlsConfig = {
    cert: path(tls.cert),
    key: path(tls.key),
    ca: tls.ca === undefined ? null : path(tls.ca),
    requireClientCert: tls.requireClientCert ?? false,
  };
  const problems: ConfigProblem[] = [];
  if (resolved.requireClientCert && resolved.ca === null) {
    problems.push({ path: "/tls/requireClientCert", message: "needs /tls/ca (the CA certificate(s) client certificates must chain to)" });
  }
  const read = readTlsFiles(resolved);
  problems.push(...read.problems);
  read.material?.key.fill(0);
  return problems.length ? { problems } : { problems, tls: resolved };
}

/** The PEM contents of the TLS files, as grpc-js wants them. `key` is secret. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca: Buffer | null;
}

const PEM_CERT = "-----BEGIN CERTIFICATE-----";
const PEM_KEY = /-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----/;

/**
 * Reads and checks the three files: each readable, a PEM certificate (chain) for `cert` and `ca`, an
 * unencrypted PEM private key for `key` that matches `cert`'s public key. Problems are at
 * `/tls/cert`, `/tls/key`, `/tls/ca`, each naming the file; none carries the file's contents.
 */
export function readTlsFiles(tls: TlsConfig): { material?: TlsMaterial; problems: ConfigProblem[] } {
  const problems: ConfigProblem[] = [];
  const read = (field: "cert" | "key" | "ca", what: string, file: string): Buffer | undefined => {
    try {
      return readFileSync(file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "error";
      const why = code === "ENOENT" ? "does not exist" : code === "EACCES" ? "is not readable" : code === "EISDIR" ? "is a directory" : `cannot be read (${code})`;
      problems.push({ path: `/tls/${field}`, message: `${what} ${file} ${why}` });
      return undefined;
    }
  };

  const parseCert = (field: "cert" | "ca", what: string, file: string, pem: Buffer | undefined): X509Certificate | undefined => {
    if (pem === undefined) return undefined;
    if (!pem.includes(PEM_CERT)) {
      problems.push({ path: `/tls/${field}`, message: `${what} ${file} is not PEM (expected ${PEM_CERT})` });
      return undefined;
    }
    try {
      return new X509Certificate(pem);
    } catch {
      problems.push({ path: `/tls/${field}`, message: `${what} ${file} holds a PEM certificate that cannot be parsed` });
      return undefined;
    }
  };

  const certPem = read("cert", "certificate file", tls.cert);
  const cert = parseCert("cert", "certificate file", tls.cert, certPem);

  const keyPem = read("key", "private key file", tls.key);
  let key: KeyObject | undefined;
  if (keyPem !== undefined) {
    const kind = PEM_KEY.exec(keyPem.toString("latin1"))?.[1];
    if (kind === undefined) {
      problems.push({ path: "/tls/key", message: `private key file ${tls.key} is not PEM (expected -----BEGIN PRIVATE KEY-----)` });
    } else if (kind === "ENCRYPTED PRIVATE KEY") {
      problems.push({ path: "/tls/key", message: `private key file ${tls.key} is encrypted: hsmd needs an unencrypted key (protect the file with its permissions)` });
    } else {
      try {
        key = createPrivateKey(keyPem);
      } catch {
        problems.push({ path: "/tls/key", message: `private key file ${tls.key} holds a PEM private key that cannot be parsed` });
      }
    }
  }
  if (cert && key && !cert.checkPrivateKey(key)) {
    problems.push({ path: "/tls/key", message: `private key file ${tls.key} does not match the certificate in ${tls.cert}` });
  }
  if (cert && Date.parse(cert.validTo) < Date.now()) {
    problems.push({ path: "/tls/cert", message: `certificate file ${tls.cert} holds a certificate that expired on ${new Date(cert.validTo).toISOString()}` });
  }

  let caPem: Buffer | undefined;
  if (tls.ca !== null) {
    caPem = read("ca", "CA file", tls.ca);
    if (!parseCert("ca", "CA file", tls.ca, caPem)) caPem = undefined;
  }

  if (problems.length || !certPem || !keyPem || !cert || !key) {
    keyPem?.fill(0);
    return { problems };
  }
  return { problems, material: { cert: certPem, key: keyPem, ca: caPem ?? null } };
}

/** How the daemon's gRPC endpoint is protected, for its ready line and status. */
export function describeTransport(config: { readonly tls: TlsConfig | null }): string {
  if (config.tls === null) return "plaintext, DEV MODE: loopback only";
  return config.tls.requireClientCert ? "TLS, client certificates required" : "TLS";
}
