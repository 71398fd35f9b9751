/**
 * `crypto envelope-encrypt|envelope-decrypt`: files of any size through the SDK's envelope streams
 * (a data key per message from the service, AES-256-GCM on this machine in frames, the wrapped data
 * key and the encryption context in the message header; docs/ENVELOPE.md), with a progress bar on a
 * terminal. Memory stays bounded whatever the file's size.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { pipeline } from "node:stream/promises";
import { PassThrough, Writable, type Readable } from "node:stream";
import { createDecryptStream, createEncryptStream, HsmClientError, type EnvelopeHeaderEvent } from "../../sdk";
import { CliFailure, UsageError } from "../errors";
import { formatBytes, ioReason, ProgressMeter } from "../io";
import { listValue, requireString, type CommandContext, type CommandSpec, type Values } from "../spec";

/** `--context k=v` flags as a map (UsageError on a malformed or repeated key). */
export function parseContext(values: Values): Record<string, string> {
  const context: Record<string, string> = {};
  for (const item of listValue(values, "context", false)) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new UsageError(`--context: expected KEY=VALUE, not ${JSON.stringify(item)}`);
    const k = item.slice(0, eq);
    if (Object.hasOwn(context, k)) throw new UsageError(`--context: ${JSON.stringify(k)} given twice`);
    context[k] = item.slice(eq + 1);
  }
  return context;
}

interface Ends {
  input: Readable;
  /** The input's size when it is a file. */
  total: number | undefined;
  output: Writable;
  /** Moves the finished output into place (a temp file renamed). */
  commit(): Promise<void>;
  /** Removes the unfinished output after a failure. */
  discard(): Promise<void>;
}

/** Opens --in and --out (`-` for stdin/stdout); a file output is written to a temp name and renamed at the end. */
async function openEnds(ctx: CommandContext, inPath: string, outPath: string, binaryOut: boolean): Promise<Ends> {
  if (inPath !== "-" && outPath !== "-" && resolve(inPath) === resolve(outPath)) throw new UsageError("--in and --out must be different files");
  let input: Readable;
  let total: number | undefined;
  if (inPath === "-") {
    if (ctx.io.stdin.isTTY) throw new UsageError("--in -: stdin is a terminal; pipe the data in or give a file");
    input = ctx.io.stdin as unknown as Readable;
  } else {
    try {
      const st = await stat(inPath);
      if (!st.isFile()) throw new UsageError(`--in: ${inPath} is not a regular file`);
      total = st.size;
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(`--in: cannot read ${inPath}: ${ioReason(err)}`);
    }
    input = createReadStream(inPath);
  }
  if (outPath === "-") {
    if (binaryOut && ctx.io.stdout.isTTY) throw new UsageError("refusing to write an encrypted message to a terminal: give --out FILE");
    // Each chunk is handed to stdout and acknowledged when stdout took it; the process's stdout is never ended.
    const stdout = ctx.io.stdout;
    const output = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        stdout.write(chunk, (err) => callback(err ?? null));
      },
    });
    return { input, total, output, commit: async () => undefined, discard: async () => undefined };
  }
  const tmp = join(dirname(resolve(outPath)), `.${basename(outPath)}.${randomBytes(6).toString("hex")}.partial`);
  const output = createWriteStream(tmp, { mode: 0o600, flags: "wx" });
  try {
    await new Promise<void>((ok, fail) => {
      output.once("open", () => ok());
      output.once("error", fail);
    });
  } catch (err) {
    input.destroy();
    throw new UsageError(`--out: cannot write ${outPath}: ${ioReason(err)}`);
  }
  return {
    input,
    total,
    output,
    commit: () => rename(tmp, outPath),
    discard: () => rm(tmp, { force: true }),
  };
}

