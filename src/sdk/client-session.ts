/**
 * The session of an {@link HsmClient}: login, logout, refresh and password change, the token kept
 * (handed out only by exportSession) and refreshed in the last quarter of its life, and the shared re-login with
 * {@link HsmClientOptions.credentials} after UNAUTHENTICATED.
 */
import * as grpc from "@grpc/grpc-js";
import { UserServiceService, ChangePasswordRequest, LoginRequest, LogoutRequest, RefreshSessionRequest, type LogoutResponse, type Session } from "../gen/hsm/v1/users";
import { HsmClientError } from "./client-error";
import { within } from "./call-support";
import { HsmClientPipeline } from "./client-pipeline";
import type { CallOptions, ExportedSession, SessionInfo } from "./client-types";

/** The session layer of an {@link HsmClient}. */
export abstract class HsmClientSessions extends HsmClientPipeline {
  private sessionInfo: SessionInfo | undefined;
  private refreshAt = 0;
  private refreshing: Promise<unknown> | undefined;
  /** The re-login in flight, shared by every call that met UNAUTHENTICATED meanwhile. */
  private relogging: Promise<void> | undefined;

  /**
   * Logs in (`Login`) and keeps the session: every later call sends its token, and the client
   * refreshes it (`RefreshSession`) on the first call made in the last quarter of its lifetime, so a
   * long-lived client stays logged in without keeping the password. The password is not stored.
   * A first crypto officer (or a user whose password was reset) must {@link changePassword} first.
   */
  async login(username: string, password: string, options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.login, () => LoginRequest.fromPartial({ username, password }), options, false);
    return this.adopt(s);
  }

  /** Ends the session on the server (`Logout`) and forgets it here. */
  async logout(options?: CallOptions): Promise<LogoutResponse> {
    try {
      return await this.call(UserServiceService.logout, () => LogoutRequest.fromPartial({}), options, false);
    } finally {
      this.forget();
    }
  }

  /** Exchanges the session's token for a fresh one now (`RefreshSession`); the old one stops working. */
  async refreshSession(options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.refreshSession, () => RefreshSessionRequest.fromPartial({}), options, false);
    return this.adopt(s);
  }

  /** Changes the logged-in user's password (`ChangePassword`); every other session of the user ends, this one carries on with a new token. */
  async changePassword(oldPassword: string, newPassword: string, options?: CallOptions): Promise<SessionInfo> {
    const s = await this.call(UserServiceService.changePassword, () => ChangePasswordRequest.fromPartial({ oldPassword, newPassword }), options);
    return this.adopt(s);
  }

  /** Uses a token obtained elsewhere (e.g. by another process's login); `undefined` forgets the session. */
  useToken(token: string | undefined, expiresAt?: Date): void {
    this.token = token;
    this.sessionInfo = undefined;
    this.refreshAt = expiresAt ? expiresAt.getTime() - 60_000 : Number.POSITIVE_INFINITY;
  }

  /** The current session (username, role, expiry), or undefined when not logged in. */
  get session(): SessionInfo | undefined {
    return this.sessionInfo ? { ...this.sessionInfo } : undefined;
  }

  /**
   * The current session with its bearer token, for a program that must keep the session beyond this
   * client (hsmctl saves it for its later processes, which hand it back with {@link useToken}); the
   * client itself never sends the token anywhere but in its calls. Undefined when not logged in, and
   * after {@link useToken} until the next login, refresh or password change answers the session's facts.
   */
  exportSession(): ExportedSession | undefined {
    if (this.token === undefined || this.sessionInfo === undefined) return undefined;
    return { ...this.sessionInfo, token: this.token };
  }

  private adopt(s: Session): SessionInfo {
    const expiresAt = new Date(s.expiresAt);
    const now = Date.now();
    this.token = s.token;
    this.sessionInfo = { username: s.username, role: s.role, expiresAt, mustChangePassword: s.mustChangePassword };
    this.refreshAt = expiresAt.getTime() - Math.max(0, expiresAt.getTime() - now) / 4;
    return { ...this.sessionInfo };
  }

  private forget(): void {
    this.token = undefined;
    this.sessionInfo = undefined;
    this.refreshAt = 0;
  }

  /** Refreshes the token once (shared by concurrent calls) when it is in the last quarter of its life. */
  protected async freshToken(): Promise<void> {
    if (this.token === undefined || Date.now() < this.refreshAt) return;
    this.refreshing ??= this.refreshSession()
      .catch(() => undefined) // a failed refresh leaves the old token: the call itself then says why
      .finally(() => {
        this.refreshing = undefined;
      });
    await this.refreshing;
  }

  /**
   * Logs in again with the configured credentials, once for every call that meets UNAUTHENTICATED
   * meanwhile. A call whose token was already replaced (by a re-login, refresh or login that finished
   * after it was sent) needs none: it just uses the new one.
   */
  protected async relogin(staleToken: string | undefined, deadline: Date, signal: AbortSignal | undefined): Promise<void> {
    if (this.token !== staleToken && this.token !== undefined) return;
    const provider = this.options.credentialsProvider!;
    this.relogging ??= (async () => {
      this.counters.relogins += 1;
      let credentials: { username: string; password: string };
      try {
        credentials = await provider();
      } catch (err) {
        throw HsmClientError.from(err, grpc.status.UNAUTHENTICATED);
      }
      await this.login(credentials.username, credentials.password, { deadlineMs: Math.max(1, deadline.getTime() - Date.now()) });
    })().finally(() => {
      this.relogging = undefined;
    });
    await within(this.relogging, deadline, signal);
  }
}
