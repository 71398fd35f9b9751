import type { GrpcConfig } from "./types";

/*
 * The `grpc` section: how the daemon serves its long-lived calls (the crypto stream,
 * CryptoService.CryptoStream). Defaults and bounds side by side with the schema, as in `schema.ts`.
 */

/** Default and bounds of each integer field of `grpc`. */
export const GRPC_FIELDS = Object.freeze({
  streamMaxInFlight: {
    default: 256,
    min: 1,
    max: 65_536,
    description: "operations one crypto stream may have in flight (read, not yet handed to HTTP/2); at the limit the daemon stops reading the stream, so HTTP/2 flow control pushes back on the client",
  },
  streamMaxInFlightTotal: {
    default: 4096,
    min: 1,
    max: 1_048_576,
    description: "operations all crypto streams of the daemon together may have in flight; at the limit every stream stops reading until answers go out",
  },
  streamAuthRecheckMs: {
    default: 250,
    min: 10,
    max: 60_000,
    description:
      "how often an open crypto stream's session is authenticated again (one store read per session and interval, shared by its streams): a logout, lock, password change or revocation ends the stream with UNAUTHENTICATED within about this long",
  },
} as const);

/** JSON Schema of the `grpc` section. */
export const GRPC_SCHEMA = {
  type: "object",
  additionalProperties: false,
  description: "how the gRPC server serves its streams",
  properties: Object.fromEntries(Object.entries(GRPC_FIELDS).map(([k, v]) => [k, { type: "integer", minimum: v.min, maximum: v.max, default: v.default, description: v.description }])),
} as const;

/** The section as it appears in a document that passed the schema. */
export type RawGrpc = { -readonly [K in keyof typeof GRPC_FIELDS]?: number };

/** Defaults applied. */
export function compileGrpc(raw: RawGrpc = {}): GrpcConfig {
  const v = <K extends keyof typeof GRPC_FIELDS>(k: K) => raw[k] ?? GRPC_FIELDS[k].default;
  return { streamMaxInFlight: v("streamMaxInFlight"), streamMaxInFlightTotal: v("streamMaxInFlightTotal"), streamAuthRecheckMs: v("streamAuthRecheckMs") };
}