async function runEnvelope(ctx: CommandContext, values: Values, direction: "encrypt" | "decrypt"): Promise<void> {
  const inPath = requireString(values, "in");
  const outPath = requireString(values, "out");
  const keyId = direction === "encrypt" ? requireString(values, "key-id") : undefined;
  const context = parseContext(values);
  const ends = await openEnds(ctx, inPath, outPath, direction === "encrypt");
  const meter = new ProgressMeter(ctx.io.stderr, ends.total, direction === "encrypt" ? "encrypting" : "decrypting");
  let bytesOut = 0;
  const counter = new PassThrough();
  counter.on("data", (chunk: Buffer) => (bytesOut += chunk.length));
  let header: EnvelopeHeaderEvent | undefined;
  try {
    const client = ctx.client();
    const transform =
      direction === "encrypt"
        ? createEncryptStream(client, { keyId: keyId!, encryptionContext: context, ...(ends.total !== undefined ? { plaintextLength: ends.total } : {}) })
        : createDecryptStream(client, { expectedContext: context });
    transform.on("header", (h: EnvelopeHeaderEvent) => (header = h));
    await pipeline(ends.input, meter, transform, counter, ends.output);
    await ends.commit();
  } catch (err) {
    meter.abandon();
    ends.input.destroy();
    ends.output.destroy();
    await ends.discard().catch(() => undefined);
    if (err instanceof UsageError || err instanceof CliFailure) throw err;
    const e = HsmClientError.from(err);
    const kept = outPath === "-" ? (direction === "decrypt" ? " (what reached stdout before the failure is not authentic: discard it)" : "") : ` (nothing written to ${outPath})`;
    throw new CliFailure(e.codeName, `${e.details || e.message}${kept}`);
  }
  const summary = {
    in: inPath,
    out: outPath,
    keyId: keyId ?? header?.keyId ?? "",
    ...(header ? { keyVersion: header.keyVersion } : {}),
    encryptionContext: direction === "encrypt" ? context : (header?.encryptionContext ?? {}),
    bytesIn: meter.count,
    bytesOut,
  };
  if (outPath === "-") {
    // stdout carries the data: the summary goes to stderr, and only when asked for (JSON).
    if (ctx.output === "json") ctx.note(JSON.stringify(summary));
    return;
  }
  const contextText = Object.entries(summary.encryptionContext)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
  ctx.emit(
    summary,
    `${direction}ed ${inPath} (${formatBytes(meter.count)}) to ${outPath} (${formatBytes(bytesOut)}) ${direction === "encrypt" ? "under" : "with"} key ${summary.keyId}${contextText ? `, context ${contextText}` : ""}`,
  );
}

export const envelopeCommands: CommandSpec[] = [
  {
    words: ["crypto", "envelope-encrypt"],
    summary: "encrypt a file of any size locally under a fresh data key from the service (streamed)",
    details: `Streams --in through the SDK's envelope encryption (docs/ENVELOPE.md): the service makes a data key
under --key-id (an AES key with encrypt and decrypt usages) and returns it with the same key wrapped;
the data is encrypted here with AES-256-GCM in authenticated frames, and the message header holds the
wrapped data key, the key id and version, and the encryption context (--context, in the clear and
bound to the data key: never put secrets there). Memory use does not grow with the file. A progress
bar is drawn on stderr when it is a terminal. The output is written to a temporary file next to
--out and renamed when complete.`,
    options: {
      in: { type: "string", arg: "FILE", required: true, description: "the plaintext (- for stdin)" },
      out: { type: "string", arg: "FILE", required: true, description: "the encrypted message (- for stdout, never a terminal)" },
      "key-id": { type: "string", arg: "ID", required: true, description: "the key-encryption key (AES, encrypt and decrypt usages)" },
      context: { type: "string", arg: "K=V", multiple: true, description: "an encryption context entry; repeat for several" },
    },
    examples: ["hsmctl crypto envelope-encrypt --in backup.tar --out backup.tar.hsme --key-id K --context purpose=backup --context host=db1"],
    run: (ctx, values) => runEnvelope(ctx, values, "encrypt"),
  },
  {
    words: ["crypto", "envelope-decrypt"],
    summary: "decrypt a message of crypto envelope-encrypt (streamed); a damaged message writes nothing",
    details: `Reads the message's header, has the service unwrap its data key (DecryptDataKey, with the encryption
context the message carries) and decrypts here, checking every frame. A flipped bit, a missing,
repeated or reordered frame, a truncated file or a context that does not hold every --context entry
fails with exit 1, and with --out FILE nothing is left at FILE (the plaintext goes to a temporary
file, renamed only when the whole message checked out). With --out - the plaintext of the frames
before a damaged one may already be on stdout.`,
    options: {
      in: { type: "string", arg: "FILE", required: true, description: "the encrypted message (- for stdin)" },
      out: { type: "string", arg: "FILE", required: true, description: "the plaintext (- for stdout)" },
      context: { type: "string", arg: "K=V", multiple: true, description: "an entry the message's encryption context must hold; repeat for several" },
    },
    examples: ["hsmctl crypto envelope-decrypt --in backup.tar.hsme --out backup.tar --context purpose=backup"],
    run: (ctx, values) => runEnvelope(ctx, values, "decrypt"),
  },
];
