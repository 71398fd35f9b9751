import { createHash } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import type { SessionWorkerData } from "./worker-protocol";

/**
 * Starts one session worker (session-worker.ts) wherever the code runs from. The daemon runs from
 * dist/, where tsc compiled the entry beside this file: the Worker loads that .js. Tests run the
 * TypeScript sources through vitest, which does not transform a Worker's file (vitest issue #5757):
 * there the entry is transpiled with TypeScript's transpileModule (a devDependency, present
 * wherever the .ts sources are; the output kept in the temp directory by the source's hash) and
 * started as an eval'd CommonJS script
 * whose `require` resolves from the entry's own directory, so that it finds pkcs11js.
 */
export function spawnSessionWorker(data: SessionWorkerData): Worker {
  const compiled = join(__dirname, "session-worker.js");
  if (existsSync(compiled)) return new Worker(compiled, { workerData: data });
  return new Worker(transpiledEntry(), { eval: true, workerData: data });
}

let transpiled: string | undefined;

function transpiledEntry(): string {
  if (transpiled !== undefined) return transpiled;
  const source = join(__dirname, "session-worker.ts");
  if (!existsSync(source)) throw new Error(`pkcs11: neither session-worker.js nor session-worker.ts found in ${__dirname}`);
  const text = readFileSync(source, "utf8");
  // Loading TypeScript costs about half a second per process: the output is kept under the
  // source's hash in a directory only this user can write, so each test process after the first
  // reads it (and nobody else can plant code there).
  const dir = privateCacheDir();
  const cached = dir && join(dir, `session-worker-${createHash("sha256").update(source).update(text).digest("hex").slice(0, 24)}.js`);
  let js: string | undefined;
  try {
    if (cached) js = readFileSync(cached, "utf8");
  } catch {
    /* not cached yet */
  }
  if (js === undefined) {
    // Only reached from the TypeScript sources (tests), where the typescript package is installed.
    const ts = require("typescript") as typeof import("typescript");
    js = ts.transpileModule(text, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }, fileName: source }).outputText;
    if (cached) {
      const tmp = `${cached}.${process.pid}`;
      writeFileSync(tmp, js, { mode: 0o600 });
      renameSync(tmp, cached);
    }
  }
  transpiled = `(function (require) {\n${js}\n})(require("node:module").createRequire(${JSON.stringify(source)}));`;
  return transpiled;
}

/** `$TMPDIR/hsmd-worker-cache-<uid>`, mode 700 and owned by this user, or undefined when it is not (then nothing is cached). */
function privateCacheDir(): string | undefined {
  const uid = process.getuid?.();
  if (uid === undefined) return undefined;
  const dir = join(tmpdir(), `hsmd-worker-cache-${uid}`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === uid && (st.mode & 0o077) === 0 ? dir : undefined;
  } catch {
    return undefined;
  }
}
