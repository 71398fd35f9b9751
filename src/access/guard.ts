import { Code, HsmError, notFound } from "../errors";
import { isAliasName, type KeyRecord, type KeyService } from "../keys";
import type { Principal, UserService } from "../users";
import { requirePasswordChanged } from "../users";
import { keyAccess } from "./key-access";
import { ROLE_NAMES, RULES, type KeyNeed, type Rule } from "./policy";

const denied = (msg: string) => new HsmError(Code.PermissionDenied, msg);

/** What the roles are for, to say why a call was refused. */
const ROLE_PURPOSE: Readonly<Record<string, string>> = Object.freeze({
  CO: "crypto officers manage users and cannot use keys",
  CU: "crypto users use keys and cannot manage users",
  AU: "appliance users serve the cluster and can do neither crypto nor user management",
});

/**
 * The one place that decides who may do what: authenticates a session token, checks the caller's
 * role against the method's {@link RULES} entry, and a crypto user's access to each key a request
 * names (owner, or shared with). Transport-free: the gRPC layer hands it the bearer token.
 */
export class AccessGuard {
  constructor(
    private readonly users: UserService,
    private readonly keys: KeyService,
  ) {}

  /** The rule of a method; a method without one is refused (deny unless allowed). */
  rule(method: string): Rule {
    const r = RULES[method];
    if (!r) throw denied(`${method} is not allowed to anyone`);
    return r;
  }

  /**
   * The principal of an `authorization` header value (`Bearer <token>`); UNAUTHENTICATED when it is
   * missing, malformed, unknown, expired or revoked.
   */
  async authenticate(authorization: string | undefined): Promise<{ principal: Principal; token: string }> {
    if (!authorization) throw new HsmError(Code.Unauthenticated, "this call needs a session: log in (UserService.Login) and send the token as `authorization: Bearer <token>`");
    const m = /^Bearer ([^\s]+)$/i.exec(authorization.trim());
    if (!m) throw new HsmError(Code.Unauthenticated, "the authorization header must be `Bearer <token>`");
    const token = m[1]!;
    return { principal: await this.users.authenticate(token), token };
  }

  /** Role and one-time-password checks of `method` for `principal` (undefined only for public methods). */
  authorize(method: string, principal: Principal | undefined): void {
    const rule = this.rule(method);
    if (rule.who === "public") return;
    if (!principal) throw new HsmError(Code.Unauthenticated, "this call needs a session");
    if (!rule.duringPasswordChange) requirePasswordChanged(principal, method);
    if (rule.who === "session") return;
    if (!rule.who.includes(principal.role)) {
      const allowed = rule.who.map((r) => ROLE_NAMES[r]).join(" or ");
      throw denied(`${method} is for ${allowed}; ${principal.user} is a ${ROLE_NAMES[principal.role]}: ${ROLE_PURPOSE[principal.role]}`);
    }
  }

  /**
   * The record of a key the principal may access with `need`. A key neither owned by nor shared with
   * the caller answers NOT_FOUND, as if it did not exist (no probing for other users' key ids); a key
   * only shared with the caller answers PERMISSION_DENIED for owner-only actions.
   *
   * Whenever this node's copy would answer NOT_FOUND, the decision is taken again on the record as
   * the replicated store holds it now (one fresh read: a key or share committed on another node a
   * moment ago counts). Both ways to NOT_FOUND, an unknown id and another user's key, so cost the
   * same store read, and the answer's timing does not tell whether the key exists.
   */
  async key(principal: Principal, id: string, need: KeyNeed, field = "key_id"): Promise<KeyRecord> {
    if (isAliasName(id)) id = await this.resolveKeyId(principal, id, field);
    this.keys.checkKeyId(id, field);
    let r = this.keys.known(id);
    let access = keyAccess(r, principal.userId);
    if (access === "none") {
      r = await this.keys.freshRecord(id);
      access = keyAccess(r, principal.userId);
    }
    if (access === "none" || !r) throw notFound(`key ${id} not found`);
    if (access === "shared" && need === "own")
      throw denied(`key ${id} is shared with ${principal.user}, who may use it for crypto; only its owner ${r.owner?.user ?? ""} may delete, share, unshare or wrap it out`);
    return r;
  }

  /**
   * The key id a request field names: itself, or, for "alias/NAME", the key the alias points at as
   * the caller sees it (NOT_FOUND, as for an unknown key id, when the caller may not see the alias).
   * Requests carry aliases only up to here: the pipeline writes the key id back into the request.
   */
  async resolveKeyId(principal: Principal, id: string, field = "key_id"): Promise<string> {
    return isAliasName(id) ? this.keys.aliases.resolve(principal.userId, id, field) : id;
  }

  /** Checks that `principal` may read quorum request data made by `requestedBy` (COs, or the requester). */
  quorumReader(principal: Principal, requestedBy: string, id: string): void {
    if (principal.role === "CO" || principal.user === requestedBy) return;
    throw notFound(`quorum request ${id} not found`);
  }
}
