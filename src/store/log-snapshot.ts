/**
 * The embedded store's compaction output: the whole current state as one snapshot (a `snap` frame,
 * one `ent` frame per key in key order, an `end` frame) written to a temporary file and fsync'd, for
 * the store to rename over its log. Streamed in chunks so that a million keys need no giant buffer.
 */
import { open as openAsync } from "node:fs/promises";
import type { State } from "./embedded-state";
import { FORMAT_VERSION, encodeFrame, type Frame } from "./log-format";

/**
 * Writes the snapshot of `state` at revision `rev` to `tmpPath` (mode 0600) and fsyncs it; resolves to
 * its size in bytes. The caller keeps the state from changing meanwhile.
 */
export async function writeSnapshot(tmpPath: string, state: State, rev: number): Promise<number> {
  const n = state.entries.size;
  const tmp = await openAsync(tmpPath, "w", 0o600);
  let size = 0;
  try {
    let chunk: string[] = [];
    let chunkLen = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      const buf = Buffer.from(chunk.join(""), "utf8");
      chunk = [];
      chunkLen = 0;
      let off = 0;
      while (off < buf.length) {
        const { bytesWritten } = await tmp.write(buf, off, buf.length - off, size + off);
        off += bytesWritten;
      }
      size += buf.length;
    };
    const push = async (f: Frame) => {
      const line = encodeFrame(f);
      chunk.push(line);
      chunkLen += line.length;
      if (chunkLen >= 4 << 20) await flush();
    };
    // The state cannot change meanwhile: compaction runs with the write path to itself.
    await push({ t: "snap", fmt: FORMAT_VERSION, r: rev, n });
    for (const k of state.keys.from("")) {
      const e = state.entries.get(k)!;
      await push({ t: "ent", k, v: e.value.toString("base64"), m: e.modRevision, c: e.createRevision, ver: e.version });
    }
    await push({ t: "end", r: rev, n });
    await flush();
    await tmp.sync();
  } finally {
    await tmp.close();
  }
  return size;
}
