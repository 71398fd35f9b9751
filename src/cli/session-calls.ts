/**
 * The session calls whose token hsmctl saves for its later processes: Login, RefreshSession and
 * ChangePassword through the SDK's client, each on the first endpoint that is reachable, the session
 * then taken out of the client with {@link HsmClient.exportSession}.
 */
import { GrpcStatus, HsmClientError, type ExportedSession, type HsmClient } from "../sdk";
import { makeClient, type Settings } from "./connection";

/**
 * One session call on the first endpoint that is reachable, in the order given, all within one
 * deadline: an endpoint that answers UNAVAILABLE is followed by the next; an answer from the server
 * (success or any other error) ends the walk, so no call is repeated after the server answered it.
 */
async function sessionCall(settings: Settings, call: (client: HsmClient, deadlineMs: number) => Promise<unknown>): Promise<ExportedSession> {
  let last: HsmClientError | undefined;
  const deadline = Date.now() + settings.deadlineMs;
  for (const endpoint of settings.endpoints) {
    const client = makeClient({ ...settings, endpoints: [endpoint] });
    try {
      await call(client, Math.max(1, deadline - Date.now()));
      const session = client.exportSession();
      if (session === undefined) throw new HsmClientError(GrpcStatus.INTERNAL, "the server answered no session");
      return session;
    } catch (err) {
      last = HsmClientError.from(err);
      if (last.code !== GrpcStatus.UNAVAILABLE || Date.now() >= deadline) throw last;
    } finally {
      client.close();
    }
  }
  throw last ?? new HsmClientError(GrpcStatus.UNAVAILABLE, "no endpoint answered");
}

/** `Login`: the session, token included, to be saved for later processes. */
export function loginForToken(settings: Settings, username: string, password: string): Promise<ExportedSession> {
  return sessionCall(settings, (client, deadlineMs) => client.login(username, password, { deadlineMs }));
}

/** `ChangePassword` under the saved session's token: the caller's new session, token included. */
export function changePasswordForToken(settings: Settings, token: string, oldPassword: string, newPassword: string): Promise<ExportedSession> {
  return sessionCall(settings, (client, deadlineMs) => {
    // No expiry given: the client must not refresh the saved token before the call.
    client.useToken(token);
    return client.changePassword(oldPassword, newPassword, { deadlineMs });
  });
}

/** `RefreshSession` of the saved session: a fresh session, token included; the old token stops working. */
export function refreshForToken(settings: Settings, token: string): Promise<ExportedSession> {
  return sessionCall(settings, (client, deadlineMs) => {
    client.useToken(token);
    return client.refreshSession({ deadlineMs });
  });
}
