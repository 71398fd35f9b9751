/**
 * The client side of the transport ceilings in `npm run bench`: spawns scripts/echo-server.ts in a
 * child process (the daemon's layout) and calls it from this process through plain grpc-js, unary or
 * over one bidi stream with many messages outstanding.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { ECHO_SERVICE } from "./echo-server";

/** A running echo server: its process (for its CPU) and a client connected to it. */
export interface EchoServer {
  child: ChildProcess;
  /** One unary echo of `payload`. */
  unary(payload: Buffer): Promise<Buffer>;
  /** Opens one bidi stream; each `send` resolves when the message with its id comes back. */
  stream(): EchoStream;
  close(): Promise<void>;
}

/** One bidi stream to the echo server: messages carry a 4-byte id in front, echoes are matched by it (in any order). */
export interface EchoStream {
  send(payload: Buffer): Promise<void>;
  end(): void;
}

/** Starts `dist/scripts/echo-server.js` and connects to the address it prints. */
export async function startEchoServer(root: string): Promise<EchoServer> {
  const child = spawn(process.execPath, [join(root, "dist/scripts/echo-server.js")], { stdio: ["ignore", "pipe", "inherit"] });
  const address = await new Promise<string>((res, rej) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^echo (\S+)$/m.exec(out);
      if (m) res(m[1]!);
    });
    child.once("exit", (code) => rej(new Error(`echo server exited with ${code}`)));
  });
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const { echo, stream } = ECHO_SERVICE;
  return {
    child,
    unary: (payload) => new Promise<Buffer>((res, rej) => client.makeUnaryRequest(echo.path, echo.requestSerialize, echo.responseDeserialize, payload, (err, value) => (err ? rej(err) : res(value!)))),
    stream: () => {
      const call = client.makeBidiStreamRequest(stream.path, stream.requestSerialize, stream.responseDeserialize);
      const pending = new Map<number, { res: () => void; rej: (e: Error) => void }>();
      let next = 0;
      call.on("data", (m: Buffer) => {
        const id = m.readUInt32BE(0);
        pending.get(id)?.res();
        pending.delete(id);
      });
      call.on("error", (e: Error) => {
        for (const p of pending.values()) p.rej(e);
        pending.clear();
      });
      return {
        send: (payload) =>
          new Promise<void>((res, rej) => {
            const id = next++ >>> 0;
            const m = Buffer.allocUnsafe(payload.length);
            payload.copy(m);
            m.writeUInt32BE(id, 0);
            pending.set(id, { res, rej });
            call.write(m);
          }),
        end: () => call.end(),
      };
    },
    close: async () => {
      client.close();
      child.kill("SIGTERM");
      if (child.exitCode === null) await new Promise((r) => child.once("exit", r));
    },
  };
}
