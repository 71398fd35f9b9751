/**
 * Logged-in SDK clients for tests: the first crypto officer (its one-time password read from the file
 * `hsmd init` leaves, then changed) and crypto users it creates. The passwords are test fixtures.
 */
import { existsSync, readFileSync } from "node:fs";
import { HsmClient, Role, type HsmClientOptions } from "../../src/sdk";
import { firstOfficerPasswordFile } from "../../src/daemon";

/** The first officer's password once the one-time one is changed. */
export const OFFICER_PASSWORD = "officer-password-1";
/** Every test crypto user's password. */
export const USER_PASSWORD = "user-password-1";

/** A daemon the helpers can reach: its gRPC address and data directory. */
export interface Reachable {
  grpc: string;
  dataDir: string;
}

/** The first crypto officer, logged in (changing the one-time password the first time). */
export async function officerClient(d: Reachable, options: Partial<HsmClientOptions> = {}): Promise<HsmClient> {
  const c = new HsmClient({ endpoint: d.grpc, defaultDeadlineMs: 20_000, ...options });
  const otpFile = firstOfficerPasswordFile(d.dataDir);
  if (existsSync(otpFile)) {
    await c.login("admin", readFileSync(otpFile, "utf8").trim());
    await c.changePassword(readFileSync(otpFile, "utf8").trim(), OFFICER_PASSWORD);
  } else {
    await c.login("admin", OFFICER_PASSWORD);
  }
  return c;
}

/** Creates a user as the first officer unless it exists (ALREADY_EXISTS is fine). */
export async function ensureUser(d: Reachable, name: string, role: Role = Role.ROLE_CRYPTO_USER, options: Partial<HsmClientOptions> = {}): Promise<void> {
  const co = await officerClient(d, options);
  try {
    await co.createUser({ username: name, role, password: USER_PASSWORD });
  } catch (e) {
    if ((e as { codeName?: string }).codeName !== "ALREADY_EXISTS") throw e;
  } finally {
    await co.logout().catch(() => undefined);
    co.close();
  }
}

/** A crypto user (created if needed), logged in. */
export async function userClient(d: Reachable, name = "alice", options: Partial<HsmClientOptions> = {}, role: Role = Role.ROLE_CRYPTO_USER): Promise<HsmClient> {
  await ensureUser(d, name, role, options);
  const c = new HsmClient({ endpoint: d.grpc, defaultDeadlineMs: 20_000, ...options });
  await c.login(name, USER_PASSWORD);
  return c;
}
