/**
 * Shared fixtures of the auth-flow integration tests (auth-flows.test.ts, auth-flows-quorum.test.ts,
 * and the main daemon's audit-log suite in auth-audit-log.ts): every secret the tests send (so that an
 * audit log can be searched for them), tracked SDK clients, raw logins that keep the session token,
 * the first crypto officer, and the build of dist for the CLI.
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll } from "vitest";
import { firstOfficerPasswordFile } from "../../src/daemon";
import { UserServiceClient, type Session } from "../../src/gen/hsm/v1/users";
import { HsmClient, HsmClientError, Role, SigningAlgorithm } from "../../src/sdk";
import { REPO, distIsFresh } from "./daemon-process";
import type { TestDaemon } from "./daemon";
import { OFFICER_PASSWORD, USER_PASSWORD } from "./users";

// ---- fixtures: every secret these tests send, so that an audit log can be searched for them ----

export const OFFICER2_PASSWORD = "second-officer-pw-1";
export const CHANGED_PASSWORD = "changed-by-itself-1";
export const RESET_PASSWORD = "reset-by-officer-77";
export const AFTER_RESET_PASSWORD = "after-the-reset-99";
export const WRONG_PASSWORD = "wrong-password-x1";
export const WRONG_PASSWORD_2 = "wrong-password-y2";
export const WRONG_PASSWORD_3 = "wrong-password-z3";
export const PASSWORD_8 = "eight-ch"; // exactly 8: the shortest accepted
export const PASSWORD_64 = "p".repeat(60) + "-64!"; // exactly 64: the longest accepted
export const PASSWORD_7 = "seven-c";
export const PASSWORD_65 = "q".repeat(65);
export const PLAINTEXT = Buffer.from("audit must never hold this plaintext: 4f1d9c0e-sign-me", "utf8");

/** Session tokens seen by this test file's process (raw logins), searched for in the audit log. */
export const tokensSeen = new Set<string>();

/**
 * What a revoked session answers: "session revoked", or "invalid session token" once the daemon's
 * 30-second sweep has purged the dead session record (it may run between two calls of a test).
 */
export const REVOKED = /session revoked|invalid session token/;

/** The signing algorithm and the roles the tests use. */
export const ECDSA = SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
export const CU = Role.ROLE_CRYPTO_USER;
export const CO = Role.ROLE_CRYPTO_OFFICER;

// ---- helpers ----

/** Waits `ms`, or until the time `t` (ms since the epoch). */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const sleepUntil = (t: number) => sleep(Math.max(0, t - Date.now()));

/** Clients opened by a test file section, closed in its afterAll. */
export let clients: HsmClient[] = [];
/** Tracks `c` to be closed by closeClients. */
export function track(c: HsmClient): HsmClient {
  clients.push(c);
  return c;
}
/** Closes every tracked client. */
export function closeClients(): void {
  for (const c of clients) c.close();
  clients = [];
}

/** A tracked SDK client of `td`, not logged in. */
export const newClient = (td: TestDaemon) => track(new HsmClient({ endpoint: td.grpc, defaultDeadlineMs: 20_000 }));

/** An SDK client logged in as `user`. */
export async function login(td: TestDaemon, user: string, password: string): Promise<HsmClient> {
  const c = newClient(td);
  await c.login(user, password);
  return c;
}

/** A client that sends `token` as is: never refreshes it (useToken without an expiry). */
export function tokenClient(td: TestDaemon, token: string): HsmClient {
  const c = newClient(td);
  c.useToken(token);
  return c;
}

/** Login through the generated gRPC client, to hold the session token itself (the SDK never shows it). */
export function rawLogin(td: TestDaemon, username: string, password: string): Promise<Session> {
  const client = new UserServiceClient(td.grpc, grpc.credentials.createInsecure());
  return new Promise<Session>((resolve, reject) =>
    client.login({ username, password }, (err, s) => {
      client.close();
      if (err) reject(HsmClientError.from(err));
      else {
        tokensSeen.add(s.token);
        resolve(s);
      }
    }),
  );
}

import { expectError } from "./expect-error";
export { expectError };

/**
 * The first crypto officer, logged in: the one-time password changed to OFFICER_PASSWORD if that was
 * not done yet. One cached client per daemon endpoint (a restart gets a new one).
 */
export const officers = new Map<string, HsmClient>();
export async function officer(td: TestDaemon): Promise<HsmClient> {
  const cached = officers.get(td.grpc);
  if (cached) return cached;
  const c = newClient(td);
  const otpFile = firstOfficerPasswordFile(td.dataDir);
  if (existsSync(otpFile)) {
    const otp = readFileSync(otpFile, "utf8").trim();
    await c.login("admin", otp);
    await c.changePassword(otp, OFFICER_PASSWORD);
  } else {
    await c.login("admin", OFFICER_PASSWORD);
  }
  officers.set(td.grpc, c);
  return c;
}

/** Creates a user through the first crypto officer. */
export async function createUser(td: TestDaemon, username: string, role: Role = CU, password = USER_PASSWORD): Promise<void> {
  await (await officer(td)).createUser({ username, role, password });
}

/** Creates a crypto user and logs it in. */
export async function cuClient(td: TestDaemon, username: string): Promise<HsmClient> {
  await createUser(td, username);
  return login(td, username, USER_PASSWORD);
}

/** The compiled CLI (`npx tsc -p tsconfig.json`, as test/helpers/daemon-process.ts buildDist does), started early, awaited where needed. */
export function buildDist(): Promise<{ code: number | null; output: string }> {
  if (distIsFresh()) return Promise.resolve({ code: 0, output: "" });
  return new Promise((resolve) => {
    const child = spawn("npx", ["tsc", "-p", "tsconfig.json"], { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d: Buffer) => (output += d.toString()));
    child.stderr.on("data", (d: Buffer) => (output += d.toString()));
    child.on("error", (e) => resolve({ code: -1, output: String(e) }));
    child.on("close", (code) => resolve({ code, output }));
  });
}
/** The build of dist started by useBuiltDist. */
export let built: Promise<{ code: number | null; output: string }>;

/** Starts compiling dist before the calling file's tests (`built`, awaited where the CLI is run). */
export function useBuiltDist(): void {
  beforeAll(() => {
    built = buildDist();
  });
}

/** Closes the clients the calling file's tests opened through newClient, after them. */
export function useTrackedClients(): void {
  afterAll(() => {
    closeClients();
  });
}
