/**
 * hsmctl, the command-line client of hsmd: {@link runHsmctl} runs one command line against the
 * streams and environment it is given; `main.ts` is the executable.
 */
export { runHsmctl, COMMANDS } from "./run";
export { EXIT, CliFailure, UsageError } from "./errors";
export type { CliIo, CommandSpec, OptionSpec } from "./spec";
export { promptHidden } from "./secrets";
