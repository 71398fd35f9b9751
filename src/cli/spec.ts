/**
 * The shape of an hsmctl command (its words, flags, environment and help text), the global options
 * every command takes, argument parsing with node:util's parseArgs, and the help and usage text made
 * from the same table, so that what `--help` says and what the parser accepts never drift apart.
 */
import { parseArgs } from "node:util";
import type { HsmClient } from "../sdk";
import { UsageError } from "./errors";
import type { Settings } from "./connection";
import type { SavedSession } from "./session";

/** One flag of a command. */
export interface OptionSpec {
  type: "string" | "boolean";
  /** May be given several times (values collected in order). */
  multiple?: boolean;
  short?: string;
  /** The value's placeholder in usage lines (`FILE`, `ID`); string options only. */
  arg?: string;
  /** One line (or a few) for `--help`. */
  description: string;
  /** Shown in the usage line without brackets; checked by {@link requireString}. */
  required?: boolean;
}

/** Flags by long name (without the dashes). */
export type OptionSpecs = Record<string, OptionSpec>;

/** Parsed flag values by long name. */
export type Values = Record<string, string | boolean | string[] | undefined>;

/** What the output of a command is rendered as (`--output`). */
export type OutputMode = "text" | "json";

/** Streams and environment of one run (process.* in the real program). */
export interface CliIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  env: NodeJS.ProcessEnv;
}

/** What a command's `run` gets besides its flag values. */
export interface CommandContext {
  io: CliIo;
  output: OutputMode;
  /** The session file's path (--session-file, HSMCTL_SESSION_FILE, the config file, the default). */
  sessionFile: string;
  /** Resolved endpoints, TLS, deadline and session file (read on first use; UsageError without an endpoint). */
  settings(): Settings;
  /** The saved session (UNAUTHENTICATED failure when there is none or it expired). */
  session(): SavedSession;
  /** An HsmClient over the settings carrying the saved session (closed by the runner). */
  client(): HsmClient;
  /** Prints a result: `json` as JSON with --output json, else `text` (a trailing newline is added when missing). */
  emit(json: unknown, text: string | (() => string)): void;
  /** A note for a person on stderr (`hsmctl: …`), in both output modes. */
  note(message: string): void;
}

/** One command: `login`, or a noun and a verb (`key list`). */
export interface CommandSpec {
  words: readonly [string] | readonly [string, string];
  /** One line for the command lists. */
  summary: string;
  /** Paragraphs for `--help`. */
  details?: string;
  options: OptionSpecs;
  /** Environment variables the command reads, with what for. */
  env?: Record<string, string>;
  examples?: readonly string[];
  /** False for commands that need no saved session (login, whoami, help, offline checks). Default true. */
  needsSession?: boolean;
  run(ctx: CommandContext, values: Values): Promise<number | void>;
}

/** Flags every command takes, before or after the command words. */
export const GLOBAL_OPTIONS: OptionSpecs = {
  endpoint: {
    type: "string",
    multiple: true,
    arg: "HOST:PORT",
    description: "daemon to call; repeat (or give a comma list) for the members of a cluster (env HSMCTL_ENDPOINTS)",
  },
  ca: { type: "string", arg: "FILE", description: "PEM CA certificate(s) of the daemons' TLS certificates (env HSMCTL_CA; default: system roots)" },
  cert: { type: "string", arg: "FILE", description: "PEM client certificate, for mutual TLS (env HSMCTL_CERT)" },
  key: { type: "string", arg: "FILE", description: "PEM private key of --cert (env HSMCTL_KEY)" },
  "server-name": { type: "string", arg: "NAME", description: "name to check the server certificate against instead of the endpoint's host (env HSMCTL_SERVER_NAME)" },
  "insecure-plaintext": {
    type: "boolean",
    description: "speak plaintext gRPC, only to a daemon in dev mode on loopback (env HSMCTL_INSECURE_PLAINTEXT=1)",
  },
  config: { type: "string", arg: "FILE", description: "config file (env HSMCTL_CONFIG; default ~/.config/hsmctl/config.json when it exists)" },
  "session-file": { type: "string", arg: "FILE", description: "where the session is kept (env HSMCTL_SESSION_FILE; default ~/.config/hsmctl/session.json)" },
  output: { type: "string", short: "o", arg: "FORMAT", description: "text (default) or json (env HSMCTL_OUTPUT)" },
  timeout: { type: "string", arg: "SECONDS", description: "deadline of each call to the daemon (env HSMCTL_TIMEOUT; default 30)" },
  help: { type: "boolean", short: "h", description: "show help (of the command, when one is given) and exit" },
  version: { type: "boolean", description: "print hsmctl's version and exit" },
};

/** Global flags that take a value, for finding the command words among them. */
const GLOBAL_VALUE_FLAGS = new Set(Object.entries(GLOBAL_OPTIONS).flatMap(([name, o]) => (o.type === "string" ? [`--${name}`, ...(o.short ? [`-${o.short}`] : [])] : [])));

