import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation } from "grpc-health-check";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { Code, HsmError } from "../errors";
import { KeyServiceService, type KeyServiceServer } from "../gen/hsm/v1/keys";
import { CryptoServiceService, type CryptoServiceServer } from "../gen/hsm/v1/crypto";
import type { KeyService } from "../keys";

/** What the gRPC layer reports per call (metrics); never sees request bodies. */
export type RpcObserver = (method: string, code: string, seconds: number) => void;

export interface GrpcServerOptions {
  keys: KeyService;
  /** Largest message accepted, in bytes (payload limit × batch limit, plus framing). */
  maxMessageBytes: number;
  observe?: RpcObserver;
  log?: (msg: string) => void;
}

/** Finds proto/ from src/ (tests) or dist/src/ (built). */
export function protoDir(): string {
  let d = __dirname;
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(d, "proto", "hsm", "v1", "keys.proto"))) return join(d, "proto");
    d = dirname(d);
  }
  return resolve(__dirname, "../../proto");
}

/**
 * Wraps a domain call as a unary handler: maps every error to its gRPC status and a message a person
 * can act on (never a CKR number, never internal details), and reports the outcome. This is the one
 * place every RPC passes through; the auth and audit layer of a later issue sits here too.
 */
function unary<Req, Res>(method: string, opts: GrpcServerOptions, fn: (req: Req) => Promise<Res> | Res): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const t0 = process.hrtime.bigint();
    let done = false;
    const finish = (code: string) => {
      if (done) return;
      done = true;
      opts.observe?.(method, code, Number(process.hrtime.bigint() - t0) / 1e9);
    };
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (res) => {
          finish("OK");
          callback(null, res);
        },
        (e: unknown) => {
          const err = HsmError.from(e);
          if (err.code === Code.Internal) opts.log?.(`${method}: internal error: ${describeCause(e)}`);
          finish(err.code);
          callback({ code: err.grpcStatus, details: err.message } as grpc.ServiceError);
        },
      );
  };
}

function describeCause(e: unknown): string {
  const c = e instanceof HsmError && e.cause ? e.cause : e;
  return c instanceof Error ? `${c.name}: ${c.message}` : String(c);
}

/** Builds the server with hsm.v1 services, grpc.health.v1 and server reflection (not yet bound). */
export function buildGrpcServer(opts: GrpcServerOptions): { server: grpc.Server; health: HealthImplementation } {
  const server = new grpc.Server({
    // channelz bookkeeping costs CPU on every call and nothing reads it.
    "grpc.enable_channelz": 0,
    "grpc.max_receive_message_length": opts.maxMessageBytes,
    "grpc.max_send_message_length": opts.maxMessageBytes,
  });
  const k = opts.keys;
  const keyImpl: KeyServiceServer = {
    generateKey: unary("GenerateKey", opts, (r) => k.generateKey(r)),
    getKey: unary("GetKey", opts, (r) => k.getKey(r)),
    listKeys: unary("ListKeys", opts, (r) => k.listKeys(r)),
    deleteKey: unary("DeleteKey", opts, async (r) => {
      await k.deleteKey(r);
      return {};
    }),
    getPublicKey: unary("GetPublicKey", opts, (r) => k.getPublicKey(r)),
    importPublicKey: unary("ImportPublicKey", opts, (r) => k.importPublicKey(r)),
    getImportParameters: unary("GetImportParameters", opts, () => k.getImportParameters()),
    importKey: unary("ImportKey", opts, (r) => k.importKey(r)),
  };
  const cryptoImpl: CryptoServiceServer = {
    encrypt: unary("Encrypt", opts, (r) => k.encrypt(r)),
    decrypt: unary("Decrypt", opts, (r) => k.decrypt(r)),
    sign: unary("Sign", opts, (r) => k.sign(r)),
    verify: unary("Verify", opts, (r) => k.verify(r)),
    wrapKey: unary("WrapKey", opts, (r) => k.wrapKey(r)),
    unwrapKey: unary("UnwrapKey", opts, (r) => k.unwrapKey(r)),
    deriveKey: unary("DeriveKey", opts, (r) => k.deriveKey(r)),
    generateRandom: unary("GenerateRandom", opts, (r) => k.generateRandom(r)),
    batchSign: unary("BatchSign", opts, async (r) => ({ results: (await k.runBatch(r.items, (i) => k.sign(i))).map((result) => ({ result })) })),
    batchVerify: unary("BatchVerify", opts, async (r) => ({ results: (await k.runBatch(r.items, (i) => k.verify(i))).map((result) => ({ result })) })),
    batchEncrypt: unary("BatchEncrypt", opts, async (r) => ({ results: (await k.runBatch(r.items, (i) => k.encrypt(i))).map((result) => ({ result })) })),
    batchDecrypt: unary("BatchDecrypt", opts, async (r) => ({ results: (await k.runBatch(r.items, (i) => k.decrypt(i))).map((result) => ({ result })) })),
  };
  server.addService(KeyServiceService, keyImpl);
  server.addService(CryptoServiceService, cryptoImpl);

  const health = new HealthImplementation({ "": "NOT_SERVING", "hsm.v1.KeyService": "NOT_SERVING", "hsm.v1.CryptoService": "NOT_SERVING" });
  health.addToServer(server);

  const dir = protoDir();
  const pkgDef = protoLoader.loadSync([join(dir, "hsm/v1/keys.proto"), join(dir, "hsm/v1/crypto.proto")], { includeDirs: [dir] });
  new ReflectionService(pkgDef).addToServer(server);
  return { server, health };
}

/**
 * Binds and starts; resolves the bound port (0 picks a free one). The credentials are required (no
 * plaintext by default): build them with `grpcServerCredentials(config)` from `./tls`.
 */
export function bindGrpc(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function setServing(health: HealthImplementation, serving: boolean): void {
  const s = serving ? "SERVING" : "NOT_SERVING";
  for (const name of ["", "hsm.v1.KeyService", "hsm.v1.CryptoService"]) health.setStatus(name, s);
}
