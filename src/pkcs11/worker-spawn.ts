import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import type { SessionWorkerData } from "./worker-protocol";

/**
 * Starts one session worker (session-worker.ts) wherever the code runs from. The daemon runs from
 * dist/, where tsc compiled the entry beside this file: the Worker loads that .js. Tests run the
 * TypeScript sources through vitest, which does not transform a Worker's file (vitest issue #5757):
 * there the entry is transpiled once per process with TypeScript's transpileModule (a
 * devDependency, present wherever the .ts sources are) and started as an eval'd CommonJS script
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
  // Only reached from the TypeScript sources (tests), where the typescript package is installed.
  const ts = require("typescript") as typeof import("typescript");
  const js = ts.transpileModule(readFileSync(source, "utf8"), {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    fileName: source,
  }).outputText;
  transpiled = `(function (require) {\n${js}\n})(require("node:module").createRequire(${JSON.stringify(source)}));`;
  return transpiled;
}
