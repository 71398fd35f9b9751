/** `user …`: users and passwords (crypto officers, except change-password, which is every user's own). */
import { Role } from "../../sdk";
import { changePasswordForToken } from "../session-calls";
import { roles } from "../names";
import { userText, userView, usersText } from "../render";
import { readSecret } from "../secrets";
import { describe, toSaved, writeSession } from "../session";
import { requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const USERNAME: OptionSpec = { type: "string", arg: "NAME", required: true, description: "the user" };
const QUORUM: OptionSpec = {
  type: "string",
  arg: "ID",
  description: "an approved quorum request for this very operation (when the daemon requires M-of-N approval)",
};
const NEW_PASSWORD_ENV = { HSMCTL_NEW_PASSWORD: "the new password, 8 to 64 characters (else a prompt on the terminal, asked twice)" };

function newPassword(ctx: Parameters<CommandSpec["run"]>[0], whose: string): Promise<string> {
  return readSecret(ctx.io, { envName: "HSMCTL_NEW_PASSWORD", prompt: `New password for ${whose}: `, confirm: true, what: "the new password" });
}

export const userCommands: CommandSpec[] = [
  {
    words: ["user", "create"],
    summary: "create a user (crypto officers)",
    details: `Creates a crypto user (default), crypto officer or appliance user. The password comes from
HSMCTL_NEW_PASSWORD or a prompt (asked twice). With --must-change-password the user has to change
it at its first login.`,
    options: {
      username: { ...USERNAME, description: "1 to 32 characters: lowercase letters, digits, '.', '_', '-'" },
      role: { type: "string", arg: "ROLE", description: "crypto-user (default, or cu), crypto-officer (co) or appliance-user (au)" },
      "must-change-password": { type: "boolean", description: "make the user change this password at its first login" },
    },
    env: NEW_PASSWORD_ENV,
    examples: ["HSMCTL_NEW_PASSWORD=… hsmctl user create --username alice", "hsmctl user create --username bob --role crypto-officer --must-change-password"],
    async run(ctx, values) {
      const username = requireString(values, "username");
      const roleText = stringValue(values, "role");
      const role = roleText === undefined ? Role.ROLE_CRYPTO_USER : roles.parse(roleText, "--role");
      const client = ctx.client();
      const password = await newPassword(ctx, username);
      const user = await client.createUser({ username, role, password, mustChangePassword: values["must-change-password"] === true });
      ctx.emit(userView(user), `created ${roles.name(user.role)} ${user.username}`);
    },
  },
  {
    words: ["user", "list"],
    summary: "list the users (crypto officers)",
    options: {},
    async run(ctx) {
      const { users } = await ctx.client().listUsers();
      ctx.emit({ users: users.map(userView) }, usersText(users));
    },
  },
  {
    words: ["user", "get"],
    summary: "show one user (crypto officers)",
    options: { username: USERNAME },
    async run(ctx, values) {
      const user = await ctx.client().getUser({ username: requireString(values, "username") });
      ctx.emit(userView(user), userText(user));
    },
  },
  {
    words: ["user", "delete"],
    summary: "delete a user (crypto officers; may need a quorum)",
    details: `Deletes a user and ends its sessions. When the daemon requires a quorum for DeleteUser, the first
call records a quorum request and fails with FAILED_PRECONDITION naming it; once enough crypto
officers approved it (hsmctl quorum approve --id ID), run the same command with --quorum-request-id ID.`,
    options: { username: USERNAME, "quorum-request-id": QUORUM },
    async run(ctx, values) {
      const username = requireString(values, "username");
      await ctx.client().deleteUser({ username, quorumRequestId: stringValue(values, "quorum-request-id") ?? "" });
      ctx.emit({ username, deleted: true }, `deleted user ${username}`);
    },
  },
  {
    words: ["user", "change-password"],
    summary: "change the logged-in user's own password",
    details: `Changes the password of the user of the saved session. The current password comes from
HSMCTL_PASSWORD or a prompt, the new one from HSMCTL_NEW_PASSWORD or a prompt (asked twice). Every
other session of the user ends; the saved session is replaced by the new one the server answers.`,
    options: {},
    env: { HSMCTL_PASSWORD: "the current password (else a prompt)", ...NEW_PASSWORD_ENV },
    async run(ctx) {
      const session = ctx.session();
      const settings = ctx.settings();
      const oldPassword = await readSecret(ctx.io, { envName: "HSMCTL_PASSWORD", prompt: `Current password for ${session.username}: `, what: "the current password" });
      const password = await newPassword(ctx, session.username);
      const fresh = await changePasswordForToken(settings, session.token, oldPassword, password);
      const saved = toSaved(fresh, settings.endpoints);
      writeSession(ctx.sessionFile, saved);
      ctx.emit(
        { ...describe(saved), passwordChanged: true, sessionFile: ctx.sessionFile },
        `password of ${saved.username} changed; its other sessions ended; this one is renewed until ${saved.expiresAt}`,
      );
    },
  },
  {
    words: ["user", "lock"],
    summary: "lock a user and end its sessions (crypto officers)",
    options: { username: USERNAME },
    async run(ctx, values) {
      const user = await ctx.client().lockUser({ username: requireString(values, "username") });
      ctx.emit(userView(user), `locked ${user.username}`);
    },
  },
  {
    words: ["user", "unlock"],
    summary: "unlock a user and clear its failed-login count (crypto officers)",
    options: { username: USERNAME },
    async run(ctx, values) {
      const user = await ctx.client().unlockUser({ username: requireString(values, "username") });
      ctx.emit(userView(user), `unlocked ${user.username}`);
    },
  },
  {
    words: ["user", "reset-password"],
    summary: "set another user's password, to be changed at its next login (crypto officers; may need a quorum)",
    options: { username: USERNAME, "quorum-request-id": QUORUM },
    env: NEW_PASSWORD_ENV,
    async run(ctx, values) {
      const username = requireString(values, "username");
      const client = ctx.client();
      const password = await newPassword(ctx, username);
      const user = await client.resetPassword({ username, newPassword: password, quorumRequestId: stringValue(values, "quorum-request-id") ?? "" });
      ctx.emit(userView(user), `password of ${user.username} reset: it must change it at its next login`);
    },
  },
];
