/**
 * Raw gRPC calls for tests that send bytes no SDK would: any method path, any request body (a
 * malformed or oversized protobuf), with or without a session token. Answers the status, never throws.
 */
import * as grpc from "@grpc/grpc-js";

/** The answer of a raw call: the numeric status, its name, the details and the response bytes (OK only). */
export interface RawAnswer {
  code: grpc.status;
  codeName: string;
  details: string;
  response?: Buffer;
}

/** A client that sends and receives messages of any size (the server's limits are what is tested). */
export function rawClient(address: string): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure(), { "grpc.max_send_message_length": -1, "grpc.max_receive_message_length": -1 });
}

/** Sends `body` as the request of `path` (`/hsm.v1.CryptoService/Sign`), with `authorization: Bearer <token>` when given. */
export function rawCall(client: grpc.Client, path: string, body: Buffer, token?: string, deadlineMs = 30_000): Promise<RawAnswer> {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      md,
      { deadline: new Date(Date.now() + deadlineMs) },
      (err, res) => {
        if (err) resolve({ code: err.code, codeName: grpc.status[err.code] ?? String(err.code), details: err.details });
        else resolve({ code: grpc.status.OK, codeName: "OK", details: "", response: res });
      },
    );
  });
}
