import { status as GrpcStatus } from "@grpc/grpc-js";
import { Code } from "../errors";

const GRPC: Record<Code, GrpcStatus> = {
  [Code.InvalidArgument]: GrpcStatus.INVALID_ARGUMENT,
  [Code.NotFound]: GrpcStatus.NOT_FOUND,
  [Code.AlreadyExists]: GrpcStatus.ALREADY_EXISTS,
  [Code.PermissionDenied]: GrpcStatus.PERMISSION_DENIED,
  [Code.Unauthenticated]: GrpcStatus.UNAUTHENTICATED,
  [Code.FailedPrecondition]: GrpcStatus.FAILED_PRECONDITION,
  [Code.ResourceExhausted]: GrpcStatus.RESOURCE_EXHAUSTED,
  [Code.Unavailable]: GrpcStatus.UNAVAILABLE,
  [Code.DeadlineExceeded]: GrpcStatus.DEADLINE_EXCEEDED,
  [Code.Internal]: GrpcStatus.INTERNAL,
};

/**
 * The gRPC status for a domain {@link Code} (the status of the same name): the only way an error
 * code becomes a status, so that no CKR_* number in a thrown error's `code` reaches a client.
 */
export function grpcStatusOf(code: Code): GrpcStatus {
  return GRPC[code];
}
