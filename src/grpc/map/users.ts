/** Users and sessions: domain values ⇄ hsm.v1 messages. */
import { invalid } from "../../errors";
import { Role as ProtoRole, type Session, type User } from "../../gen/hsm/v1/users";
import type { LoginResult, Role, UserInfo } from "../../users";
import { iso } from "./time";

const ROLE_TO_PROTO: Record<Role, ProtoRole> = { CO: ProtoRole.ROLE_CRYPTO_OFFICER, CU: ProtoRole.ROLE_CRYPTO_USER, AU: ProtoRole.ROLE_APPLIANCE_USER };

/** The domain role of a request's `role`; INVALID_ARGUMENT for UNSPECIFIED or an unknown value. */
export function roleFromProto(r: ProtoRole): Role {
  switch (r) {
    case ProtoRole.ROLE_CRYPTO_OFFICER:
      return "CO";
    case ProtoRole.ROLE_CRYPTO_USER:
      return "CU";
    case ProtoRole.ROLE_APPLIANCE_USER:
      return "AU";
    default:
      throw invalid("role must be ROLE_CRYPTO_OFFICER, ROLE_CRYPTO_USER or ROLE_APPLIANCE_USER");
  }
}

/** The API role of a domain role. */
export const roleToProto = (r: Role): ProtoRole => ROLE_TO_PROTO[r];

/** A user as the API shows it (never its hash). */
export function userToProto(u: UserInfo): User {
  return {
    username: u.name,
    role: roleToProto(u.role),
    mustChangePassword: u.mustChangePassword,
    locked: u.locked,
    lockReason: u.lockReason === "failedLogins" ? "failed_logins" : (u.lockReason ?? ""),
    failedLogins: u.failedLogins,
    createdAt: iso(u.createdAt),
    updatedAt: iso(u.updatedAt),
  };
}

/** A login or refresh answer as the API's Session. */
export function sessionToProto(r: LoginResult, username: string): Session {
  return { token: r.token, expiresAt: iso(r.expiresAt), mustChangePassword: r.mustChangePassword, role: roleToProto(r.role), username };
}