/**
 * Splits argv into the command words (the first one or two arguments that are not flags, global
 * flags and their values allowed before them) and the rest, which parseArgs then reads. Stops at the
 * first flag that is not global: what follows belongs to the command.
 */
export function splitWords(argv: readonly string[], isNoun: (word: string) => boolean): { words: string[]; rest: string[] } {
  const words: string[] = [];
  const rest: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      rest.push(...argv.slice(i));
      return { words, rest };
    }
    if (arg.startsWith("-") && arg !== "-") {
      const name = arg.includes("=") ? arg.slice(0, arg.indexOf("=")) : arg;
      if (GLOBAL_VALUE_FLAGS.has(name) && !arg.includes("=")) {
        rest.push(arg);
        if (i + 1 < argv.length) rest.push(argv[++i]!);
        continue;
      }
      if (isGlobalFlag(name)) {
        rest.push(arg);
        continue;
      }
      break; // the command's own flags from here
    }
    if (words.length === 0 || (words.length === 1 && isNoun(words[0]!))) {
      words.push(arg);
      continue;
    }
    break;
  }
  rest.push(...argv.slice(i));
  return { words, rest };
}

function isGlobalFlag(name: string): boolean {
  return Object.entries(GLOBAL_OPTIONS).some(([long, o]) => name === `--${long}` || (o.short !== undefined && name === `-${o.short}`));
}

/** Parses a command's flags together with the global ones; UsageError on anything unknown or malformed. */
export function parseValues(args: readonly string[], options: OptionSpecs): Values {
  const all: OptionSpecs = { ...GLOBAL_OPTIONS, ...options };
  const config: Record<string, { type: "string" | "boolean"; multiple?: boolean; short?: string }> = {};
  for (const [name, o] of Object.entries(all)) {
    config[name] = { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options: config, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(parseArgsMessage(err));
  }
  if (parsed.positionals.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[0])}: every input is a flag (see --help)`);
  }
  const values = { ...parsed.values } as Values;
  // A single-valued flag given twice is most likely a mistake: parseArgs keeps the last silently.
  for (const [name, o] of Object.entries(all)) {
    if (o.multiple) continue;
    const count = args.filter((a) => a === `--${name}` || a.startsWith(`--${name}=`) || (o.short !== undefined && a === `-${o.short}`)).length;
    if (count > 1) throw new UsageError(`--${name} given ${count} times: give it once`);
  }
  return values;
}

/** parseArgs' messages, shortened to what a person needs. */
function parseArgsMessage(err: unknown): string {
  const e = err as { code?: string; message?: string };
  const message = String(e.message ?? err);
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const m = /Unknown option '([^']+)'/.exec(message);
    return `unknown option ${m ? m[1] : message}`;
  }
  if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    const m = /Option '([^']+)'/.exec(message);
    if (/argument missing/.test(message) && m) return `${m[1]!.replace(/ <value>$/, "")} needs a value`;
    if (/does not take an argument/.test(message) && m) return `${m[1]} takes no value`;
    if (/ambiguous/.test(message) && m) return `${m[1]!.replace(/ <value>$/, "")}: a value starting with "-" must be given as --flag=VALUE`;
  }
  return message.split("\n")[0]!;
}

/** The value of a string flag, or undefined. */
export function stringValue(values: Values, name: string): string | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw new UsageError(`--${name}: expected one value`);
  return v;
}

/** The value of a required string flag (UsageError when missing or empty). */
export function requireString(values: Values, name: string): string {
  const v = stringValue(values, name);
  if (v === undefined) throw new UsageError(`--${name} is required`);
  if (v.trim() === "") throw new UsageError(`--${name} must not be empty`);
  return v;
}

/** The values of a repeatable flag, comma lists split ([] when absent). */
export function listValue(values: Values, name: string, splitCommas = true): string[] {
  const v = values[name];
  const list = v === undefined ? [] : Array.isArray(v) ? v : [String(v)];
  return splitCommas
    ? list
        .flatMap((s) => s.split(","))
        .map((s) => s.trim())
        .filter((s) => s !== "")
    : list;
}

/** A non-negative integer flag within bounds, or `fallback` when absent. */
export function intValue(values: Values, name: string, fallback: number, min: number, max: number): number {
  const v = stringValue(values, name);
  if (v === undefined) return fallback;
  if (!/^\d+$/.test(v.trim())) throw new UsageError(`--${name}: must be a whole number, not ${JSON.stringify(v)}`);
  const n = Number(v.trim());
  if (n < min || n > max) throw new UsageError(`--${name}: must be from ${min} to ${max}, not ${n}`);
  return n;
}

/** One of a fixed set of words (`--format pem|der|jwk`), or `fallback` when absent. */
export function choiceValue<T extends string>(values: Values, name: string, choices: readonly T[], fallback?: T): T {
  const v = stringValue(values, name);
  if (v === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required (one of: ${choices.join(", ")})`);
    return fallback;
  }
  const lower = v.trim().toLowerCase() as T;
  if (!choices.includes(lower)) throw new UsageError(`--${name}: must be one of ${choices.join(", ")}, not ${JSON.stringify(v)}`);
  return lower;
}

