/**
 * Files and standard streams for hsmctl: reading `--in FILE|-`, writing binary results to `--out
 * FILE|-` or stdout (never raw bytes to a terminal), and the progress bar of long streams.
 */
import { readFile, writeFile } from "node:fs/promises";
import { Transform, type TransformCallback } from "node:stream";
import { UsageError } from "./errors";
import type { CliIo, CommandContext, Values } from "./spec";
import { choiceValue, stringValue } from "./spec";

/** A short reason for a failed file operation (`no such file or directory`, `permission denied`, …). */
export function ioReason(err: unknown): string {
  const code = (err as { code?: string }).code;
  switch (code) {
    case "ENOENT":
      return "no such file or directory";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "EISDIR":
      return "is a directory";
    case "ENOTDIR":
      return "a parent is not a directory";
    default:
      return (err as Error).message ?? String(err);
  }
}

/** Everything on stdin. */
export async function readStdin(io: CliIo): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of io.stdin) chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks);
}

/** The bytes of `--<flag> FILE` (`-`: stdin); UsageError naming the flag when it cannot be read. */
export async function readInput(io: CliIo, path: string, flag: string): Promise<Buffer> {
  if (path === "-") {
    if (io.stdin.isTTY) throw new UsageError(`--${flag} -: stdin is a terminal; pipe the data in or give a file`);
    return readStdin(io);
  }
  try {
    return await readFile(path);
  } catch (err) {
    throw new UsageError(`--${flag}: cannot read ${path}: ${ioReason(err)}`);
  }
}

/** Writes a whole file, created with mode 600 (results may be secrets: plaintexts, random keys). */
export async function writeOutputFile(path: string, data: Buffer | string, flag = "out"): Promise<void> {
  try {
    await writeFile(path, data, { mode: 0o600 });
  } catch (err) {
    throw new UsageError(`--${flag}: cannot write ${path}: ${ioReason(err)}`);
  }
}

/** Writes to stdout and waits until it is accepted (backpressure). */
export function writeStdout(io: CliIo, data: Buffer | string): Promise<void> {
  return new Promise((resolve, reject) => {
    io.stdout.write(data, (err) => (err ? reject(err) : resolve()));
  });
}

/** The `--encoding` flag of commands that write bytes. */
export const ENCODING_OPTION = {
  type: "string",
  arg: "ENC",
  description: "how --out (or stdout) gets the bytes: raw (default), hex or base64",
} as const;

/** The `--out` flag of commands that write bytes. */
export const OUT_OPTION = {
  type: "string",
  arg: "FILE",
  description: "where the result goes (mode 600); - for stdout. Without it: stdout (not a terminal), or base64 in the JSON with --output json",
} as const;

/**
 * Delivers a binary result:
 * - `--out FILE`: writes the file and prints a summary (`json` plus `out` and `bytes`);
 * - `--out -`: the bytes (in `--encoding`) on stdout, nothing else;
 * - neither, with `--output json`: `json` with the bytes in base64 under `field`;
 * - neither, text: the bytes on stdout, refused when stdout is a terminal and the encoding is raw.
 */
export async function deliverBytes(ctx: CommandContext, values: Values, field: string, data: Buffer, json: Record<string, unknown>, what: string): Promise<void> {
  const out = stringValue(values, "out");
  const encoding = choiceValue(values, "encoding", ["raw", "hex", "base64"] as const, "raw");
  const encoded = encoding === "raw" ? data : `${data.toString(encoding)}\n`;
  if (out === undefined && ctx.output === "json") {
    ctx.emit({ ...json, [field]: data.toString("base64") }, "");
    return;
  }
  if (out === undefined || out === "-") {
    if (out === undefined && encoding === "raw" && ctx.io.stdout.isTTY) {
      throw new UsageError(`refusing to write binary ${what} to a terminal: give --out FILE (or --out - to insist), --encoding hex|base64, or --output json`);
    }
    await writeStdout(ctx.io, encoded);
    return;
  }
  await writeOutputFile(out, encoded);
  ctx.emit({ ...json, out, bytes: data.length }, `${what}: ${data.length} bytes written to ${out}`);
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/**
 * A pass-through stream that counts the bytes going through and, when `stderr` is a terminal, draws
 * a progress bar there (at most 10 times a second, and once at the end). `total` is the input's size
 * when known.
 */
export class ProgressMeter extends Transform {
  private bytes = 0;
  private readonly started = Date.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private readonly stderr: CliIo["stderr"],
    private readonly total: number | undefined,
    private readonly label: string,
  ) {
    super();
  }

  /** Bytes seen so far. */
  get count(): number {
    return this.bytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    const now = Date.now();
    if (now - this.lastDraw >= 100) {
      this.lastDraw = now;
      this.draw(false);
    }
    callback(null, chunk);
  }

  override _flush(callback: TransformCallback): void {
    this.draw(true);
    callback();
  }

  /** Ends the bar's line early (on an error), so that the message starts on a fresh line. */
  abandon(): void {
    if (this.drawn) this.stderr.write("\n");
    this.drawn = false;
  }

  private draw(final: boolean): void {
    if (!this.stderr.isTTY) return;
    const seconds = Math.max(0.001, (Date.now() - this.started) / 1000);
    const rate = `${formatBytes(Math.round(this.bytes / seconds))}/s`;
    const width = Math.max(10, Math.min(40, (this.stderr.columns ?? 80) - 60));
    let line: string;
    if (this.total !== undefined && this.total > 0) {
      const frac = Math.min(1, this.bytes / this.total);
      const fill = Math.round(frac * width);
      line = `${this.label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}%  ${formatBytes(this.bytes)} / ${formatBytes(this.total)}  ${rate}`;
    } else {
      line = `${this.label} ${formatBytes(this.bytes)}  ${rate}`;
    }
    this.stderr.write(`\r${line}\u001b[K${final ? "\n" : ""}`);
    this.drawn = !final;
  }
}
