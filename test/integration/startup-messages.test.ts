/**
 * What a person sees when hsmd starts, from the built daemon as a child process: the ready banner is
 * exactly the README's (so the two cannot drift apart), and the start-up failures a new user hits
 * (a busy gRPC or admin port, `audit.file` naming a directory) are one line naming the address or
 * path and what to do, with exit code 1 and no stack trace. Also `scripts/dev-ports.sh`, the check
 * `scripts/dev.sh` runs before its install and build.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildDist, REPO, startDaemonProcess, type DaemonProcess } from "../helpers/daemon-process";
import { listenError } from "../../src/listen-check";
import { parseListenAddress } from "../../src/config";

let holder: Server;
let busyPort: number;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  buildDist();
  holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
  busyPort = (holder.address() as { port: number }).port;
}, 120_000);
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await new Promise((resolve) => holder.close(resolve));
});

/** Starts a daemon expected to fail; resolves with its exit and the lines it wrote to stderr. */
async function failedStart(config: Record<string, unknown>): Promise<{ code: number | null; lines: string[]; dp: DaemonProcess }> {
  const dp = await startDaemonProcess({ config, noWait: true });
  cleanups.push(() => dp.cleanup());
  dp.ready.catch(() => undefined);
  const { code } = await dp.waitExit();
  const lines = dp
    .stderr()
    .split("\n")
    .filter((l) => l !== "");
  return { code, lines, dp };
}

/** The last stderr line without its timestamp; and that no line is a stack frame. */
function lastLine(lines: string[]): string {
  for (const l of lines) expect(l, `a stack frame in stderr:\n${lines.join("\n")}`).not.toMatch(/^\s+at /);
  return lines[lines.length - 1]!.replace(/^\S+ hsmd: /, "");
}

describe("the ready banner", () => {
  it("is the README's: the block under 'scripts/dev.sh prints where it listens' is what hsmd init prints", async () => {
    const dp = await startDaemonProcess();
    cleanups.push(() => dp.cleanup());
    const readme = readFileSync(join(REPO, "README.md"), "utf8");
    const block = /`scripts\/dev\.sh` prints where it listens:\n\n```\n([\s\S]*?)```/.exec(readme);
    expect(block, "README.md has no banner block").not.toBeNull();
    // This run's values in the place of dev.sh's: node, token, addresses and data directory.
    const grpcPort = dp.grpc.split(":")[1]!;
    const adminPort = dp.admin.split(":")[2]!;
    const printed = dp
      .stdout()
      .replace("node proc-node,", "node dev,")
      .replace(`token "${dp.token.label}"`, 'token "hsmd-dev"')
      .replace(`127.0.0.1:${grpcPort}`, "127.0.0.1:7443")
      .replace(`127.0.0.1:${adminPort}`, "127.0.0.1:7480")
      .replace(dp.dataDir, "/…/.dev/data");
    expect(printed).toBe(block![1]);
    // And after the first officer changed the password the fourth line is gone: the README says so.
    expect(readme).toContain("The fourth line is there until the first crypto officer changes its one-time password");
  });
});

