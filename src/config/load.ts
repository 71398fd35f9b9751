import { resolve } from "node:path";
import { compileConfig } from "./compile";
import { mergeConfig } from "./merge";
import { ConfigError } from "./problems";
import { readJsonFile } from "./profiles";
import type { Config } from "./types";

/** Options of {@link loadConfig}. */
export interface LoadConfigOptions {
  /** Path of the JSON config file. Without it the document is `overrides` alone. */
  file?: string;
  /** Environment for the PIN variable and `HSMD_CONFIG_DIR`. @default process.env */
  env?: NodeJS.ProcessEnv;
  /**
   * Deep-merged over the file's content before validation (tests: `{ listen: { grpc: "127.0.0.1:0" } }`).
   * Objects merge key by key; arrays, `device.pin` and the token selector (`tokenLabel`/`slot`) replace.
   */
  overrides?: object;
}

/**
 * Reads the config file (if any), merges `overrides` over it, validates, merges the device profile,
 * reads the PIN and returns the frozen {@link Config}. Every problem is reported at once in one
 * {@link ConfigError}; nothing partial is returned.
 */
export function loadConfig(opts: LoadConfigOptions = {}): Config {
  let doc: unknown = {};
  if (opts.file !== undefined) {
    const read = readJsonFile(resolve(opts.file));
    if ("error" in read) throw new ConfigError([{ path: "/", message: read.error }]);
    doc = read.value;
  }
  if (opts.overrides !== undefined) doc = mergeConfig(doc, opts.overrides);
  return compileConfig(doc, { env: opts.env, file: opts.file });
}
