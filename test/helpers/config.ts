/**
 * Shared fixtures of the configuration unit tests (config.test.ts, config-auth-cluster.test.ts): a
 * fresh directory per test for config files, and helpers to write a config and collect its problems.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, expect } from "vitest";
import { ConfigError, type ConfigProblem } from "../../src/config";

/** The PIN given through the environment: it must never show in any output. */
export const SECRET = "s3cr3t-PIN-4242";
/** This test's own directory (fresh for each test, see useConfigDir). */
export let dir: string;

/** Gives every test of the calling file a fresh `dir`, removed after it. */
export function useConfigDir(): void {
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "hsmd-config-"));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });
}

/** Writes `doc` (JSON, or a string as is) into `dir` and returns its path. */
export function writeConfig(doc: unknown, name = "hsmd.json"): string {
  const file = join(dir, name);
  writeFileSync(file, typeof doc === "string" ? doc : JSON.stringify(doc));
  return file;
}

/** The problems of the ConfigError that `fn` throws (fails the test if it throws none). */
export function problemsOf(fn: () => unknown): ConfigProblem[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error("expected a ConfigError");
}

/** The environment that holds the PIN. */
export const env = { HSMD_PIN: SECRET };
/** Dev mode on the default loopback addresses: the TLS rules have their own file (config-tls.test.ts). */
export const minimal = () => ({ node: { dataDir: join(dir, "data") }, devMode: true });
