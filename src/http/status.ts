import { Code } from "../errors";

const HTTP: Record<Code, number> = {
  [Code.InvalidArgument]: 400,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.Unauthenticated]: 401,
  [Code.FailedPrecondition]: 412,
  [Code.ResourceExhausted]: 429,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
  [Code.Internal]: 500,
};

/** The HTTP status the admin surface answers for a domain {@link Code} (RFC 9110 semantics). */
export function httpStatusOf(code: Code): number {
  return HTTP[code];
}
