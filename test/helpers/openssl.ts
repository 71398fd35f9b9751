import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Runs the openssl CLI in a scratch directory holding `files`; returns stdout and the files after. */
export function openssl(args: (dir: string) => string[], files: Record<string, Buffer | string> = {}): { stdout: Buffer; read(name: string): Buffer; ok: boolean } {
  const dir = mkdtempSync(join(tmpdir(), "hsmd-openssl-"));
  try {
    for (const [n, c] of Object.entries(files)) writeFileSync(join(dir, n), c);
    let stdout: Buffer;
    let ok = true;
    try {
      stdout = execFileSync("openssl", args(dir), { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      ok = false;
      stdout = (e as { stdout?: Buffer }).stdout ?? Buffer.alloc(0);
    }
    const snapshot = new Map<string, Buffer>();
    for (const f of require("node:fs").readdirSync(dir) as string[]) snapshot.set(f, readFileSync(join(dir, f)));
    return { stdout, ok, read: (n) => snapshot.get(n)! };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
