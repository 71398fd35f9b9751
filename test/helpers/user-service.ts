/**
 * Shared fixtures of the UserService unit tests (users.test.ts, users-sessions.test.ts): an embedded
 * store in a fresh directory per test, an injected clock, cheap scrypt parameters, and a service whose
 * first crypto officer is ready.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, expect } from "vitest";
import { Code } from "../../src/errors";
import { getJson, openEmbeddedStore, type EmbeddedStore } from "../../src/store";
import { UserService, type UserRecord, type UserServiceOptions } from "../../src/users";

/** Cheap scrypt parameters, for speed (the default is checked in its own test). */
export const SCRYPT = { N: 2 ** 10, r: 8, p: 1 };
/** The injected clock starts here for every test. */
export const T0 = 1_700_000_000_000;

/** This test's directory, store and clock (fresh for each test, see useUserStore). */
export let root: string;
export let dir: string;
export let store: EmbeddedStore;
export let t: number;
export const now = () => t;

/** A UserService on this test's store and clock. */
export function service(opts: Partial<UserServiceOptions> = {}): UserService {
  return new UserService({ store, now, scrypt: SCRYPT, ...opts });
}

/** Expects `p` to reject with `code` (and `message`, when given). */
export async function rejectsWith(p: Promise<unknown>, code: Code, message?: string | RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeDefined();
  expect((err as { code: unknown }).code).toBe(code);
  if (typeof message === "string") expect((err as Error).message).toBe(message);
  else if (message) expect((err as Error).message).toMatch(message);
}

/** The stored record of user `name`. */
export async function record(name: string): Promise<UserRecord | undefined> {
  return (await getJson<UserRecord>(store, `users/${name}`))?.value;
}

/** An initialized service whose first CO "admin" has changed its one-time password to `adminPw`. */
export const adminPw = "admin-password-1";
export async function ready(opts: Partial<UserServiceOptions> = {}): Promise<UserService> {
  const users = service(opts);
  const { oneTimePassword } = await users.initialize();
  const first = await users.login("admin", oneTimePassword);
  await users.changePassword(await users.authenticate(first.token), oneTimePassword, adminPw);
  return users;
}

/** (Re)opens the embedded store in `dir` as `store` (a test that closed it reopens it so). */
export async function openStore(): Promise<void> {
  store = await openEmbeddedStore(dir, { warn: () => undefined });
}

/** Moves the injected clock `t` forward by `ms`. */
export function advance(ms: number): void {
  t += ms;
}

/** Gives every test of the calling file a fresh store in a fresh directory and the clock at T0; closes and removes them after it. */
export function useUserStore(): void {
  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "hsmd-users-"));
    dir = join(root, "state");
    await openStore();
    t = T0;
  });
  afterEach(async () => {
    await store.close();
    rmSync(root, { recursive: true, force: true });
  });
}
