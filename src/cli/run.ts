/**
 * hsmctl's runner: finds the command in argv, parses its flags, resolves settings, runs it, and turns
 * every failure into a message on stderr and an exit code (0 success, 1 failure or server error,
 * 2 usage, 130 interrupted).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { GrpcStatus, HsmClientError, type HsmClient } from "../sdk";
import { loadConfigFile, makeClient, resolveOutput, resolveSessionFile, resolveSettings, type Settings } from "./connection";
import { CliFailure, EXIT, UsageError } from "./errors";
import { redact, registerSecret } from "./secrets";
import { requireSession, type SavedSession } from "./session";
import { commandHelp, commandName, globalHelp, nounHelp, parseValues, splitWords, usageLine, type CliIo, type CommandContext, type CommandSpec, type OutputMode, type Values } from "./spec";
import { auditCommands } from "./commands/audit";
import { clusterCommands } from "./commands/cluster";
import { cryptoCommands } from "./commands/crypto";
import { keyCommands } from "./commands/key";
import { keyVersionCommands } from "./commands/key-versions";
import { quorumCommands } from "./commands/quorum";
import { sessionCommands } from "./commands/session";
import { userCommands } from "./commands/user";

/** Every command, in the order `hsmctl --help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [
  ...sessionCommands,
  ...userCommands,
  ...keyCommands,
  ...keyVersionCommands,
  ...cryptoCommands,
  ...quorumCommands,
  ...clusterCommands,
  ...auditCommands,
];

const NOUNS = new Set(COMMANDS.filter((c) => c.words.length === 2).map((c) => c.words[0]));

/** hsmctl's version: the package's. */
function version(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const file = join(dir, "package.json");
    if (existsSync(file)) {
      try {
        const pkg = JSON.parse(readFileSync(file, "utf8")) as { name?: string; version?: string };
        if (pkg.name === "hsmd") return pkg.version ?? "unknown";
      } catch {
        // keep looking
      }
    }
    dir = dirname(dir);
  }
  return "unknown";
}

function find(words: string[]): CommandSpec | undefined {
  return COMMANDS.find((c) => c.words.length === words.length && c.words.every((w, i) => w === words[i]));
}

