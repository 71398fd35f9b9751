import { writeFileSync } from "node:fs";
import type { Config } from "../config";
import { precondition } from "../errors";
import type { StateStore } from "../store";
import { USERS_INIT_KEY, type UserService, generateOneTimePassword } from "../users";
import { firstOfficerPasswordFile } from "./paths";

/**
 * The users: `init` creates the first crypto officer (`auth.firstOfficer`) with a one-time password
 * that it must change before anything else. The password goes to a file only the daemon's user can
 * read (never to a log); the file is removed when the officer changes it.
 */
export async function ensureUsers(store: StateStore, users: UserService, init: boolean, config: Config, log: (msg: string) => void): Promise<void> {
  if (await store.get(USERS_INIT_KEY)) return;
  if (!init) throw precondition("this node has no users: run `hsmd init` (creates the first crypto officer)");
  const file = firstOfficerPasswordFile(config.node.dataDir);
  // The file is on disk before the officer exists: a crash in between never leaves an officer nobody can log in as.
  const otp = generateOneTimePassword();
  writeFileSync(file, `${otp}\n`, { mode: 0o600, flush: true });
  const first = await users.initialize(config.auth.firstOfficer, otp);
  log(`first crypto officer "${first.name}" created; its one-time password is in ${file} (mode 600): log in and change it (ChangePassword) before anything else`);
}
