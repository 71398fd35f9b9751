import type * as grpc from "@grpc/grpc-js";
import { createServer, type Server as NetServer, type Socket } from "node:net";

/** How often, at most, the listener logs refused or timed-out connections (counts are summed in between). */
const LOG_EVERY_MS = 10_000;

/** Options of {@link GrpcListener.listen}. */
export interface GrpcListenerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Connections open at once; past it new ones are closed at accept (net.Server maxConnections). */
  maxConnections: number;
  /** A connection that has not started a call by then is closed (covers the TLS handshake and the HTTP/2 preface). */
  handshakeTimeoutMs: number;
  log?: (msg: string) => void;
}

interface Conn {
  socket: Socket;
  timer: NodeJS.Timeout | undefined;
  /** A call arrived on it: past the handshake, left to grpc-js' idle and keepalive timers. */
  called: boolean;
}

/** The key of a connection: its peer address, as grpc-js reports it for a call (getConnectionInfo). */
const keyOf = (address: string | undefined, port: number | undefined) => `${address ?? "?"}|${port ?? 0}`;

/**
 * The gRPC server's own TCP listener: it accepts the sockets and hands them to grpc-js through
 * `Server.createConnectionInjector` (grpc-js ≥ 1.10), so that hsmd decides what grpc-js' own
 * `bindAsync` does not let it: a bound on open connections (Node's `maxConnections`, counted before
 * TLS or HTTP/2 cost anything), and a deadline for a connection to start its first call, so that
 * sockets that never finish the TLS handshake, never send the HTTP/2 preface or never make a call
 * cannot hold descriptors. Idle and dead connections after that are grpc-js' (max_connection_idle_ms,
 * keepalive). Refusals are logged, at most once per 10 s with their counts.
 */
export class GrpcListener {
  private readonly conns = new Map<string, Conn>();
  private refused = 0;
  private timedOut = 0;
  private lastLog = 0;
  private loggedRefusal = false;
  private loggedTimeout = false;
  private logTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly net: NetServer,
    private readonly opts: GrpcListenerOptions,
  ) {}

  /** Listens on host:port and injects every accepted connection into `server` with `credentials`. */
  static listen(server: grpc.Server, credentials: grpc.ServerCredentials, opts: GrpcListenerOptions): Promise<GrpcListener> {
    const injector = server.createConnectionInjector(credentials);
    const net = createServer({ noDelay: true });
    net.maxConnections = opts.maxConnections;
    const l = new GrpcListener(net, opts);
    net.on("connection", (socket) => {
      // Errors of a socket (a reset peer) end it; they are nothing to report or crash on.
      socket.on("error", () => undefined);
      const key = keyOf(socket.remoteAddress, socket.remotePort);
      const conn: Conn = { socket, timer: undefined, called: false };
      conn.timer = setTimeout(() => {
        if (conn.called) return;
        l.timedOut++;
        l.report();
        socket.destroy();
      }, opts.handshakeTimeoutMs);
      conn.timer.unref();
      l.conns.set(key, conn);
      socket.once("close", () => {
        clearTimeout(conn.timer);
        if (l.conns.get(key) === conn) l.conns.delete(key);
      });
      injector.injectConnection(socket);
    });
    net.on("drop", () => {
      l.refused++;
      l.report();
    });
    return new Promise((resolve, reject) => {
      net.once("error", reject);
      net.listen({ host: opts.host, port: opts.port }, () => {
        net.off("error", reject);
        net.on("error", (e) => opts.log?.(`gRPC listener: ${e.message}`));
        resolve(l);
      });
    });
  }

  /** The bound port. */
  get port(): number {
    const a = this.net.address();
    return typeof a === "object" && a ? a.port : 0;
  }

  /** Connections open now. */
  get openConnections(): number {
    return this.conns.size;
  }

  /** Records that a call arrived on the connection from this peer: its first-call deadline no longer applies. */
  noteCall(remoteAddress: string | undefined, remotePort: number | undefined): void {
    const c = this.conns.get(keyOf(remoteAddress, remotePort));
    if (!c || c.called) return;
    c.called = true;
    clearTimeout(c.timer);
  }

  /** Logs the counts: the first of a kind at once, then at most once per {@link LOG_EVERY_MS}. */
  private report(): void {
    const now = Date.now();
    const firstOfKind = (this.refused > 0 && !this.loggedRefusal) || (this.timedOut > 0 && !this.loggedTimeout);
    if (!firstOfKind && now - this.lastLog < LOG_EVERY_MS) {
      if (!this.logTimer) {
        this.logTimer = setTimeout(
          () => {
            this.logTimer = undefined;
            this.report();
          },
          LOG_EVERY_MS - (now - this.lastLog),
        );
        this.logTimer.unref();
      }
      return;
    }
    this.lastLog = now;
    if (this.refused > 0) {
      this.opts.log?.(`gRPC connection limit of ${this.opts.maxConnections} reached (connections.maxConnections, within the file descriptor limit): refused ${this.refused} new connection(s)`);
    }
    if (this.timedOut > 0) {
      this.opts.log?.(`closed ${this.timedOut} gRPC connection(s) that started no call within ${this.opts.handshakeTimeoutMs} ms (connections.handshakeTimeoutSeconds)`);
    }
    this.loggedRefusal ||= this.refused > 0;
    this.loggedTimeout ||= this.timedOut > 0;
    this.refused = 0;
    this.timedOut = 0;
  }

  /**
   * Stops accepting and closes the connections that never started a call (the gRPC server closes the
   * others); resolves once every connection has ended (see {@link destroyAll}).
   */
  stopAccepting(): Promise<void> {
    clearTimeout(this.logTimer);
    const closed = new Promise<void>((resolve) => this.net.close(() => resolve()));
    for (const c of this.conns.values()) if (!c.called) c.socket.destroy();
    return closed;
  }

  /** Destroys every connection still open (after the gRPC server's own shutdown). */
  destroyAll(): void {
    for (const c of this.conns.values()) c.socket.destroy();
  }
}
