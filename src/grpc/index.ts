/** The gRPC transport: thin adapters over the domain services. */
export { buildGrpcServer, listenGrpc, protoDir, setServing } from "./server";
export { GrpcListener } from "./listener";
export { connectionBudget, freeFds, softFdLimit } from "./fd-budget";
export { describeTransport, grpcServerCredentials } from "./tls";
export type { BuiltGrpcServer, CryptoStreams, GrpcConnectionOptions, GrpcServerOptions, GrpcStreamOptions, RpcObserver, StreamTally, StreamUse } from "./server";
export type { ConnectionBudget } from "./fd-budget";
export { hsmRequestShapes, hsmStreamRequestShapes, TRANSPORT_SLACK_BYTES } from "./server";
export { checkWire, peekId, requestShapes, type FieldShape, type MessageShape, type WireLimits, type WireProblem } from "./wire-check";
export { guardService, RefusedRequest } from "./refusal";
export { grpcStatusOf } from "./status";
