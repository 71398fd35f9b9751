/**
 * Where hsmctl connects and how: endpoints, TLS and deadline from flags, then the environment
 * (`HSMCTL_*`), then a JSON config file; and the HsmClient made from them (the session calls whose
 * token is saved for later processes are in `session-calls.ts`).
 */
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { HsmClient, HsmClientError, type HsmClientTlsOptions } from "../sdk";
import { UsageError } from "./errors";
import { ioReason } from "./io";
import { stringValue, type OutputMode, type Values } from "./spec";

/** Everything needed to reach the daemons and keep the session, resolved from all sources. */
export interface Settings {
  endpoints: string[];
  /** Undefined: insecure plaintext (only with --insecure-plaintext, only to loopback). */
  tls: HsmClientTlsOptions | undefined;
  deadlineMs: number;
  sessionFile: string;
}

/** The config file's fields (all optional). */
interface ConfigFile {
  endpoints?: string[] | string;
  ca?: string;
  cert?: string;
  key?: string;
  serverName?: string;
  insecurePlaintext?: boolean;
  sessionFile?: string;
  output?: OutputMode;
  timeout?: number;
}

const CONFIG_FIELDS: Record<keyof ConfigFile, "string" | "boolean" | "number" | "strings"> = {
  endpoints: "strings",
  ca: "string",
  cert: "string",
  key: "string",
  serverName: "string",
  insecurePlaintext: "boolean",
  sessionFile: "string",
  output: "string",
  timeout: "number",
};

/** `$XDG_CONFIG_HOME/hsmctl`, else `~/.config/hsmctl`. */
export function configDir(env: NodeJS.ProcessEnv): string {
  const base = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), ".config");
  return join(base, "hsmctl");
}

