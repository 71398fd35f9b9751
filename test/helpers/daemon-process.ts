/**
 * hsmd as a real child process (`node dist/src/main.js init --config FILE`) on a temp SoftHSM2 token,
 * so that tests can kill it with SIGKILL and start it again on the same token and data directory.
 * The PIN reaches it through a PIN file (mode 600); its stdout and stderr are captured whole. It runs
 * in dev mode (plaintext gRPC on loopback).
 */
import { spawn, execSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { mergeConfig } from "../../src/config/merge";
import { createTempToken, SOFTHSM_MODULE, type TempToken } from "./softhsm";

export const REPO = resolve(__dirname, "../..");
export const MAIN_JS = join(REPO, "dist/src/main.js");
export const HSMCTL_JS = join(REPO, "dist/src/cli/main.js");

/** Newest modification time of the files under `dir` (recursively). */
function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * Is dist/ built from the current sources? (scripts/test.sh builds before the suite; tsc rewrites
 * every output, so dist/src/main.js is as new as the build.) Saves each test file a full tsc run.
 */
export function distIsFresh(): boolean {
  if (!existsSync(MAIN_JS) || !existsSync(join(REPO, "dist/src/cli/main.js"))) return false;
  const built = statSync(MAIN_JS).mtimeMs;
  return ["src", "scripts"].every((d) => newestMtime(join(REPO, d)) <= built);
}

/** Compiles src/ into dist/ unless it is fresh (once per test file, in its beforeAll). */
export function buildDist(): void {
  if (distIsFresh()) return;
  execSync("npx tsc -p tsconfig.json", { cwd: REPO, stdio: "pipe" });
}

export interface DaemonProcess {
  token: TempToken;
  /** temp root holding the config, the PIN file and the data dir */
  root: string;
  dataDir: string;
  pinFile: string;
  configFile: string;
  /** host:port of the gRPC server of the current run */
  grpc: string;
  /** admin base URL of the current run */
  admin: string;
  pid: number;
  /** resolves when the first run is ready (with `noWait`) */
  ready: Promise<void>;
  /** the command later restarts use */
  setCommand(c: "init" | "join" | "start"): void;
  /** further hsmd flags later runs get (e.g. `["--full-check"]`) */
  setArgs(args: string[]): void;
  /** everything every run wrote to stdout / stderr, concatenated */
  stdout(): string;
  stderr(): string;
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the exit code and signal of the current run. */
  waitExit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (graceful) unless the process already exited, then a new run on the same token and data. */
  restart(): Promise<void>;
  /** Stops the process (SIGTERM, then SIGKILL after 10 s) and removes token and data. */
  cleanup(): Promise<void>;
}

interface Run {
  child: ChildProcess;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: boolean;
}

export interface DaemonProcessOptions {
  limits?: Record<string, number>;
  poolSize?: number;
  /** deep-merged over the generated config (e.g. a `cluster` section, fixed ports) */
  config?: Record<string, unknown>;
  /** node id. @default "proc-node" */
  nodeId?: string;
  /** `init` (default), `join` or `start` */
  command?: "init" | "join" | "start";
  /** Resolve at once instead of when the daemon is ready (a `join` waits for an approval): await `ready`. */
  noWait?: boolean;
  /**
   * Start it through `hsmctl cluster join --hsmd-config FILE` (the built CLI) instead of `hsmd join`
   * (first run only); an array adds hsmctl flags (e.g. `["--output", "json"]`).
   */
  viaHsmctl?: boolean | string[];
  /**
   * A command the daemon runs under, which execs it (so `pid` is the daemon's), e.g.
   * `["prlimit", "--nofile=1024:1024", "--"]` for a file descriptor limit.
   */
  wrap?: string[];
}

export async function startDaemonProcess(opts: DaemonProcessOptions = {}): Promise<DaemonProcess> {
  const token = createTempToken();
  const root = mkdtempSync(join(tmpdir(), "hsmd-proc-"));
  const dataDir = join(root, "data");
  mkdirSync(dataDir);
  const pinFile = join(root, "pin");
  writeFileSync(pinFile, `${token.pin}\n`, { mode: 0o600 });
  chmodSync(pinFile, 0o600);
  const configFile = join(root, "hsmd.json");
  writeFileSync(
    configFile,
    JSON.stringify(
      mergeConfig(
        {
          node: { id: opts.nodeId ?? "proc-node", dataDir },
          listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" },
          devMode: true,
          device: { profile: "softhsm2", module: SOFTHSM_MODULE, tokenLabel: token.label, pin: { file: pinFile }, poolSize: opts.poolSize ?? 4 },
          ...(opts.limits ? { limits: opts.limits } : {}),
        },
        opts.config ?? {},
      ),
    ),
  );
  let out = "";
  let err = "";
  let run: Run | undefined;
  let command = opts.command ?? "init";
  let extraArgs: string[] = [];
  let viaHsmctl = opts.viaHsmctl !== undefined && opts.viaHsmctl !== false;
  const hsmctlFlags = Array.isArray(opts.viaHsmctl) ? opts.viaHsmctl : [];

  const launch = (): Promise<{ grpc: string; admin: string; pid: number }> =>
    new Promise((resolveReady, reject) => {
      const argv = viaHsmctl ? [HSMCTL_JS, "cluster", "join", "--hsmd-config", configFile, ...hsmctlFlags] : [MAIN_JS, command, "--config", configFile, ...extraArgs];
      viaHsmctl = false;
      const wrap = opts.wrap ?? [];
      const child = spawn(wrap[0] ?? process.execPath, wrap.length ? [...wrap.slice(1), process.execPath, ...argv] : argv, {
        cwd: root,
        env: { ...process.env, SOFTHSM2_CONF: token.conf },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let runOut = "";
      let ready = false;
      const r: Run = {
        child,
        exited: false,
        exit: new Promise((res) =>
          child.on("exit", (code, signal) => {
            r.exited = true;
            if (!ready) reject(new Error(`hsmd exited before ready (code ${code}, signal ${signal}):\n${err.slice(-4000)}`));
            res({ code, signal });
          }),
        ),
      };
      run = r;
      child.stdout!.setEncoding("utf8");
      child.stderr!.setEncoding("utf8");
      child.stderr!.on("data", (s: string) => (err += s));
      child.stdout!.on("data", (s: string) => {
        out += s;
        runOut += s;
        if (ready) return;
        const g = /gRPC\s+(127\.0\.0\.1:\d+)/.exec(runOut);
        const a = /admin\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(runOut);
        if (runOut.includes("hsmd ready") && g && a) {
          ready = true;
          resolveReady({ grpc: g[1]!, admin: a[1]!, pid: child.pid! });
        }
      });
    });

  const firstRun = launch();
  const first = opts.noWait ? { grpc: "", admin: "", pid: 0 } : await firstRun;
  const dp: DaemonProcess = {
    token,
    root,
    dataDir,
    pinFile,
    configFile,
    ...first,
    ready: firstRun.then((r) => {
      Object.assign(dp, r);
    }),
    setCommand: (c) => {
      command = c;
    },
    setArgs: (args) => {
      extraArgs = args;
    },
    stdout: () => out,
    stderr: () => err,
    kill: (signal) => {
      run!.child.kill(signal);
    },
    waitExit: () => run!.exit,
    restart: async () => {
      if (!run!.exited) {
        run!.child.kill("SIGTERM");
        await run!.exit;
      }
      const next = await launch();
      Object.assign(dp, next);
    },
    cleanup: async () => {
      if (run && !run.exited) {
        run.child.kill("SIGTERM");
        const t = setTimeout(() => run!.child.kill("SIGKILL"), 10_000);
        await run.exit;
        clearTimeout(t);
      }
      token.cleanup();
      rmSync(root, { recursive: true, force: true });
    },
  };
  return dp;
}

/**
 * Runs a one-shot hsmd command (`node dist/src/main.js ARGS…`, e.g. `officer unlock admin --config
 * FILE`) against a daemon process's token, stdin not a terminal; resolves its exit code and output.
 */
export function runHsmdCommand(dp: Pick<DaemonProcess, "token">, args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [MAIN_JS, ...args], { env: { ...process.env, SOFTHSM2_CONF: dp.token.conf, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr!.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", reject);
    child.on("exit", (code) => resolveRun({ code, stdout, stderr }));
  });
}
