/**
 * Passwords and PINs: from an environment variable, else typed at a prompt on the terminal without
 * echo. Never from a flag (flags land in shell history and `ps`), never printed.
 */
import { CliFailure, EXIT, UsageError } from "./errors";
import type { CliIo } from "./spec";

/** How to get one secret. */
export interface SecretSource {
  /** Environment variable that holds it (`HSMCTL_PASSWORD`). */
  envName: string;
  /** The prompt (`Password for alice: `). */
  prompt: string;
  /** Ask twice and compare (a new password). */
  confirm?: boolean;
  /** What it is, for messages (`the password`). */
  what: string;
}

/** The secret from the environment, else from a no-echo prompt when stdin is a terminal. */
export async function readSecret(io: CliIo, source: SecretSource): Promise<string> {
  const fromEnv = io.env[source.envName];
  if (fromEnv !== undefined && fromEnv !== "") {
    registerSecret(fromEnv);
    return fromEnv;
  }
  if (!io.stdin.isTTY || typeof io.stdin.setRawMode !== "function") {
    throw new UsageError(`${source.what} is needed: set ${source.envName}, or run hsmctl on a terminal to be asked for it (it is never a flag)`);
  }
  const first = await promptHidden(io, source.prompt);
  if (first === "") throw new UsageError(`${source.what} must not be empty`);
  registerSecret(first);
  if (source.confirm) {
    const again = await promptHidden(io, "Again: ");
    if (again !== first) throw new UsageError(`the two entries of ${source.what} differ`);
  }
  return first;
}

/**
 * Reads one line from the terminal in raw mode, echoing nothing: Enter ends it, Backspace deletes,
 * Ctrl-U clears, Ctrl-C interrupts (exit 130), Ctrl-D on an empty line gives up.
 */
export function promptHidden(io: CliIo, question: string): Promise<string> {
  const stdin = io.stdin;
  // Echo off before the prompt shows, so that nothing typed after seeing it is ever echoed.
  stdin.setRawMode!(true);
  io.stderr.write(question);
  return new Promise<string>((resolve, reject) => {
    let chars: string[] = [];
    const finish = (): void => {
      stdin.removeListener("data", onData);
      stdin.setRawMode!(false);
      stdin.pause();
      io.stderr.write("\n");
    };
    const onData = (chunk: Buffer | string): void => {
      for (const ch of typeof chunk === "string" ? chunk : chunk.toString("utf8")) {
        if (ch === "\r" || ch === "\n") {
          finish();
          resolve(chars.join(""));
          return;
        }
        if (ch === "\u0003") {
          finish();
          reject(new CliFailure(undefined, "interrupted", EXIT.INTERRUPTED));
          return;
        }
        if (ch === "\u0004") {
          if (chars.length === 0) {
            finish();
            reject(new UsageError("no input at the prompt"));
            return;
          }
          continue;
        }
        if (ch === "\u007f" || ch === "\b") chars.pop();
        else if (ch === "\u0015") chars = [];
        else if (ch >= " ") chars.push(ch);
      }
    };
    stdin.on("data", onData);
    stdin.resume();
  });
}

/** Every secret this process has seen (passwords, PINs, the session token), to keep them out of what it prints. */
const seen = new Set<string>();

/** Remembers a secret so that {@link redact} removes it from any text hsmctl prints. */
export function registerSecret(value: string): void {
  if (value.length >= 4) seen.add(value);
}

/** `text` with every registered secret replaced by `[redacted]` (a last line of defence). */
export function redact(text: string): string {
  let out = text;
  for (const s of seen) if (out.includes(s)) out = out.split(s).join("[redacted]");
  return out;
}
