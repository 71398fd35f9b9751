import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { checkSchema } from "./validator";
import type { ConfigProblem, ProfileName } from "./types";

/** Environment variable that points at another directory of device profiles. */
export const CONFIG_DIR_ENV = "HSMD_CONFIG_DIR";

/**
 * The directory holding the device profiles: `$HSMD_CONFIG_DIR` when set, else the `hsm-config/`
 * found walking up from this file, which works from `src/config/` (tsx, vitest) and from
 * `dist/src/config/` (after tsc) alike.
 */
export function findProfileDir(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const fromEnv = env[CONFIG_DIR_ENV];
  if (fromEnv) return resolve(fromEnv);
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const candidate = join(dir, "hsm-config");
    if (existsSync(candidate) && statSync(candidate).isDirectory()) return candidate;
    if (dirname(dir) === dir) return undefined;
  }
}

/** A profile as read from its file: the device defaults for one kind of device. */
export type RawProfile = Record<string, unknown>;

/** Reads and checks `hsm-config/<name>.json`. Problems are reported at `/device/profile`. */
export function readProfile(name: ProfileName, env: NodeJS.ProcessEnv): { file: string; profile?: RawProfile; problems: ConfigProblem[] } {
  const dir = findProfileDir(env);
  if (dir === undefined) {
    return {
      file: "",
      problems: [{ path: "/device/profile", message: `no hsm-config directory found above ${__dirname}; set ${CONFIG_DIR_ENV}` }],
    };
  }
  const file = join(dir, `${name}.json`);
  const parsed = readJsonFile(file);
  if ("error" in parsed) {
    return { file, problems: [{ path: "/device/profile", message: `profile "${name}": ${parsed.error}` }] };
  }
  const problems = checkSchema("profile", parsed.value).map((p) => ({
    path: "/device/profile",
    message: `profile "${name}" (${file}) at ${p.path || "/"}: ${p.message}`,
  }));
  return problems.length ? { file, problems } : { file, profile: parsed.value as RawProfile, problems };
}

/**
 * Reads a JSON file. Errors say what went wrong and where (line and column) but never quote the
 * text, which could hold a secret.
 */
export function readJsonFile(file: string): { value: unknown } | { error: string } {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    return { error: `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? "error"})` };
  }
  try {
    return { value: JSON.parse(text) };
  } catch (err) {
    const pos = /position (\d+)/.exec((err as Error).message);
    if (!pos) return { error: `${file} is not valid JSON` };
    const before = text.slice(0, Number(pos[1]));
    const line = before.split("\n").length;
    const column = before.length - before.lastIndexOf("\n");
    return { error: `${file} is not valid JSON (line ${line}, column ${column})` };
  }
}