/** The config file named by --config or HSMCTL_CONFIG (must exist), else the default one if it exists. */
export function loadConfigFile(values: Values, env: NodeJS.ProcessEnv): { path?: string; config: ConfigFile } {
  const named = stringValue(values, "config") ?? (env.HSMCTL_CONFIG || undefined);
  const path = named ?? join(configDir(env), "config.json");
  if (named === undefined && !existsSync(path)) return { config: {} };
  const flag = stringValue(values, "config") !== undefined ? "--config" : named !== undefined ? "HSMCTL_CONFIG" : "config file";
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${path}: ${ioReason(err)}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${flag}: ${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new UsageError(`${flag}: ${path} must hold a JSON object`);
  const problems: string[] = [];
  for (const [k, v] of Object.entries(doc)) {
    const kind = CONFIG_FIELDS[k as keyof ConfigFile];
    if (kind === undefined) problems.push(`unknown field ${JSON.stringify(k)} (known: ${Object.keys(CONFIG_FIELDS).join(", ")})`);
    else if (kind === "strings" ? !(typeof v === "string" || (Array.isArray(v) && v.every((e) => typeof e === "string"))) : typeof v !== kind) {
      problems.push(`${k}: must be ${kind === "strings" ? "a string or an array of strings" : `a ${kind}`}`);
    }
  }
  if (problems.length) throw new UsageError(`${flag}: ${path}: ${problems.join("; ")}`);
  // Paths in the file are relative to the file.
  const config = { ...(doc as ConfigFile) };
  for (const f of ["ca", "cert", "key", "sessionFile"] as const) {
    if (config[f] !== undefined) config[f] = resolve(dirname(path), config[f]!);
  }
  return { path, config };
}

/** --output, HSMCTL_OUTPUT, the config file's `output`, else text. */
export function resolveOutput(values: Values, env: NodeJS.ProcessEnv, config: ConfigFile): OutputMode {
  const raw = stringValue(values, "output") ?? (env.HSMCTL_OUTPUT || undefined) ?? config.output ?? "text";
  const v = raw.trim().toLowerCase();
  if (v !== "text" && v !== "json") throw new UsageError(`--output: must be text or json, not ${JSON.stringify(raw)}`);
  return v;
}

/** --session-file, HSMCTL_SESSION_FILE, the config file's `sessionFile`, else ~/.config/hsmctl/session.json. */
export function resolveSessionFile(values: Values, env: NodeJS.ProcessEnv, config: ConfigFile): string {
  const v = stringValue(values, "session-file") ?? (env.HSMCTL_SESSION_FILE || undefined) ?? config.sessionFile;
  return resolve(v ?? join(configDir(env), "session.json"));
}

function truthy(v: string | undefined): boolean {
  return v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
}

/**
 * Endpoints, TLS and deadline. Reads the TLS files; refuses plaintext to anything but loopback and
 * plaintext mixed with TLS files.
 */
export function resolveSettings(values: Values, env: NodeJS.ProcessEnv, config: ConfigFile, sessionFile: string): Settings {
  const flagEndpoints = ((values.endpoint as string[] | undefined) ?? []).flatMap((e) => e.split(","));
  const envEndpoints = (env.HSMCTL_ENDPOINTS ?? "").split(",");
  const configEndpoints = typeof config.endpoints === "string" ? config.endpoints.split(",") : (config.endpoints ?? []);
  const pick = (list: string[]) => list.map((e) => e.trim()).filter((e) => e !== "");
  const endpoints = [pick(flagEndpoints), pick(envEndpoints), pick(configEndpoints)].find((l) => l.length > 0) ?? [];
  if (endpoints.length === 0) {
    throw new UsageError("no endpoint: give --endpoint HOST:PORT, set HSMCTL_ENDPOINTS, or list endpoints in the config file");
  }
  const unique = [...new Set(endpoints)];

  const source = (flag: string, envName: string, fromConfig: string | undefined) =>
    stringValue(values, flag) !== undefined
      ? { value: stringValue(values, flag)!, from: `--${flag}` }
      : env[envName]
        ? { value: env[envName]!, from: envName }
        : fromConfig !== undefined
          ? { value: fromConfig, from: `config ${flag}` }
          : undefined;
  const ca = source("ca", "HSMCTL_CA", config.ca);
  const cert = source("cert", "HSMCTL_CERT", config.cert);
  const key = source("key", "HSMCTL_KEY", config.key);
  const serverName = source("server-name", "HSMCTL_SERVER_NAME", config.serverName);
  const insecure = values["insecure-plaintext"] === true || truthy(env.HSMCTL_INSECURE_PLAINTEXT) || config.insecurePlaintext === true;

  const timeoutRaw = stringValue(values, "timeout") ?? (env.HSMCTL_TIMEOUT || undefined) ?? (config.timeout !== undefined ? String(config.timeout) : "30");
  const timeout = Number(timeoutRaw);
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > 86_400) throw new UsageError(`--timeout: must be a number of seconds above 0, not ${JSON.stringify(timeoutRaw)}`);

  let tls: HsmClientTlsOptions | undefined;
  if (insecure) {
    const mixed = [ca, cert, key, serverName].filter((s) => s !== undefined).map((s) => s!.from);
    if (mixed.length) throw new UsageError(`--insecure-plaintext cannot be combined with TLS settings (${mixed.join(", ")})`);
    const remote = unique.filter((e) => !isLoopback(e));
    if (remote.length) {
      throw new UsageError(`--insecure-plaintext is only for a dev-mode daemon on loopback (127.0.0.1, ::1, localhost), not ${remote.join(", ")}`);
    }
  } else {
    if ((cert === undefined) !== (key === undefined)) throw new UsageError("--cert and --key go together (mutual TLS)");
    tls = {
      ...(ca ? { ca: readPem(ca.value, ca.from) } : {}),
      ...(cert ? { cert: readPem(cert.value, cert.from) } : {}),
      ...(key ? { key: readPem(key.value, key.from) } : {}),
      ...(serverName ? { serverNameOverride: serverName.value } : {}),
    };
  }
  return { endpoints: unique, tls, deadlineMs: Math.round(timeout * 1000), sessionFile };
}

function readPem(path: string, from: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw new UsageError(`${from}: cannot read ${path}: ${ioReason(err)}`);
  }
  if (!data.toString("latin1").includes("-----BEGIN ")) throw new UsageError(`${from}: ${path} is not a PEM file`);
  return data;
}

/** True for `localhost`, 127.0.0.0/8 and [::1] endpoints. */
export function isLoopback(endpoint: string): boolean {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):\d+$/.exec(endpoint.trim());
  const host = (m?.[1] ?? m?.[2] ?? "").toLowerCase();
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** An HsmClient over the settings (UsageError for endpoints the SDK refuses). */
export function makeClient(settings: Settings): HsmClient {
  try {
    return new HsmClient({
      endpoints: settings.endpoints,
      ...(settings.tls ? { tls: settings.tls } : {}),
      defaultDeadlineMs: settings.deadlineMs,
    });
  } catch (err) {
    const e = HsmClientError.from(err);
    throw new UsageError(e.details.replace(/^invalid HsmClientOptions: /, "").replace(/\bendpoints\[\d+\]/g, "--endpoint"));
  }
}
