/** The gRPC transport: thin adapters over the domain services. */
export { bindGrpc, buildGrpcServer, protoDir, setServing } from "./server";
export { describeTransport, grpcServerCredentials } from "./tls";
export type { GrpcServerOptions, RpcObserver } from "./server";
