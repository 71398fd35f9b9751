/**
 * Listen addresses that are already taken, answered in one line a person can act on: which address,
 * for what, and the config key and flag that move it. Without this a busy port surfaces as grpc-js'
 * "No address added out of total 1 resolved" (or fastify's EADDRINUSE) with a stack trace, after the
 * whole start-up (store, device, reconcile) already ran.
 */
import { createServer } from "node:net";
import type { Config, ListenAddress } from "./config";
import { Code, HsmError } from "./errors";

/** The two listeners of a daemon, each with the config key and the `hsmd` flag that set its address. */
const LISTENERS = {
  grpc: { what: "gRPC", key: "listen.grpc", flag: "--grpc HOST:PORT" },
  admin: { what: "admin HTTP", key: "listen.admin", flag: "--admin HOST:PORT" },
} as const;

/** Which listener an address belongs to. */
export type ListenerName = keyof typeof LISTENERS;

/** Node's socket error codes that mean "this address cannot be listened on here". */
const REASONS: Record<string, string> = {
  EADDRINUSE: "is already in use by another process",
  EACCES: "may not be listened on by this user (ports below 1024 need privileges)",
  EADDRNOTAVAIL: "is not an address of this machine",
};

/** The socket error code inside an error from `net.listen`, fastify or grpc-js' bindAsync (whose message carries it). */
function socketCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string" && code in REASONS) return code;
  const message = err instanceof Error ? err.message : String(err);
  return Object.keys(REASONS).find((c) => message.includes(c));
}

/**
 * An error from binding `listener` on `address`, as an {@link HsmError} (`UNAVAILABLE`) naming the
 * address and the config key and flag that move it when it is one of the known socket errors;
 * anything else is returned as it is.
 */
export function listenError(listener: ListenerName, address: ListenAddress, err: unknown): unknown {
  const code = socketCode(err);
  if (code === undefined) return err;
  const l = LISTENERS[listener];
  return new HsmError(Code.Unavailable, `${l.what} address ${address.address} ${REASONS[code]}: stop what holds it, or listen elsewhere (config ${l.key}, or hsmd ${l.flag})`, { cause: err });
}

/** Listens on `address` and closes at once: rejects with the socket error when it cannot. */
function probe(address: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen({ host: address.host, port: address.port, exclusive: true }, () => server.close(() => resolve()));
  });
}

/**
 * Checks that both listen addresses can be bound before anything else starts, so a busy port is
 * answered at once (not after the store, the device and the reconcile of every key). Port 0 (any
 * free port) is not checked. The real bind still maps its own failure with {@link listenError}, for
 * a port taken between this check and the bind.
 */
export async function checkListenAddresses(config: Config): Promise<void> {
  for (const name of Object.keys(LISTENERS) as ListenerName[]) {
    const address = config.listen[name];
    if (address.port === 0) continue;
    try {
      await probe(address);
    } catch (err) {
      throw listenError(name, address, err);
    }
  }
}
