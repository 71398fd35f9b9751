/**
 * The saved session: the bearer token `hsmctl login` got, its user, role and expiry, in a JSON file
 * of mode 600 (its directory 700) that later hsmctl processes read. The token is the only secret in
 * it and is never printed.
 */
import { chmodSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { randomBytes } from "node:crypto";
import type { ExportedSession } from "../sdk";
import { CliFailure, UsageError } from "./errors";
import { ioReason } from "./io";
import { roles } from "./names";

/** What the session file holds. */
export interface SavedSession {
  version: 1;
  username: string;
  /** Short role name (`crypto-user`). */
  role: string;
  token: string;
  /** RFC 3339 */
  expiresAt: string;
  mustChangePassword: boolean;
  /** The endpoints it was made with (informational: a session is valid on every member of a cluster). */
  endpoints: string[];
}

/** The session file's content from a session the SDK client exported. */
export function toSaved(s: ExportedSession, endpoints: string[]): SavedSession {
  return {
    version: 1,
    username: s.username,
    role: roles.name(s.role),
    token: s.token,
    expiresAt: new Date(s.expiresAt).toISOString(),
    mustChangePassword: s.mustChangePassword,
    endpoints,
  };
}

/** The session without its token, for output. */
export function describe(s: SavedSession): { username: string; role: string; expiresAt: string; mustChangePassword: boolean } {
  return { username: s.username, role: s.role, expiresAt: s.expiresAt, mustChangePassword: s.mustChangePassword };
}

/**
 * Writes the session file atomically (a temp file of mode 600 in the same directory, then a rename),
 * creating its directory with mode 700.
 */
export function writeSession(file: string, s: SavedSession): void {
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      writeFileSync(tmp, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600, flag: "wx" });
      chmodSync(tmp, 0o600); // whatever the umask
      renameSync(tmp, file);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
  } catch (err) {
    throw new CliFailure(undefined, `cannot save the session to ${file}: ${ioReason(err)}`);
  }
}

/** The saved session, or undefined when there is no file. A malformed file is a failure. */
export function readSession(file: string): SavedSession | undefined {
  let text: string;
  try {
    const st = lstatSync(file);
    if (!st.isFile()) throw new UsageError(`session file ${file} is not a regular file`);
    text = readFileSync(file, "utf8");
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if ((err as { code?: string }).code === "ENOENT") return undefined;
    throw new CliFailure(undefined, `cannot read the session file ${file}: ${ioReason(err)}`);
  }
  let s: Partial<SavedSession>;
  try {
    s = JSON.parse(text) as Partial<SavedSession>;
  } catch {
    throw new CliFailure(undefined, `the session file ${file} is damaged (not JSON): run "hsmctl login" again`);
  }
  if (s?.version !== 1 || typeof s.token !== "string" || typeof s.username !== "string" || typeof s.expiresAt !== "string") {
    throw new CliFailure(undefined, `the session file ${file} is damaged or from another version: run "hsmctl login" again`);
  }
  return {
    version: 1,
    username: s.username,
    role: typeof s.role === "string" ? s.role : "unspecified",
    token: s.token,
    expiresAt: s.expiresAt,
    mustChangePassword: s.mustChangePassword === true,
    endpoints: Array.isArray(s.endpoints) ? s.endpoints.filter((e): e is string => typeof e === "string") : [],
  };
}

/** True when the file's mode lets anyone but its owner read or write it. */
export function isExposed(file: string): boolean {
  try {
    return (lstatSync(file).mode & 0o077) !== 0;
  } catch {
    return false;
  }
}

/**
 * The saved session for a command that needs one: UNAUTHENTICATED failures when there is none or it
 * has expired (the server would refuse it anyway; this says what to do).
 */
export function requireSession(file: string, now = Date.now()): SavedSession {
  const s = readSession(file);
  if (s === undefined) {
    throw new CliFailure("UNAUTHENTICATED", `not logged in (no session in ${file}): run "hsmctl login --username NAME" first`);
  }
  const expires = Date.parse(s.expiresAt);
  if (!Number.isFinite(expires) || expires <= now) {
    throw new CliFailure("UNAUTHENTICATED", `the session of ${s.username} expired at ${s.expiresAt}: run "hsmctl login --username ${s.username}" again`);
  }
  return s;
}

/** Removes the session file (no error when it is gone already). */
export function removeSession(file: string): void {
  try {
    rmSync(file, { force: true });
  } catch (err) {
    throw new CliFailure(undefined, `cannot remove the session file ${file}: ${ioReason(err)}`);
  }
}
