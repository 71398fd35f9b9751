/** fsync(2) of a directory: makes a file created or renamed in it durable (POSIX leaves that to the caller). */
import { closeSync, fsyncSync, openSync } from "node:fs";

/** Flushes the directory entry of a file just created or renamed in `dir`. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