// ---- help ----

/** `hsmctl key list` */
export function commandName(spec: CommandSpec): string {
  return `hsmctl ${spec.words.join(" ")}`;
}

function optionLabel(name: string, o: OptionSpec): string {
  const flag = `--${name}${o.type === "string" ? ` ${o.arg ?? "VALUE"}` : ""}`;
  return o.short ? `-${o.short}, ${flag}` : flag;
}

/** The one-line usage of a command. */
export function usageLine(spec: CommandSpec): string {
  const parts = Object.entries(spec.options).map(([name, o]) => {
    const flag = `--${name}${o.type === "string" ? ` ${o.arg ?? "VALUE"}` : ""}`;
    const item = o.required ? flag : `[${flag}]`;
    return o.multiple ? `${item}...` : item;
  });
  return `usage: ${commandName(spec)}${parts.length ? ` ${parts.join(" ")}` : ""} [global options]`;
}

function table(rows: [string, string][], indent = "  "): string {
  const width = Math.min(34, Math.max(0, ...rows.map(([a]) => a.length)));
  return rows
    .map(([a, b]) => {
      const lines = b.split("\n");
      const head = a.length > width ? `${indent}${a}\n${indent}${" ".repeat(width)}  ${lines[0]}` : `${indent}${a.padEnd(width)}  ${lines[0]}`;
      return [head, ...lines.slice(1).map((l) => `${indent}${" ".repeat(width)}  ${l}`)].join("\n");
    })
    .join("\n");
}

/** `hsmctl <command> --help`. */
export function commandHelp(spec: CommandSpec): string {
  const out: string[] = [usageLine(spec), "", spec.summary];
  if (spec.needsSession !== false) out.push('Needs a session: run "hsmctl login" first.');
  if (spec.details) out.push("", spec.details.trim());
  const rows = Object.entries(spec.options).map(([name, o]) => [optionLabel(name, o), o.description] as [string, string]);
  if (rows.length) out.push("", "options:", table(rows));
  if (spec.env && Object.keys(spec.env).length) out.push("", "environment:", table(Object.entries(spec.env)));
  if (spec.examples?.length) out.push("", "examples:", ...spec.examples.map((e) => `  ${e}`));
  out.push("", "global options (before or after the command words):", table(Object.entries(GLOBAL_OPTIONS).map(([n, o]) => [optionLabel(n, o), o.description])));
  return `${out.join("\n")}\n`;
}

/** Exit status and shared environment, for the top-level help. */
const FOOTER = `environment:
  HSMCTL_ENDPOINTS, HSMCTL_CA, HSMCTL_CERT, HSMCTL_KEY, HSMCTL_SERVER_NAME, HSMCTL_INSECURE_PLAINTEXT,
  HSMCTL_CONFIG, HSMCTL_SESSION_FILE, HSMCTL_OUTPUT, HSMCTL_TIMEOUT
                          the global options' defaults (a flag wins over the environment, which wins
                          over the config file)
  HSMCTL_PASSWORD         the password of login (and the current one of user change-password);
                          without it hsmctl prompts on the terminal. Passwords are never flags.
  HSMCTL_NEW_PASSWORD     the new password of user create, user change-password, user reset-password
  HSMCTL_SO_PIN           the security-officer PIN of cluster approve

config file (JSON): {"endpoints": ["h1:7443", "h2:7443"], "ca": "ca.pem", "cert": "…", "key": "…",
  "serverName": "…", "insecurePlaintext": false, "sessionFile": "…", "output": "text", "timeout": 30}
  (relative paths are relative to the file)

exit status: 0 success; 1 the server answered an error (printed as "error: STATUS: message"), the
  session is missing or expired, or the answer is negative (signature invalid, audit chain broken,
  envelope not authentic); 2 a usage or input error found before calling the server; 130 interrupted.
`;

/** `hsmctl --help`: every command with its summary. */
export function globalHelp(commands: readonly CommandSpec[]): string {
  const rows = commands.map((c) => [c.words.join(" "), c.summary] as [string, string]);
  return `hsmctl: the command-line client of hsmd (keys, crypto, users, quorum, cluster and audit over gRPC)

usage: hsmctl [global options] COMMAND [options]
       hsmctl COMMAND --help        (every command documents its flags)

commands:
${table(rows)}

global options (before or after the command words):
${table(Object.entries(GLOBAL_OPTIONS).map(([n, o]) => [optionLabel(n, o), o.description]))}

${FOOTER}`;
}

/** `hsmctl key --help`: the verbs of one noun. */
export function nounHelp(noun: string, commands: readonly CommandSpec[]): string {
  const mine = commands.filter((c) => c.words[0] === noun && c.words.length === 2);
  return `usage: hsmctl ${noun} VERB [options]   (hsmctl ${noun} VERB --help for a verb's flags)

verbs:
${table(mine.map((c) => [c.words[1]!, c.summary]))}
`;
}
