#!/usr/bin/env node
/**
 * hsmctl: the command-line client of hsmd. `hsmctl --help` lists the commands; every command
 * documents itself with `--help`.
 */
import { runHsmctl } from "./run";

// A closed pipe on stdout (`hsmctl … | head`) ends the program quietly.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

runHsmctl(process.argv.slice(2), { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env }).then(
  (code) => {
    process.exitCode = code;
    // Everything is closed by now; should a handle linger, do not hang.
    setTimeout(() => process.exit(code), 3_000).unref();
  },
  (err: unknown) => {
    process.stderr.write(`error: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
