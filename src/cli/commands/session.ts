/** `login`, `logout` and `whoami`: the saved session. */
import { GrpcStatus, HsmClientError } from "../../sdk";
import { loginForToken, refreshForToken } from "../session-calls";
import { CliFailure } from "../errors";
import { readSecret } from "../secrets";
import { describe, isExposed, readSession, removeSession, toSaved, writeSession, type SavedSession } from "../session";
import { fields } from "../render";
import { requireString, type CommandSpec } from "../spec";

const USERNAME = { type: "string", arg: "NAME", required: true, description: "the user to log in as" } as const;

/** The saved session, or UNAUTHENTICATED "not logged in" when there is none. */
function savedSession(sessionFile: string): SavedSession {
  const saved = readSession(sessionFile);
  if (saved === undefined) throw new CliFailure("UNAUTHENTICATED", `not logged in (no session in ${sessionFile})`);
  return saved;
}

export const sessionCommands: CommandSpec[] = [
  {
    words: ["login"],
    summary: "log in and save the session for later commands",
    details: `Logs in with the user's password and saves the session token, its user, role and expiry to the
session file (mode 600; --session-file, HSMCTL_SESSION_FILE, default ~/.config/hsmctl/session.json).
Later commands use it until it expires or "hsmctl logout" ends it; the token is never printed.
The password comes from HSMCTL_PASSWORD or a prompt on the terminal (no echo), never from a flag.
A first crypto officer, or a user whose password was reset, must run "hsmctl user change-password"
next: the server allows nothing else until then.`,
    options: { username: USERNAME },
    env: { HSMCTL_PASSWORD: "the password (else a prompt on the terminal)" },
    examples: ["hsmctl --endpoint hsmd.internal:7443 --ca ca.pem login --username alice", "HSMCTL_PASSWORD=… hsmctl login --username alice --output json"],
    needsSession: false,
    async run(ctx, values) {
      const username = requireString(values, "username");
      const settings = ctx.settings();
      const password = await readSecret(ctx.io, { envName: "HSMCTL_PASSWORD", prompt: `Password for ${username}: `, what: "the password" });
      const session = await loginForToken(settings, username, password);
      const saved = toSaved(session, settings.endpoints);
      writeSession(settings.sessionFile, saved);
      ctx.emit({ ...describe(saved), sessionFile: settings.sessionFile }, () => {
        const lines = [`logged in as ${saved.username} (${saved.role}) until ${saved.expiresAt}; session saved to ${settings.sessionFile}`];
        if (saved.mustChangePassword) lines.push(`${saved.username} must change its password before anything else: hsmctl user change-password`);
        return lines.join("\n");
      });
    },
  },
  {
    words: ["logout"],
    summary: "end the saved session on the server and remove the session file",
    details: `Ends the session on the server (Logout) and deletes the session file. A session that had already
expired or been ended is just removed. When the server cannot be reached the file is kept, so that
the session can still be ended later.`,
    options: {},
    needsSession: false,
    async run(ctx) {
      const { sessionFile } = ctx;
      const saved = savedSession(sessionFile);
      let note = "";
      if (Date.parse(saved.expiresAt) <= Date.now()) {
        note = " (it had expired)";
      } else {
        try {
          await ctx.client().logout();
        } catch (err) {
          const e = HsmClientError.from(err);
          if (e.code !== GrpcStatus.UNAUTHENTICATED) {
            throw new CliFailure(e.codeName, `${e.details} (the session file ${sessionFile} was kept: run logout again)`);
          }
          note = " (the server had already ended it)";
        }
      }
      removeSession(sessionFile);
      ctx.emit({ username: saved.username, loggedOut: true, sessionFile }, `logged out ${saved.username}${note}; removed ${sessionFile}`);
    },
  },
  {
    words: ["refresh"],
    summary: "exchange the saved session's token for a fresh one and save it",
    details: `Exchanges the saved session's token for a new one with a full lifetime (RefreshSession) and
saves it to the session file. The old token stops working at once, also in any other hsmctl
process or script that is using the same session file right now: refresh between batches of work,
not during one. hsmctl never refreshes on its own, for that reason. An expired or ended session
cannot be refreshed: log in again.`,
    options: {},
    needsSession: false,
    async run(ctx) {
      const { sessionFile } = ctx;
      const saved = savedSession(sessionFile);
      if (Date.parse(saved.expiresAt) <= Date.now()) {
        throw new CliFailure("UNAUTHENTICATED", `the session of ${saved.username} expired at ${saved.expiresAt}: run "hsmctl login --username ${saved.username}" again`);
      }
      const settings = ctx.settings();
      let fresh;
      try {
        fresh = await refreshForToken(settings, saved.token);
      } catch (err) {
        const e = HsmClientError.from(err);
        const hint = e.code === GrpcStatus.UNAUTHENTICATED ? `; run "hsmctl login --username ${saved.username}" again` : " (the session file was kept)";
        throw new CliFailure(e.codeName, `${e.details}${hint}`);
      }
      const next = toSaved(fresh, saved.endpoints);
      writeSession(sessionFile, next);
      ctx.emit({ ...describe(next), sessionFile }, `refreshed the session of ${next.username} (${next.role}): valid until ${next.expiresAt}; saved to ${sessionFile}`);
    },
  },
  {
    words: ["whoami"],
    summary: "show the saved session (user, role, expiry; never the token)",
    options: {},
    needsSession: false,
    async run(ctx) {
      const { sessionFile } = ctx;
      const saved = savedSession(sessionFile);
      if (isExposed(sessionFile)) ctx.note(`warning: ${sessionFile} is readable by others: chmod 600 it`);
      const expired = Date.parse(saved.expiresAt) <= Date.now();
      ctx.emit({ ...describe(saved), expired, endpoints: saved.endpoints, sessionFile }, () =>
        fields([
          ["username", saved.username],
          ["role", saved.role],
          ["expires", `${saved.expiresAt}${expired ? " (EXPIRED)" : ""}`],
          ["must change password", saved.mustChangePassword ? "yes" : undefined],
          ["endpoints", saved.endpoints.join(", ")],
          ["session file", sessionFile],
        ]),
      );
      if (expired) return 1;
    },
  },
];
