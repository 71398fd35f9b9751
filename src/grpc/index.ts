/** The gRPC transport: thin adapters over the domain services. */
export { bindGrpc, buildGrpcServer, protoDir, setServing } from "./server";
export { describeTransport, grpcServerCredentials } from "./tls";
export type { GrpcServerOptions, RpcObserver } from "./server";
export { hsmRequestShapes, TRANSPORT_SLACK_BYTES } from "./server";
export { checkWire, requestShapes, type FieldShape, type MessageShape, type WireLimits, type WireProblem } from "./wire-check";
export { guardService, RefusedRequest } from "./refusal";
