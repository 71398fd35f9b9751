import type { ListenAddress } from "./types";

const HOST_PORT = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)):(\d{1,5})$/;

/**
 * Parses `host:port` (IPv6 literals in brackets, `[::1]:7443`). Port 0..65535, 0 meaning any free
 * port. Returns undefined when the string is not such an address.
 */
export function parseListenAddress(address: string): ListenAddress | undefined {
  const m = HOST_PORT.exec(address);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port, address };
}
