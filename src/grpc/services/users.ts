import { invalid } from "../../errors";
import type { UserServiceServer } from "../../gen/hsm/v1/users";
import { roleFromProto, sessionToProto, userToProto } from "../map/users";
import type { GrpcServerOptions } from "../options";
import type { Pipeline } from "../pipeline/pipeline";

/** hsm.v1.UserService: sessions and user admin, proto ⇄ domain over the {@link UserService}. */
export function userService(opts: GrpcServerOptions, p: Pipeline): UserServiceServer {
  const { keys: k, users } = opts;
  const { rpc, withQuorum } = p;
  return {
    login: rpc("Login", async (r, c) => {
      // Before anything else: a refused login costs no hash and no store read.
      opts.loginLimiter?.admitLogin(c.peer);
      if (!r.username) throw invalid("username is required");
      if (!r.password) throw invalid("password is required");
      const res = await users.login(r.username, r.password, c.peer ? { client: c.peer.slice(0, 256) } : undefined);
      c.audit.user = r.username;
      c.audit.role = res.role;
      return sessionToProto(res, r.username);
    }),
    logout: rpc("Logout", async (_r, c) => {
      await users.logout(c.token!);
      return {};
    }),
    refreshSession: rpc("RefreshSession", async (_r, c) => sessionToProto(await users.refresh(c.token!), c.principal!.user)),
    changePassword: rpc("ChangePassword", async (r, c) => {
      const res = await users.changePassword(c.principal!, r.oldPassword, r.newPassword);
      opts.onPasswordChanged?.(c.principal!.user);
      return sessionToProto(res, c.principal!.user);
    }),
    createUser: rpc("CreateUser", async (r, c) => userToProto(await users.createUser(c.principal!, r.username, roleFromProto(r.role), r.password, { mustChangePassword: r.mustChangePassword }))),
    getUser: rpc("GetUser", async (r) => userToProto(await users.getUser(r.username))),
    listUsers: rpc("ListUsers", async (_r, c) => ({ users: (await users.listUsers(c.principal!)).map(userToProto) })),
    deleteUser: rpc("DeleteUser", async (r, c) => {
      await users.checkDeletable(c.principal!, r.username, (userId) => k.ownedBy(userId));
      await withQuorum(c, "DeleteUser", { username: r.username }, r.quorumRequestId, () => users.deleteUser(c.principal!, r.username));
      return {};
    }),
    lockUser: rpc("LockUser", async (r, c) => userToProto(await users.lockUser(c.principal!, r.username))),
    unlockUser: rpc("UnlockUser", async (r, c) => userToProto(await users.unlockUser(c.principal!, r.username))),
    resetPassword: rpc("ResetPassword", async (r, c) => {
      await users.checkResettable(c.principal!, r.username, r.newPassword);
      return userToProto(await withQuorum(c, "ResetPassword", { username: r.username }, r.quorumRequestId, () => users.resetPassword(c.principal!, r.username, r.newPassword)));
    }),
  };
}
