/** The gRPC transport: thin adapters over the domain services. */
export { bindGrpc, buildGrpcServer, protoDir, setServing } from "./server";
export type { GrpcServerOptions, RpcObserver } from "./server";
