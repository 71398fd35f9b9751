/**
 * Initializes a PKCS#11 token (SoftHSM2 in development) with its PINs read from files, so that no
 * PIN is ever on a command line: `softhsm2-util --init-token --pin … --so-pin …` shows both in
 * /proc/<pid>/cmdline to every local user while it runs. scripts/dev-token.sh, scripts/cluster.sh and
 * the benchmarks use it; the PKCS#11 steps are src/pkcs11/init-token.ts.
 *
 *   node dist/scripts/init-token.js --label LABEL --pin-file FILE --so-pin-file FILE [--module PATH]
 *
 * A PIN file holds the PIN, a trailing newline allowed. --module defaults to $SOFTHSM2_MODULE, else
 * Debian's /usr/lib/softhsm/libsofthsm2.so; SoftHSM2 finds its token directory through
 * SOFTHSM2_CONF. Prints one line naming the token. Exit status: 0 initialized, 1 refused or failed
 * (why on stderr, never a PIN), 2 usage.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { initToken } from "../src/pkcs11";

const USAGE = "usage: node dist/scripts/init-token.js --label LABEL --pin-file FILE --so-pin-file FILE [--module PATH]\n";
const DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so";

class UsageError extends Error {}

/** The PIN in `file` (one trailing newline removed); UsageError naming the flag when unreadable or empty. */
function readPin(file: string, flag: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new UsageError(`${flag}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const pin = text.replace(/\r?\n$/, "");
  if (!pin) throw new UsageError(`${flag}: ${file} is empty`);
  return pin;
}

function main(): number {
  let opts: { module: string; label: string; soPin: string; userPin: string };
  try {
    const { values } = parseArgs({
      options: {
        label: { type: "string" },
        "pin-file": { type: "string" },
        "so-pin-file": { type: "string" },
        module: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      process.stdout.write(USAGE);
      return 0;
    }
    const missing = (["label", "pin-file", "so-pin-file"] as const).filter((k) => values[k] === undefined);
    if (missing.length) throw new UsageError(`missing ${missing.map((m) => `--${m}`).join(", ")}`);
    opts = {
      module: values.module ?? (process.env.SOFTHSM2_MODULE || DEFAULT_MODULE),
      label: values.label!,
      userPin: readPin(values["pin-file"]!, "--pin-file"),
      soPin: readPin(values["so-pin-file"]!, "--so-pin-file"),
    };
  } catch (e) {
    process.stderr.write(`init-token: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  try {
    const t = initToken(opts);
    process.stdout.write(`initialized token "${t.label}" (serial ${t.serial})\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`init-token: ${(e as Error).message}\n`);
    return 1;
  }
}

/**
 * Runs this script as a child process (for the benchmarks, which make several tokens, each with its
 * own SOFTHSM2_CONF in `env`): only paths in its argv. Throws with its stderr when it fails.
 */
export function initTokenFromFiles(env: NodeJS.ProcessEnv, label: string, pinFile: string, soPinFile: string): void {
  execFileSync(process.execPath, [__filename, "--label", label, "--pin-file", pinFile, "--so-pin-file", soPinFile], { env, stdio: ["ignore", "ignore", "pipe"] });
}

if (require.main === module) process.exitCode = main();
