/**
 * The operations the crypto stream (`CryptoService.CryptoStream`) carries, typed from the generated
 * oneofs, and how one answer becomes the result or the {@link HsmClientError} the unary call gives.
 */
import { status } from "@grpc/grpc-js";
import type { CryptoStreamRequest, CryptoStreamResponse } from "../gen/hsm/v1/crypto";
import { HsmClientError } from "./client-error";

/** One operation of the stream: the `op` oneof of `CryptoStreamRequest` (`{ $case: "sign", value }`). */
export type StreamOp = NonNullable<CryptoStreamRequest["op"]>;
/** The operation kinds: "sign", "verify", "encrypt", "decrypt", "generateRandom", the data keys. */
export type StreamOpCase = StreamOp["$case"];
/** The request message of one kind (`SignRequest` for "sign"). */
export type StreamRequestOf<C extends StreamOpCase> = Extract<StreamOp, { $case: C }>["value"];
/** The response message of one kind (`SignResponse` for "sign"). */
export type StreamResultOf<C extends StreamOpCase> = Extract<NonNullable<CryptoStreamResponse["result"]>, { $case: C }>["value"];

/** The largest gRPC status number; an `ItemError.code` above it (or below 0) is not a status. */
const MAX_STATUS = status.UNAUTHENTICATED;

/**
 * The answer to `op` as the unary call would give it: the response message, or the HsmClientError of
 * the answer's `ItemError` (same code, same message). An answer of another kind than the request, or
 * an error whose code is not a gRPC status, is a broken daemon: INTERNAL / UNKNOWN, saying so.
 */
export function answerOf(op: StreamOp, response: CryptoStreamResponse): { ok: true; value: unknown } | { ok: false; error: HsmClientError } {
  const result = response.result;
  if (result?.$case === "error") {
    const { code, message } = result.value;
    const valid = Number.isInteger(code) && code > status.OK && code <= MAX_STATUS;
    return { ok: false, error: new HsmClientError(valid ? (code as status) : status.UNKNOWN, valid ? message : `the daemon answered error code ${code}: ${message}`) };
  }
  if (result?.$case !== op.$case) {
    const got = result === undefined ? "nothing" : `a ${result.$case} result`;
    return { ok: false, error: new HsmClientError(status.INTERNAL, `the daemon answered a ${op.$case} on the crypto stream with ${got}`) };
  }
  return { ok: true, value: result.value };
}
