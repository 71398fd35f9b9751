/**
 * Requests refused before their handler. grpc-js calls a method's `requestDeserialize` before any
 * handler or interceptor sees the call, and answers INTERNAL ("Error deserializing request") when it
 * throws, without the call ever reaching the audit. {@link guardService} wraps every method's
 * deserializer so that it never throws: it runs the wire check ({@link checkWire}: size, structure,
 * repeated-field counts), then the generated decoder, and on any problem answers a
 * {@link RefusedRequest} instead of a message. The call pipeline (server.ts) answers that with its
 * status (INVALID_ARGUMENT or RESOURCE_EXHAUSTED) and audits it, rate-limited.
 */
import type * as grpc from "@grpc/grpc-js";
import { Code, HsmError } from "../errors";
import { checkWire, peekId, type MessageShape, type WireLimits } from "./wire-check";

/** Stands in for the request of a call whose message was refused before decoding. */
export class RefusedRequest {
  constructor(
    /** The answer: INVALID_ARGUMENT (malformed) or RESOURCE_EXHAUSTED (over a limit), naming what is wrong. */
    readonly error: HsmError,
    /** A stream message's `id` (field 1) as far as it could be read, else 0: its answer carries it. */
    readonly id = 0,
  ) {}
}

/** Longest decoder message quoted back (they are short, but never unbounded). */
const MAX_CAUSE = 160;

/**
 * A copy of `service` whose deserializers never throw (see {@link RefusedRequest}). Every method
 * must have a shape in `shapes` (from the same .proto files as the generated code; for a
 * client-streaming method, the shape of one of its messages): a method without
 * one means the descriptors and the generated code disagree, which fails at start.
 */
export function guardService(service: grpc.ServiceDefinition, shapes: ReadonlyMap<string, MessageShape>, limits: WireLimits): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(service)) {
    const shape = shapes.get(m.path);
    if (!shape) throw new Error(`no .proto descriptor for ${m.path}: regenerate src/gen (npm run gen)`);
    const decode = m.requestDeserialize;
    // A stream's message that does not decode is answered alone, under the id it carries.
    const idOf = m.requestStream ? peekId : () => 0;
    out[name] = {
      ...m,
      requestDeserialize: (buf: Buffer) => {
        const problem = checkWire(buf, shape, limits);
        if (problem) return new RefusedRequest(new HsmError(problem.code === "RESOURCE_EXHAUSTED" ? Code.ResourceExhausted : Code.InvalidArgument, problem.message), idOf(buf));
        try {
          return decode(buf);
        } catch (e) {
          const why = e instanceof Error ? e.message : String(e);
          return new RefusedRequest(new HsmError(Code.InvalidArgument, `request is not a valid ${shape.name}: ${why.slice(0, MAX_CAUSE)}`), idOf(buf));
        }
      },
    };
  }
  return out as grpc.ServiceDefinition;
}
