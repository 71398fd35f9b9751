/**
 * The SDK as a separate project gets it: `scripts/pack-sdk.ts` packs the `hsmd` package (npm pack),
 * a temporary project installs the tarball from the npm registry's cache (`npm install
 * --prefer-offline`), and the README's first example, taken from README.md as it is, is
 * type-checked against the package's typings and run there against a real daemon: login as a crypto
 * user, generateKey, sign, getPublicKey (the signature verified with Node's crypto), encrypt (the
 * ciphertext decrypted here). The install must print no warning, and pkcs11js must be neither
 * installed nor loaded.
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { buildDist, REPO } from "../helpers/daemon-process";
import { ensureUser, USER_PASSWORD, userClient } from "../helpers/users";
import { EncryptionAlgorithm } from "../../src/sdk";
import { sdkClosure, sdkPackageJson } from "../../scripts/pack-sdk";

let td: TestDaemon;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-sdk-package-"));
  // The pack needs dist/: compiled here only when stale, as the other dist tests do (the full build,
  // code generation included, only when src/gen is missing: other files may be compiling meanwhile).
  if (!existsSync(join(REPO, "src/gen"))) execFileSync("npm", ["run", "--silent", "build"], { cwd: REPO, stdio: "pipe" });
  else buildDist();
  td = await startTestDaemon();
  await ensureUser(td, "alice");
}, 180_000);
afterAll(async () => {
  await td?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A child process run to its end without blocking this process's event loop (the daemon lives in it). */
function spawnAsync(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

/** The README's first SDK example (the block that opens with `import { HsmClient, KeySpec, SigningAlgorithm, EncryptionAlgorithm }`). */
function readmeExample(): string {
  const readme = readFileSync(join(REPO, "README.md"), "utf8");
  const block = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!).find((b) => b.includes("generateKey") && b.includes("encrypt(") && b.includes("getPublicKey"));
  if (!block) throw new Error("README.md has no SDK example with generateKey, sign, getPublicKey and encrypt");
  return block;
}

it("the SDK's dependencies are its own: only what dist/src/sdk requires, none of the daemon's", () => {
  const { files, packages } = sdkClosure(REPO);
  expect([...packages].sort()).toEqual(["@bufbuild/protobuf", "@grpc/grpc-js"]);
  expect(files.every((f) => f.startsWith("dist/src/sdk/") || f.startsWith("dist/src/gen/"))).toBe(true);
  const root = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as Record<string, unknown>;
  const pkg = sdkPackageJson(root, packages);
  expect(pkg).toMatchObject({ name: "hsmd", main: "dist/src/sdk/index.js", types: "dist/src/sdk/index.d.ts" });
  expect(Object.keys(pkg.dependencies as object)).toEqual(["@bufbuild/protobuf", "@grpc/grpc-js"]);
});

it("npm pack, npm install into a new project (no warning), then the README's example runs there against the daemon", async () => {
  const packed = spawnSync(process.execPath, [join(REPO, "dist/scripts/pack-sdk.js"), "--out", dir], { encoding: "utf8" });
  expect(packed.status, packed.stderr).toBe(0);
  const tarball = packed.stdout.trim();
  const listing = execFileSync("tar", ["tzf", tarball], { encoding: "utf8" }).split("\n");
  expect(listing).toContain("package/dist/src/sdk/index.js");
  expect(listing).toContain("package/dist/src/sdk/index.d.ts");
  expect(listing).toContain("package/dist/src/gen/hsm/v1/crypto.js");
  expect(listing.filter((f) => /pkcs11|daemon|\/cli\//.test(f))).toEqual([]);

  // A consumer's project, with the one allowScripts line the README's "Getting the SDK" asks for.
  const app = join(dir, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "consumer", version: "1.0.0", private: true, allowScripts: { protobufjs: false } }));
  const install = spawnSync("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", tarball], { cwd: app, encoding: "utf8" });
  expect(install.status, install.stderr).toBe(0);
  expect(`${install.stdout}${install.stderr}`).not.toMatch(/warn|ERR/i);
  expect(spawnSync(process.execPath, ["-e", 'require.resolve("pkcs11js")'], { cwd: app }).status).not.toBe(0);

  // The README's example as it is, in an async main; its endpoint and password from the environment.
  const example = readmeExample().replace('"127.0.0.1:7443"', "process.env.HSMD_ENDPOINT!");
  const imports = example.split("\n").filter((l) => l.startsWith("import "));
  const body = example.split("\n").filter((l) => !l.startsWith("import "));
  writeFileSync(
    join(app, "example.ts"),
    [
      ...imports,
      'import { verify } from "node:crypto";',
      "async function main(): Promise<void> {",
      ...body,
      '  const valid = verify("sha256", Buffer.from("hello"), pem, Buffer.from(signature));',
      '  const pkcs11Loaded = Object.keys(require.cache).some((f) => f.includes("pkcs11"));',
      '  console.log(JSON.stringify({ valid, pkcs11Loaded, aesId: aes.id, ciphertext: Buffer.from(ciphertext).toString("base64"), iv: Buffer.from(iv).toString("base64") }));',
      "}",
      "main().catch((e) => { console.error(e); process.exit(1); });",
      "",
    ].join("\n"),
  );
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { target: "ES2022", lib: ["ES2022"], module: "node16", moduleResolution: "node16", strict: true, types: ["node"], esModuleInterop: true, skipLibCheck: true },
      files: ["example.ts"],
    }),
  );
  // Type-checked against the installed package's typings, then run.
  const tsc = spawnSync(process.execPath, [join(REPO, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], { cwd: app, encoding: "utf8" });
  expect(tsc.status, `${tsc.stdout}${tsc.stderr}`).toBe(0);
  // Asynchronously: the daemon runs in this process and must keep answering.
  const run = await spawnAsync(process.execPath, ["example.js"], { cwd: app, env: { ...process.env, HSMD_ENDPOINT: td.grpc, HSMD_PASSWORD: USER_PASSWORD } });
  expect(run.status, run.stderr).toBe(0);
  const out = JSON.parse(run.stdout.trim().split("\n").pop()!) as { valid: boolean; pkcs11Loaded: boolean; aesId: string; ciphertext: string; iv: string };
  expect(out).toMatchObject({ valid: true, pkcs11Loaded: false });
  // What the consumer encrypted decrypts here, with the README's AAD.
  const alice = await userClient(td, "alice");
  try {
    const { plaintext } = await alice.decrypt({
      keyId: out.aesId,
      algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM,
      ciphertext: Buffer.from(out.ciphertext, "base64"),
      iv: Buffer.from(out.iv, "base64"),
      aad: Buffer.from("record-42"),
    });
    expect(Buffer.from(plaintext).toString()).toBe("secret");
  } finally {
    await alice.logout();
    alice.close();
  }
});
