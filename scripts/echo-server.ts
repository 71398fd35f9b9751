/**
 * The transport ceiling for `npm run bench`: a bare grpc-js server with no proto and no work, in a
 * child process like the daemon. `Echo` answers a unary call with its request bytes; `Stream` echoes
 * every message of one bidi stream (the client puts a message id in its first bytes, so echoes may be
 * matched in any order). Prints `echo <host:port>` on stdout when it listens; SIGTERM stops it.
 *
 *   node dist/scripts/echo-server.js
 */
import * as grpc from "@grpc/grpc-js";

const bytes = (b: Buffer): Buffer => b;

/** The echo service, hand-written with Buffer (de)serializers: grpc-js framing and HTTP/2 only, nothing above them. */
export const ECHO_SERVICE = {
  echo: {
    path: "/bench.Echo/Echo",
    requestStream: false,
    responseStream: false,
    requestSerialize: bytes,
    requestDeserialize: bytes,
    responseSerialize: bytes,
    responseDeserialize: bytes,
  },
  stream: {
    path: "/bench.Echo/Stream",
    requestStream: true,
    responseStream: true,
    requestSerialize: bytes,
    requestDeserialize: bytes,
    responseSerialize: bytes,
    responseDeserialize: bytes,
  },
} satisfies grpc.ServiceDefinition;

function main(): void {
  const server = new grpc.Server();
  server.addService(ECHO_SERVICE, {
    echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
    stream: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on("data", (m: Buffer) => call.write(m));
      call.on("end", () => call.end());
      call.on("error", () => call.end());
    },
  });
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      process.stderr.write(`echo server: ${err.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`echo 127.0.0.1:${port}\n`);
  });
  process.once("SIGTERM", () => server.tryShutdown(() => process.exit(0)));
}

if (require.main === module) main();
