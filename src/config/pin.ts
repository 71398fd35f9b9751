import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import type { ConfigProblem, PinSource } from "./types";

/**
 * Reads the user PIN from its source: an environment variable (unset or empty is an error) or a file
 * (one trailing newline trimmed; missing, unreadable or empty is an error). Relative file paths are
 * taken from `baseDir` (the config file's directory). Problems never include the PIN or file contents.
 */
export function resolvePin(source: PinSource, env: NodeJS.ProcessEnv, baseDir: string): { pin: string; source: PinSource } | { problem: ConfigProblem } {
  if ("env" in source) {
    const value = env[source.env];
    if (value === undefined) return { problem: { path: "/device/pin/env", message: `environment variable ${source.env} is not set` } };
    if (value === "") return { problem: { path: "/device/pin/env", message: `environment variable ${source.env} is empty` } };
    return { pin: value, source: { env: source.env } };
  }
  const file = isAbsolute(source.file) ? source.file : resolve(baseDir, source.file);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    const why = code === "ENOENT" ? "does not exist" : code === "EACCES" ? "is not readable" : code === "EISDIR" ? "is a directory" : `cannot be read (${code})`;
    return { problem: { path: "/device/pin/file", message: `PIN file ${file} ${why}` } };
  }
  const pin = text.replace(/\r?\n$/, "");
  if (pin === "") return { problem: { path: "/device/pin/file", message: `PIN file ${file} is empty` } };
  return { pin, source: { file } };
}
