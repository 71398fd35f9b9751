import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { get } from "node:http";
import { get as httpsGet } from "node:https";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** Debian's etcd-server puts the binary here; ETCD_BIN overrides it. */
export const ETCD_BIN = process.env.ETCD_BIN ?? "/usr/bin/etcd";
/**
 * util-linux's setpriv execs etcd with a parent-death signal, so that a test worker that is killed
 * (vitest may end a worker with a signal, which skips "exit" handlers) cannot leave members behind.
 */
const SETPRIV = "/usr/bin/setpriv";
const START_TIMEOUT_MS = 30_000;

/** One etcd member run as a child process of the test. */
export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  /** file that captures the member's stdout and stderr */
  logFile: string;
  /** SIGTERM, and wait until the process has exited */
  stop(): Promise<void>;
  /** SIGKILL, without waiting */
  kill(): void;
  /** starts the member again on the same ports and data dir, and waits until it has a leader */
  start(): Promise<void>;
}

/** A throwaway etcd cluster on 127.0.0.1. */
export interface EtcdCluster {
  /** client URLs of all members */
  endpoints: string[];
  members: EtcdMember[];
  /** kills every member and removes every directory */
  cleanup(): Promise<void>;
}

/** A port that was free a moment ago (bind port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Files for etcd's client TLS (made by scripts/dev-ca.sh): the members serve https with `server`,
 * require client certificates that chain to `ca`, and the health probe presents `client`.
 */
export interface EtcdTlsFiles {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** GET /health on a member's client URL: true when it answers {"health":"true"} (it has a leader). */
export function memberHealthy(clientUrl: string, timeoutMs = 1000, tls?: EtcdTlsFiles): Promise<boolean> {
  return new Promise((resolve) => {
    const options = tls ? { timeout: timeoutMs, ca: readFileSync(tls.ca), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey) } : { timeout: timeoutMs };
    const req = (tls ? httpsGet : get)(`${clientUrl}/health`, options, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve(res.statusCode === 200 && /"health":\s*"true"/.test(body)));
      res.on("error", () => resolve(false));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(false));
  });
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test process that dies must not leave etcd members behind.
  process.on("exit", () => {
    for (const p of live) {
      try {
        p.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  });
}

function tail(file: string, lines = 40): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no output)";
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface MemberSpec {
  name: string;
  root: string;
  dataDir: string;
  logFile: string;
  clientUrl: string;
  peerUrl: string;
}

