import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Where Debian's softhsm2 package puts the module. */
export const SOFTHSM_MODULE = process.env.SOFTHSM2_MODULE ?? "/usr/lib/softhsm/libsofthsm2.so";

export interface TempToken {
  dir: string;
  conf: string;
  label: string;
  pin: string;
  soPin: string;
  cleanup(): void;
}

/**
 * A fresh SoftHSM2 token in its own directory, selected for this process through SOFTHSM2_CONF
 * (set before the module is loaded: SoftHSM reads it at C_Initialize). The PINs are random per test.
 */
export function createTempToken(label = "hsmd-test"): TempToken {
  const dir = mkdtempSync(join(tmpdir(), "hsmd-token-"));
  const tokens = join(dir, "tokens");
  mkdirSync(tokens);
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const pin = `pin-${Math.random().toString(36).slice(2, 10)}`;
  const soPin = `so-${Math.random().toString(36).slice(2, 10)}`;
  execFileSync("softhsm2-util", ["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPin], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: "pipe",
  });
  process.env.SOFTHSM2_CONF = conf;
  return { dir, conf, label, pin, soPin, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs pkcs11-tool (Debian opensc) against a temp token, as an independent view of what it holds. */
export function pkcs11Tool(token: TempToken, args: string[]): string {
  return execFileSync("pkcs11-tool", ["--module", SOFTHSM_MODULE, "--token-label", token.label, "--login", "--pin", token.pin, ...args], {
    env: { ...process.env, SOFTHSM2_CONF: token.conf },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}
