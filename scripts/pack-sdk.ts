/**
 * Packs the SDK as its own npm package, `hsmd`, the one the README's `import … from "hsmd"` means:
 * the compiled SDK (dist/src/sdk) and exactly the modules it requires (the ts-proto messages in
 * dist/src/gen), with their typings, and as dependencies only what those require (@grpc/grpc-js,
 * @bufbuild/protobuf) at the versions this repository pins. The daemon's dependencies (pkcs11js, a
 * native addon with an install script; graphene-pk11, fastify, etcd3, …) are not among them, so a
 * consumer's `npm install` neither builds nor loads them. The repository's own package.json stays
 * the daemon's (private: never published by mistake).
 *
 *   node dist/scripts/pack-sdk.js [--out DIR]     (after `npm run build`; `npm run pack:sdk` does both)
 *
 * Prints the tarball's path. Exit status: 0 packed, 1 failed (why on stderr), 2 usage.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

/** The repository root (this file runs as dist/scripts/pack-sdk.js). */
const REPO = resolve(__dirname, "../..");
/** The SDK's entry point, relative to the repository root. */
const ENTRY = "dist/src/sdk/index.js";
/** Packages the SDK must never need: the daemon's device, store and HTTP stack. */
const DAEMON_ONLY = ["pkcs11js", "graphene-pk11", "etcd3", "fastify", "prom-client", "ajv"];

/** The package name of a bare specifier (`@grpc/grpc-js/build/x` → `@grpc/grpc-js`). */
function packageOf(spec: string): string {
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

/**
 * Every compiled module the entry point requires, transitively (paths relative to the repository),
 * and the packages they require. Reads tsc's CommonJS output (`require("…")` with a literal) and
 * its typings (`from "…"`, `import("…")`).
 */
export function sdkClosure(repo: string, entry = ENTRY): { files: string[]; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string) => {
    if (files.has(file)) return;
    files.add(file);
    const source = readFileSync(join(repo, file), "utf8");
    const dts = join(repo, file.replace(/\.js$/, ".d.ts"));
    const typings = existsSync(dts) ? readFileSync(dts, "utf8") : "";
    // What the code requires, and what its typings import (type-only imports are erased from the .js).
    const specs = [...source.matchAll(/\brequire\("([^"]+)"\)/g), ...typings.matchAll(/(?:\bfrom |\bimport\()"([^"]+)"/g)].map((m) => m[1]!);
    for (const spec of specs) {
      if (spec.startsWith(".")) {
        const base = join(dirname(file), spec);
        const target = [`${base}.js`, join(base, "index.js")].find((f) => existsSync(join(repo, f)));
        if (!target) throw new Error(`${file} requires ${spec}, which is not built: run npm run build`);
        visit(target);
      } else if (!spec.startsWith("node:") && !builtinModules.includes(spec)) {
        packages.add(packageOf(spec));
      }
    }
  };
  visit(entry);
  return { files: [...files].sort(), packages };
}

/** The SDK package's package.json: name, version and licence of the repository, its own entry and dependencies. */
export function sdkPackageJson(root: Record<string, unknown>, packages: Set<string>): Record<string, unknown> {
  const rootDeps = (root.dependencies ?? {}) as Record<string, string>;
  const dependencies: Record<string, string> = {};
  for (const p of [...packages].sort()) {
    const range = rootDeps[p];
    if (range === undefined) throw new Error(`the SDK requires ${p}, which is not in package.json's dependencies`);
    dependencies[p] = range;
  }
  return {
    name: root.name,
    version: root.version,
    description: "TypeScript SDK of hsmd, the hardware-backed key service (gRPC client: keys, crypto, users, envelope encryption)",
    license: root.license,
    type: "commonjs",
    engines: root.engines,
    main: ENTRY,
    types: ENTRY.replace(/\.js$/, ".d.ts"),
    exports: { ".": { types: `./${ENTRY.replace(/\.js$/, ".d.ts")}`, default: `./${ENTRY}` } },
    files: ["dist", "README.md"],
    dependencies,
  };
}

/** Stages the package in a temp directory and packs it into `out`; answers the tarball's path. */
export function packSdk(out: string, repo = REPO): string {
  const { files, packages } = sdkClosure(repo);
  const forbidden = DAEMON_ONLY.filter((p) => packages.has(p));
  if (forbidden.length) throw new Error(`the SDK requires daemon-only packages: ${forbidden.join(", ")}`);
  const root = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as Record<string, unknown>;
  const stage = mkdtempSync(join(tmpdir(), "hsmd-sdk-pack-"));
  try {
    for (const f of files) {
      for (const g of [f, f.replace(/\.js$/, ".d.ts")]) {
        if (!existsSync(join(repo, g))) continue;
        mkdirSync(dirname(join(stage, g)), { recursive: true });
        copyFileSync(join(repo, g), join(stage, g));
      }
    }
    copyFileSync(join(repo, "README.md"), join(stage, "README.md"));
    writeFileSync(join(stage, "package.json"), `${JSON.stringify(sdkPackageJson(root, packages), null, 2)}\n`);
    mkdirSync(out, { recursive: true });
    const name = execFileSync("npm", ["pack", "--silent", "--pack-destination", resolve(out)], { cwd: stage, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
      .trim()
      .split("\n")
      .pop()!;
    return join(resolve(out), name);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

if (require.main === module) {
  let out = ".";
  try {
    const { values } = parseArgs({ options: { out: { type: "string" }, help: { type: "boolean", short: "h" } } });
    if (values.help) {
      process.stdout.write("usage: node dist/scripts/pack-sdk.js [--out DIR]\n");
      process.exit(0);
    }
    out = values.out ?? ".";
  } catch (e) {
    process.stderr.write(`pack-sdk: ${(e as Error).message}\nusage: node dist/scripts/pack-sdk.js [--out DIR]\n`);
    process.exit(2);
  }
  try {
    process.stdout.write(`${packSdk(out)}\n`);
  } catch (e) {
    process.stderr.write(`pack-sdk: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