class Member implements EtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  readonly logFile: string;
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    spec: MemberSpec,
    private readonly args: string[],
    private readonly tls?: EtcdTlsFiles,
  ) {
    this.name = spec.name;
    this.clientUrl = spec.clientUrl;
    this.peerUrl = spec.peerUrl;
    this.dataDir = spec.dataDir;
    this.logFile = spec.logFile;
  }

  /** Spawns the process (output appended to the log file) without waiting for it to be healthy. */
  spawn(): void {
    if (this.proc) throw new Error(`etcd member ${this.name} is already running`);
    const fd = openSync(this.logFile, "a");
    let p: ChildProcess;
    try {
      p = existsSync(SETPRIV) ? spawn(SETPRIV, ["--pdeathsig", "KILL", "--", ETCD_BIN, ...this.args], { stdio: ["ignore", fd, fd] }) : spawn(ETCD_BIN, this.args, { stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    this.proc = p;
    live.add(p);
    this.exited = new Promise<void>((resolve) => {
      const gone = () => {
        live.delete(p);
        if (this.proc === p) this.proc = undefined;
        resolve();
      };
      p.once("exit", gone);
      p.once("error", gone);
    });
  }

  /** Waits until /health answers true; throws with the tail of the log if the process dies or never gets there. */
  async waitHealthy(what: string): Promise<void> {
    const until = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < until && this.proc) {
      if (await memberHealthy(this.clientUrl, 1000, this.tls)) return;
      await sleep(50);
    }
    const why = this.proc ? `was not healthy within ${START_TIMEOUT_MS} ms` : "exited";
    throw new Error(`etcd member ${this.name} (${what}) ${why}; last output of ${this.logFile}:\n${tail(this.logFile)}`);
  }

  async start(): Promise<void> {
    await this.exited; // a member that was killed may not have been reaped yet
    this.spawn();
    await this.waitHealthy("restart");
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    p.kill("SIGTERM");
    await this.exited;
  }

  kill(): void {
    this.proc?.kill("SIGKILL");
  }
}

/**
 * Starts `n` real etcd members as child processes on free 127.0.0.1 ports, each with its own temp data
 * dir, as one new cluster with a unique token and short Raft timings, and waits until every member
 * reports healthy. Each member's output goes to `etcd.log` next to its data dir and is shown only when
 * a start fails.
 */
export async function startEtcdCluster(n: 1 | 3, opts: { tls?: EtcdTlsFiles } = {}): Promise<EtcdCluster> {
  const tls = opts.tls;
  installExitHook();
  const token = `hsmd-test-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const used = new Set<number>();
  const pick = async () => {
    for (;;) {
      const p = await freePort();
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
  };
  const specs: MemberSpec[] = [];
  for (let i = 0; i < n; i++) {
    const root = mkdtempSync(join(tmpdir(), "hsmd-etcd-"));
    specs.push({
      name: `m${i}`,
      root,
      dataDir: join(root, "data"),
      logFile: join(root, "etcd.log"),
      clientUrl: `${tls ? "https" : "http"}://127.0.0.1:${await pick()}`,
      peerUrl: `http://127.0.0.1:${await pick()}`,
    });
  }
  const initialCluster = specs.map((s) => `${s.name}=${s.peerUrl}`).join(",");
  const members = specs.map(
    (s) =>
      new Member(
        s,
        [
          "--name",
          s.name,
          "--data-dir",
          s.dataDir,
          "--listen-client-urls",
          s.clientUrl,
          "--advertise-client-urls",
          s.clientUrl,
          "--listen-peer-urls",
          s.peerUrl,
          "--initial-advertise-peer-urls",
          s.peerUrl,
          "--initial-cluster",
          initialCluster,
          "--initial-cluster-state",
          "new",
          "--initial-cluster-token",
          token,
          "--heartbeat-interval",
          "50",
          "--election-timeout",
          "500",
          "--logger",
          "zap",
          "--log-outputs",
          "stderr",
          ...(tls ? ["--cert-file", tls.serverCert, "--key-file", tls.serverKey, "--trusted-ca-file", tls.ca, "--client-cert-auth"] : []),
        ],
        tls,
      ),
  );

  const cleanup = async () => {
    for (const m of members) m.kill();
    await Promise.all(members.map((m) => m.stop()));
    for (const s of specs) rmSync(s.root, { recursive: true, force: true });
  };

  try {
    // Every member must be running before any of them can elect a leader.
    for (const m of members) m.spawn();
    await Promise.all(members.map((m) => m.waitHealthy("first start")));
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { endpoints: specs.map((s) => s.clientUrl), members, cleanup };
}

/** A TCP proxy in front of one etcd member, to cut a client off from etcd and let it back in. */
export interface TcpProxy {
  /** client URL to give the store instead of the member's */
  url: string;
  /** drops every proxied connection and refuses new ones until resume() */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

/** Starts a {@link TcpProxy} on a free 127.0.0.1 port that forwards to targetUrl's host and port. */
export async function startTcpProxy(targetUrl: string): Promise<TcpProxy> {
  const target = new URL(targetUrl);
  const sockets = new Set<Socket>();
  let paused = false;
  const server = createServer((client) => {
    if (paused) {
      client.destroy();
      return;
    }
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", done);
      s.on("close", done);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    pause() {
      paused = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    resume() {
      paused = false;
    },
    close() {
      paused = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