/** Runs hsmctl with `argv` (without `node` and the script) and returns the exit code. */
export async function runHsmctl(argv: readonly string[], io: CliIo): Promise<number> {
  const err = (text: string): void => {
    io.stderr.write(redact(text));
  };
  const out = (text: string): void => {
    io.stdout.write(redact(text));
  };

  const { words, rest } = splitWords(argv, (w) => NOUNS.has(w) || w === "help");

  // `hsmctl help [NOUN [VERB]]`
  if (words[0] === "help") {
    const topic = [...words.slice(1), ...rest.filter((a) => !a.startsWith("-"))];
    const spec = find(topic);
    if (spec) out(commandHelp(spec));
    else if (topic.length === 1 && NOUNS.has(topic[0]!)) out(nounHelp(topic[0]!, COMMANDS));
    else if (topic.length === 0) out(globalHelp(COMMANDS));
    else {
      err(`error: unknown command "${topic.join(" ")}"\nrun "hsmctl --help" for the list of commands\n`);
      return EXIT.USAGE;
    }
    return EXIT.OK;
  }

  const spec = find(words);
  if (spec === undefined) {
    let globals: Values;
    try {
      globals = parseValues(rest, {});
    } catch (e) {
      globals = {};
      if (words.length === 0) {
        err(`error: ${(e as Error).message}\nrun "hsmctl --help" for usage\n`);
        return EXIT.USAGE;
      }
    }
    if (words.length === 0) {
      if (globals.version) {
        out(`hsmctl ${version()}\n`);
        return EXIT.OK;
      }
      if (globals.help) {
        out(globalHelp(COMMANDS));
        return EXIT.OK;
      }
      err(`error: missing command\n${globalHelp(COMMANDS)}`);
      return EXIT.USAGE;
    }
    const noun = words[0]!;
    if (NOUNS.has(noun)) {
      if (words.length === 1 && globals.help) {
        out(nounHelp(noun, COMMANDS));
        return EXIT.OK;
      }
      const why = words.length === 1 ? `"hsmctl ${noun}" needs a verb` : `unknown command "hsmctl ${words.join(" ")}"`;
      err(`error: ${why}\n${nounHelp(noun, COMMANDS)}`);
      return EXIT.USAGE;
    }
    err(`error: unknown command "${noun}"\nrun "hsmctl --help" for the list of commands\n`);
    return EXIT.USAGE;
  }

  const usage = (message: string): number => {
    err(`error: ${message}\n${usageLine(spec)}\nrun "${commandName(spec)} --help" for details\n`);
    return EXIT.USAGE;
  };

  let values: Values;
  try {
    values = parseValues(rest, spec.options);
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message);
    throw e;
  }
  if (values.help) {
    out(commandHelp(spec));
    return EXIT.OK;
  }
  if (values.version) {
    out(`hsmctl ${version()}\n`);
    return EXIT.OK;
  }

  let output: OutputMode;
  let sessionFile: string;
  let settingsOf: () => Settings;
  try {
    const { config } = loadConfigFile(values, io.env);
    output = resolveOutput(values, io.env, config);
    sessionFile = resolveSessionFile(values, io.env, config);
    let settings: Settings | undefined;
    settingsOf = () => (settings ??= resolveSettings(values, io.env, config, sessionFile));
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message);
    throw e;
  }

  let client: HsmClient | undefined;
  let session: SavedSession | undefined;
  const ctx: CommandContext = {
    io,
    output,
    sessionFile,
    settings: settingsOf,
    session: () => {
      if (session === undefined) {
        session = requireSession(sessionFile);
        registerSecret(session.token);
      }
      return session;
    },
    client: () => {
      if (client === undefined) {
        const s = ctx.session();
        const c = makeClient(ctx.settings());
        // No expiry given: the SDK must not refresh the token on its own, as a refreshed token would
        // revoke the one in the session file that other hsmctl processes may be using ("hsmctl
        // refresh" does it on request).
        c.useToken(s.token);
        client = c;
      }
      return client;
    },
    emit: (json, text) => {
      if (output === "json") {
        out(`${JSON.stringify(json, jsonReplacer, 2)}\n`);
        return;
      }
      const t = typeof text === "function" ? text() : text;
      if (t !== "") out(t.endsWith("\n") ? t : `${t}\n`);
    },
    note: (message) => err(`hsmctl: ${message}\n`),
  };

  try {
    const code = await spec.run(ctx, values);
    return code ?? EXIT.OK;
  } catch (e) {
    if (e instanceof UsageError) return usage(e.message);
    if (e instanceof CliFailure) {
      err(`error: ${e.codeName ? `${e.codeName}: ` : ""}${e.message}\n`);
      return e.exitCode;
    }
    if (e instanceof HsmClientError) {
      const lines = [`error: ${e.codeName}: ${e.details || e.message}`];
      const quorumId = e.quorumRequestId;
      if (quorumId) {
        lines.push(`quorum request ${quorumId} recorded: once enough crypto officers ran "hsmctl quorum approve --id ${quorumId}", run this command again with --quorum-request-id ${quorumId}`);
      }
      if (e.code === GrpcStatus.UNAUTHENTICATED && session !== undefined) {
        lines.push(`the saved session of ${session.username} is no longer valid: run "hsmctl login --username ${session.username}" again`);
      }
      err(`${lines.join("\n")}\n`);
      return EXIT.FAILURE;
    }
    err(`error: ${(e as Error)?.message ?? String(e)}\n`);
    return EXIT.FAILURE;
  } finally {
    client?.close();
  }
}

/** JSON.stringify replacer: bigint counters as numbers. */
function jsonReplacer(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? Number(value) : value;
}
