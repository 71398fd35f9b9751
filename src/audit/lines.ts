/**
 * Streams a file as lines without loading it whole. Unlike node:readline it reports each line's byte
 * offset and whether it ended with a newline, which the audit log needs to tell a torn last line (a
 * write cut short by a crash, never acknowledged) from a complete one.
 */
import { createReadStream } from "node:fs";

/** One line of a file. */
export interface FileLine {
  /** 1-based line number. */
  line: number;
  /** Byte offset of the line's first byte. */
  offset: number;
  /** The line's text (UTF-8, without the newline). */
  text: string;
  /** False only for a last line that has no trailing newline. */
  terminated: boolean;
}

/** Yields the lines of `path` one at a time (64 KiB reads). A file ending in "\n" has no empty last line. */
export async function* readLines(path: string): AsyncGenerator<FileLine> {
  let pending: Buffer[] = [];
  let pendingLen = 0;
  let offset = 0;
  let line = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 64 * 1024 })) {
    const buf = chunk as Buffer;
    let start = 0;
    for (let nl = buf.indexOf(0x0a, start); nl !== -1; nl = buf.indexOf(0x0a, start)) {
      const piece = buf.subarray(start, nl);
      const whole = pendingLen > 0 ? Buffer.concat([...pending, piece]) : piece;
      pending = [];
      pendingLen = 0;
      yield { line: ++line, offset, text: whole.toString("utf8"), terminated: true };
      offset += whole.length + 1;
      start = nl + 1;
    }
    if (start < buf.length) {
      const rest = Buffer.from(buf.subarray(start));
      pending.push(rest);
      pendingLen += rest.length;
    }
  }
  if (pendingLen > 0) {
    yield { line: ++line, offset, text: Buffer.concat(pending).toString("utf8"), terminated: false };
  }
}
