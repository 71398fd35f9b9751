import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { MAX_DETAIL_LENGTH, type AuditEntry, type AuditThrottle } from "../../audit";
import type { HsmError } from "../../errors";
import type { GrpcServerOptions } from "../options";
import { grpcStatusOf } from "../status";
import { REQUEST_ID_HEADER, auditable, describeCause, headerValue } from "./context";
import { auditUnwritable } from "./record";

/** What the refusal path needs from the server's options. */
export type RefusedOptions = Pick<GrpcServerOptions, "gate" | "observe" | "log">;

/**
 * Answers a request refused before decoding (see ./refusal.ts), without reading its session: the
 * refusal is audited through the {@link AuditThrottle} (the first of each second per client host,
 * method and status at once, the others as a count), so that a flood cannot fill the log.
 */
export function answerRefused(
  opts: RefusedOptions,
  refusals: AuditThrottle,
  method: string,
  call: grpc.ServerUnaryCall<unknown, unknown>,
  callback: grpc.sendUnaryData<unknown>,
  refusal: HsmError,
  t0: bigint,
): void {
  const trailer = new grpc.Metadata();
  const requestId = auditable(call.metadata.get(REQUEST_ID_HEADER)[0]) ?? randomUUID();
  trailer.set(REQUEST_ID_HEADER, headerValue(requestId));
  const answer = (err: HsmError) => {
    opts.observe?.(method, err.code, Number(process.hrtime.bigint() - t0) / 1e9);
    callback({ code: grpcStatusOf(err.code), details: err.message, metadata: trailer } as grpc.ServiceError);
  };
  const closed = opts.gate?.();
  if (closed) return answer(closed);
  const entry: AuditEntry = {
    operation: method,
    status: refusal.code,
    requestId,
    client: auditable(call.getPeer(), 256),
    detail: `refused before decoding: ${refusal.message}`.replace(/[\u0000-\u001f\u007f]/g, " ").slice(0, MAX_DETAIL_LENGTH),
  };
  refusals.record(entry).then(
    () => answer(refusal),
    (e: unknown) => {
      opts.log?.(`audit log append failed for ${method} (${refusal.code}): ${describeCause(e)}`);
      answer(auditUnwritable());
    },
  );
}