describe("a listen address that is taken", () => {
  it("gRPC: one line naming the address, listen.grpc and --grpc; exit 1; nothing opened", async () => {
    const { code, lines, dp } = await failedStart({ listen: { grpc: `127.0.0.1:${busyPort}` } });
    expect(code).toBe(1);
    expect(lines).toHaveLength(1); // checked before the store, the device and the reconcile
    expect(lastLine(lines)).toBe(
      `cannot start: gRPC address 127.0.0.1:${busyPort} is already in use by another process: stop what holds it, or listen elsewhere (config listen.grpc, or hsmd --grpc HOST:PORT)`,
    );
    expect(readdirSync(dp.dataDir)).toEqual([]);
  });

  it("admin HTTP: one line naming the address, listen.admin and --admin; exit 1", async () => {
    const { code, lines } = await failedStart({ listen: { admin: `127.0.0.1:${busyPort}` } });
    expect(code).toBe(1);
    expect(lines).toHaveLength(1);
    expect(lastLine(lines)).toBe(
      `cannot start: admin HTTP address 127.0.0.1:${busyPort} is already in use by another process: stop what holds it, or listen elsewhere (config listen.admin, or hsmd --admin HOST:PORT)`,
    );
  });

  it("a port taken after the early check: grpc-js' bind error becomes the same message", async () => {
    const server = new grpc.Server();
    const err = await new Promise<Error>((resolve) => server.bindAsync(`127.0.0.1:${busyPort}`, grpc.ServerCredentials.createInsecure(), (e) => resolve(e!)));
    server.forceShutdown();
    const mapped = listenError("grpc", parseListenAddress(`127.0.0.1:${busyPort}`)!, err) as Error;
    expect(mapped).not.toBe(err);
    expect(mapped.message).toBe(`gRPC address 127.0.0.1:${busyPort} is already in use by another process: stop what holds it, or listen elsewhere (config listen.grpc, or hsmd --grpc HOST:PORT)`);
    const other = new Error("something else");
    expect(listenError("grpc", parseListenAddress("127.0.0.1:1")!, other)).toBe(other);
  });
});

describe("audit.file naming a directory", () => {
  it("one line naming the path and what to do; exit 1; no EISDIR stack", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hsmd-audit-dir-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    mkdirSync(join(dir, "audit.log"));
    const path = join(dir, "audit.log");
    const { code, lines } = await failedStart({ audit: { file: path } });
    expect(code).toBe(1);
    expect(lastLine(lines)).toBe(`cannot start: audit log ${path} is a directory: audit.file must name a file (for example ${join(path, "audit.log")}); change audit.file or move the directory away`);
  });
});

describe("scripts/dev-ports.sh (run by dev.sh before installing and building)", () => {
  const run = (env: Record<string, string>) => spawnSync("bash", [join(REPO, "scripts/dev-ports.sh")], { env: { ...process.env, ...env }, encoding: "utf8" });
  const free = async (): Promise<number> => {
    const s = createServer();
    await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
    const port = (s.address() as { port: number }).port;
    await new Promise((resolve) => s.close(resolve));
    return port;
  };

  it("a busy gRPC or admin port: one line naming it and the variable that moves it, exit 1", async () => {
    const other = await free();
    const g = run({ HSMD_GRPC_PORT: String(busyPort), HSMD_ADMIN_PORT: String(other) });
    expect(g.status).toBe(1);
    expect(g.stderr.trim().split("\n")).toHaveLength(1);
    expect(g.stderr).toContain(`port ${busyPort} on 127.0.0.1 (hsmd gRPC) is in use`);
    expect(g.stderr).toContain(`HSMD_GRPC_PORT=${busyPort + 1} bash scripts/dev.sh`);
    const a = run({ HSMD_GRPC_PORT: String(other), HSMD_ADMIN_PORT: String(busyPort) });
    expect(a.status).toBe(1);
    expect(a.stderr).toContain(`port ${busyPort} on 127.0.0.1 (hsmd admin HTTP) is in use`);
    expect(a.stderr).toContain("HSMD_ADMIN_PORT=");
  });

  it("free ports: silent, exit 0; not a port, or both the same: exit 2", async () => {
    const [p1, p2] = [await free(), await free()];
    const ok = run({ HSMD_GRPC_PORT: String(p1), HSMD_ADMIN_PORT: String(p1 === p2 ? p2 + 1 : p2) });
    expect({ status: ok.status, stderr: ok.stderr }).toEqual({ status: 0, stderr: "" });
    const bad = run({ HSMD_GRPC_PORT: "74430" });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("HSMD_GRPC_PORT=74430 is not a port number");
    const same = run({ HSMD_GRPC_PORT: String(p1), HSMD_ADMIN_PORT: String(p1) });
    expect(same.status).toBe(2);
    expect(same.stderr).toContain("give them different ports");
  });
});
