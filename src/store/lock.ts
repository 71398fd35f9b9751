/**
 * Single-writer lock on a store directory: a LOCK file holding the owner's pid, created exclusively
 * (link(2) of a file already holding the pid, so LOCK is never seen empty). A lock whose pid is no
 * longer alive (the owner crashed) is taken over.
 */
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { Code, HsmError } from "../errors";

export const LOCK_FILE = "LOCK";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class DirLock {
  private constructor(readonly path: string) {}

  /** `what` names the lock's purpose in the refusal (`state store`, `node data directory`). */
  static acquire(dir: string, what = "state store"): DirLock {
    const path = join(dir, LOCK_FILE);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        // Write the pid to a private file first and link it into place, so LOCK is never seen empty.
        const tmp = `${path}.${process.pid}`;
        const fd = openSync(tmp, "w", 0o600);
        try {
          writeSync(fd, `${process.pid}\n`);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        try {
          linkSync(tmp, path);
        } finally {
          unlinkSync(tmp);
        }
        return new DirLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
          throw new HsmError(Code.Unavailable, `cannot create store lock ${path}: ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
      let text: string;
      try {
        text = readFileSync(path, "utf8");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // released meanwhile: retry
        throw new HsmError(Code.Unavailable, `cannot read store lock ${path}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      const pid = Number.parseInt(text.trim(), 10);
      if (Number.isSafeInteger(pid) && pid > 0 && (pid === process.pid || alive(pid))) {
        throw new HsmError(
          Code.FailedPrecondition,
          `${what} ${dir} is locked by ${pid === process.pid ? "this process" : `process ${pid}`} ` + `(${path}); only one daemon may open a ${what}. If no hsmd runs as pid ${pid}, remove ${path}.`,
        );
      }
      // Stale (owner dead) or unreadable content written by a crash mid-create: take it over.
      try {
        unlinkSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
    throw new HsmError(Code.FailedPrecondition, `could not take the store lock ${path}: another process keeps racing for it`);
  }

  release(): void {
    try {
      const text = readFileSync(this.path, "utf8");
      if (Number.parseInt(text.trim(), 10) === process.pid) unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
