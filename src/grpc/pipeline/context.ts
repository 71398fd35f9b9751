import type * as grpc from "@grpc/grpc-js";
import { HsmError } from "../../errors";
import type { Principal } from "../../users";

/** Trailer (and error metadata) naming the quorum request a refused call recorded. */
export const QUORUM_REQUEST_HEADER = "hsmd-quorum-request-id";
/** Request id header: echoed in the trailer, recorded in the audit entry. */
export const REQUEST_ID_HEADER = "x-request-id";

/** What a handler knows about its call besides the request. */
export interface CallContext {
  method: string;
  /** Set for every method but Login. */
  principal?: Principal;
  token?: string;
  peer: string;
  requestId: string;
  /** Audit fields the handler learns (the created key, the user that logged in, a short detail). */
  audit: { user?: string; role?: string; keyId?: string; target?: string; detail?: string };
  /** Sent back as trailing metadata (also on errors). */
  trailer: grpc.Metadata;
  /** Batches: the access check of one item's key (rejects for a denied item). */
  checkItem: (keyId: string) => Promise<void>;
}

/** A service method's body: the request and its call context in, the response out. */
export type Handler<Req, Res> = (req: Req, c: CallContext) => Promise<Res> | Res;

const SAFE_TEXT = /^[^\u0000-\u001f\u007f]+$/;
/** A value fit for an audit field (1..max characters, no control characters), else undefined. */
export function auditable(v: unknown, max = 128): string | undefined {
  return typeof v === "string" && v.length > 0 && v.length <= max && SAFE_TEXT.test(v) ? v : undefined;
}

/**
 * A request id as a trailer value: gRPC metadata values are printable ASCII, and grpc-js throws on
 * anything else (the call then died with UNKNOWN, unaudited), so other ids are sent percent-encoded.
 */
export function headerValue(id: string): string {
  return /^[\x20-\x7e]*$/.test(id) ? id : encodeURIComponent(id);
}

/** The underlying cause of an error, for the daemon's log (never sent to a client). */
export function describeCause(e: unknown): string {
  const c = e instanceof HsmError && e.cause ? e.cause : e;
  return c instanceof Error ? `${c.name}: ${c.message}` : String(c);
}
