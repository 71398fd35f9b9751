import { join } from "node:path";

/** Where `hsmd init` leaves the first crypto officer's one-time password (mode 600; removed when it is changed). */
export function firstOfficerPasswordFile(dataDir: string): string {
  return join(dataDir, "first-officer-password");
}

/**
 * Where `hsmd officer unlock NAME` leaves the officer's new one-time password (mode 600; removed
 * when the officer changes it on this node).
 */
export function officerPasswordFile(dataDir: string, name: string): string {
  return join(dataDir, `officer-${name}-password`);
}
