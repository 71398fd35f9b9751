"use strict";
/**
 * Child process of test/integration/store-crash.test.ts: opens the embedded store and creates keys in a
 * burst of concurrent txns, printing "ACK <n>" once each is acknowledged, until it is killed (-9).
 *
 * There is no TypeScript runner installed (no tsx, no esbuild), so the store's .ts sources are loaded
 * through a require hook that transpiles them with the project's own TypeScript compiler.
 *
 *   node store-crash-child.cjs <dir> <first n> <count> <concurrency> <compactAfterBytes>
 */
const fs = require("node:fs");
const path = require("node:path");

/** The exact record stored under keys/<n>; the parent checks every stored value against it. */
function record(n) {
  return JSON.stringify({ n, name: `key-${n}`, pad: "p".repeat((n * 37) % 700), tail: n * 3 });
}

function loadStore() {
  const ts = require("typescript");
  require.extensions[".ts"] = (module, filename) => {
    const out = ts.transpileModule(fs.readFileSync(filename, "utf8"), {
      fileName: filename,
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    module._compile(out.outputText, filename);
  };
  return require(path.resolve(__dirname, "../../src/store/index.ts"));
}

async function main() {
  const [dir, firstArg, countArg, concArg, compactArg] = process.argv.slice(2);
  const first = Number(firstArg);
  const end = first + Number(countArg);
  const { openEmbeddedStore } = loadStore();
  const store = await openEmbeddedStore(dir, { compactAfterBytes: Number(compactArg) });
  process.stdout.write("OPEN\n");
  let next = first;
  const worker = async () => {
    while (next < end) {
      const n = next++;
      const key = `keys/${n}`;
      const r = await store.txn([{ key, op: "absent" }], [{ type: "put", key, value: Buffer.from(record(n)) }]);
      if (!r.succeeded) throw new Error(`create of ${key} failed its compare`);
      process.stdout.write(`ACK ${n}\n`);
    }
  };
  await Promise.all(Array.from({ length: Number(concArg) }, worker));
  process.stdout.write("DONE\n");
  await store.close();
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`${err?.stack ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}

module.exports = { record };
