"use strict";
/**
 * Child process of test/integration/hostile-connections.test.ts: the raw node:http2 attacker clients,
 * in a process of their own. Destroying a Node (v20) HTTP/2 client session whose streams still hold
 * large writes the peer will never take (the daemon answered them and never reads their bodies) at
 * times corrupts the client's native heap ("corrupted size vs. prev_size"); in the vitest worker that
 * killed the whole test file. Here nothing is destroyed: once every stream has answered, the result
 * is printed (one JSON line) and the process exits, the kernel closing its connections. A crash of
 * this process fails the test with its stderr (nothing retries it).
 *
 *   node h2-attacker-child.cjs <dist dir> unfinished-bodies '{"grpc":"127.0.0.1:PORT","sessions":8,"streams":32,"declared":N,"chunkBytes":N}'
 *   node h2-attacker-child.cjs <dist dir> never-reads '{"grpc":"…","username":"…","password":"…","keyId":"…","calls":40,"items":64,"itemBytes":65536}'
 *
 * Each stream's outcome: { responded } (response HEADERS with a message to follow), { grpcStatus }
 * (a trailers-only answer, or trailers), or { rstCode } (closed without either).
 */
const http2 = require("node:http2");
const path = require("node:path");

const [distDir, mode, argsJson] = process.argv.slice(2);
const args = JSON.parse(argsJson);

/** A gRPC frame: flag 0, big-endian length, message. */
const frame = (msg) => Buffer.concat([Buffer.from([0, ...[24, 16, 8, 0].map((s) => (msg.length >>> s) & 0xff)]), msg]);

const grpcHeaders = (p, extra = {}) => ({ ":method": "POST", ":path": p, "content-type": "application/grpc", te: "trailers", ...extra });

/** Resolves at the first sign of the server's answer: HEADERS of a response, trailers, or the stream's end. */
function firstAnswer(st) {
  return new Promise((resolve) => {
    st.on("response", (headers) => {
      const s = headers["grpc-status"];
      // A trailers-only answer (a refusal) carries grpc-status in the first HEADERS.
      resolve(s === undefined ? { responded: true } : { responded: false, grpcStatus: Number(s) });
    });
    st.on("trailers", (t) => resolve({ responded: false, grpcStatus: Number(t["grpc-status"]) }));
    st.on("close", () => resolve({ responded: false, rstCode: st.rstCode }));
    st.on("error", () => undefined);
  });
}

/** A raw unary call: its status and response message. */
function rawUnary(s, p, body) {
  return new Promise((resolve, reject) => {
    const st = s.request(grpcHeaders(p));
    const chunks = [];
    let status = -1;
    st.on("response", (h) => h["grpc-status"] !== undefined && (status = Number(h["grpc-status"])));
    st.on("trailers", (t) => (status = Number(t["grpc-status"])));
    st.on("data", (c) => chunks.push(c));
    st.on("end", () => resolve({ status, message: Buffer.concat(chunks).subarray(5) }));
    st.on("error", reject);
    st.end(frame(body));
  });
}

/** Streams carrying the start of a `declared`-byte message (a `chunkBytes` piece of it), without a session. */
async function unfinishedBodies() {
  const outcomes = [];
  const chunk = Buffer.alloc(args.chunkBytes, 0x41);
  const d = args.declared;
  for (let c = 0; c < args.sessions; c++) {
    // The attacker's own session must not refuse its queued bodies (Node's default 10 MiB).
    const s = http2.connect(`http://${args.grpc}`, { maxSessionMemory: 4096 });
    s.on("error", () => undefined);
    for (let i = 0; i < args.streams; i++) {
      const st = s.request(grpcHeaders("/hsm.v1.CryptoService/Encrypt"));
      outcomes.push(firstAnswer(st));
      st.write(Buffer.from([0, (d >>> 24) & 0xff, (d >>> 16) & 0xff, (d >>> 8) & 0xff, d & 0xff]));
      st.write(chunk);
    }
  }
  return { outcomes: await Promise.all(outcomes) };
}

/** A client whose HTTP/2 window is 0 (it never reads) sending BatchEncrypt calls one after another; its session comes from a login on another connection. */
async function neverReads() {
  const { BatchEncryptRequest, EncryptionAlgorithm } = require(path.join(distDir, "src/gen/hsm/v1/crypto"));
  const { LoginRequest, Session } = require(path.join(distDir, "src/gen/hsm/v1/users"));
  const s = http2.connect(`http://${args.grpc}`, { settings: { initialWindowSize: 0 } });
  s.on("error", () => undefined);
  // With window 0, no answer's message reaches `s`: the login is made on another connection.
  const other = http2.connect(`http://${args.grpc}`);
  other.on("error", () => undefined);
  const login = await rawUnary(other, "/hsm.v1.UserService/Login", LoginRequest.encode({ username: args.username, password: args.password }).finish());
  if (login.status !== 0) return { loginStatus: login.status, outcomes: [] };
  const token = Session.decode(login.message).token;
  const body = BatchEncryptRequest.encode(
    BatchEncryptRequest.fromPartial({
      items: Array.from({ length: args.items }, () => ({
        keyId: args.keyId,
        algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM,
        plaintext: Buffer.alloc(args.itemBytes, 9),
        aad: Buffer.alloc(0),
        iv: Buffer.alloc(0),
      })),
    }),
  ).finish();
  const outcomes = [];
  for (let i = 0; i < args.calls; i++) {
    const st = s.request(grpcHeaders("/hsm.v1.CryptoService/BatchEncrypt", { authorization: `Bearer ${token}` }));
    const o = firstAnswer(st);
    st.end(frame(body));
    outcomes.push(await o);
  }
  return { loginStatus: login.status, outcomes };
}

const modes = { "unfinished-bodies": unfinishedBodies, "never-reads": neverReads };

(async () => {
  const run = modes[mode];
  if (!run) throw new Error(`unknown mode ${mode}`);
  const result = await run();
  // No session is closed or destroyed here (see above): exit once the line is out.
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
})().catch((e) => {
  process.stderr.write(`${e?.stack ? e.stack : e}\n`, () => process.exit(2));
});
