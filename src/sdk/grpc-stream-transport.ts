/**
 * A `CryptoService.CryptoStream` call on an endpoint's channel as a {@link StreamTransport}: the
 * session token in the `authorization` metadata (as every unary call sends it), requests encoded
 * here so that one that cannot be encoded fails alone, and the end reported once every answer
 * before it was delivered.
 */
import * as grpc from "@grpc/grpc-js";
import { CryptoServiceService, CryptoStreamRequest, type CryptoStreamResponse } from "../gen/hsm/v1/crypto";
import { HsmClientError } from "./client-error";
import type { Endpoint } from "./endpoints";
import type { OpenStream, StreamEvents, StreamTransport } from "./stream-conn";

const METHOD = CryptoServiceService.cryptoStream;
/** Requests arrive encoded (see {@link StreamTransport.write}); grpc-js passes them on as they are. */
const passThrough = (bytes: Buffer): Buffer => bytes;

/** Opens crypto streams on `endpoint`'s channel, with no deadline (each operation has its own). */
export function grpcStreamOpener(endpoint: Endpoint): OpenStream {
  return (token, events) => openCryptoStream(endpoint, token, events);
}

function openCryptoStream(endpoint: Endpoint, token: string | undefined, events: StreamEvents): StreamTransport {
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
  let call: grpc.ClientDuplexStream<Buffer, CryptoStreamResponse>;
  try {
    call = endpoint.client.makeBidiStreamRequest(METHOD.path, passThrough, METHOD.responseDeserialize, metadata, {});
  } catch (err) {
    // A closed channel throws: report it as the stream's end, later, as a real stream would.
    const error = HsmClientError.from(err, grpc.status.UNAVAILABLE);
    setImmediate(() => events.onEnd(error));
    return { write: () => true, end: () => undefined, cancel: () => undefined };
  }
  let status: grpc.StatusObject | undefined;
  let readEnded = false;
  let reported = false;
  // The end is reported once the status is known and every answer before it was delivered.
  const report = (): void => {
    if (reported || status === undefined || !readEnded) return;
    reported = true;
    const s = status;
    events.onEnd(s.code === grpc.status.OK ? undefined : new HsmClientError(s.code, s.details, { metadata: s.metadata }));
  };
  call.on("data", (response: CryptoStreamResponse) => events.onResponse(response));
  call.on("drain", () => events.onDrain());
  call.on("error", () => undefined); // the 'status' event carries the same status
  call.on("end", () => {
    readEnded = true;
    report();
  });
  call.on("close", () => {
    readEnded = true;
    report();
  });
  call.on("status", (s: grpc.StatusObject) => {
    status = s;
    report();
  });
  return {
    write: (request) => call.write(Buffer.from(CryptoStreamRequest.encode(request).finish())),
    end: () => call.end(),
    cancel: () => call.cancel(),
  };
}
