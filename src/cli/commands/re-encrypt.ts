/**
 * `crypto re-encrypt` and `crypto envelope-rewrap` (issue 13): a self-describing ciphertext or
 * wrapped data key re-encrypted under another key or the primary version of its own key, inside the
 * service (ReEncrypt); an envelope message's data key re-wrapped, its frames copied untouched.
 */
import { createReadStream, createWriteStream } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { dirname, join, basename } from "node:path";
import { randomBytes } from "node:crypto";
import { pipeline } from "node:stream/promises";
import { rewrapEnvelope, ENVELOPE_MAX_FRAME_SIZE } from "../../sdk";
import { UsageError } from "../errors";
import { deliverBytes, ENCODING_OPTION, ioReason, OUT_OPTION, readInput } from "../io";
import { requireString, stringValue, type CommandContext, type CommandSpec, type Values } from "../spec";
import { parseContext } from "./envelope";

/** Bytes given as `--NAME TEXT` (UTF-8) or `--NAME-file FILE`; empty when neither is given. */
export async function textOrFile(ctx: CommandContext, values: Values, name: string): Promise<Buffer> {
  const text = stringValue(values, name);
  const file = stringValue(values, `${name}-file`);
  if (text !== undefined && file !== undefined) throw new UsageError(`give --${name} or --${name}-file, not both`);
  if (file !== undefined) return readInput(ctx.io, file, `${name}-file`);
  return Buffer.from(text ?? "", "utf8");
}

/** Largest envelope header (1 MiB): the rewrap reads this much of the message at most. */
const HEADER_WINDOW = 1024 * 1024;

export const reEncryptCommands: CommandSpec[] = [
  {
    words: ["crypto", "re-encrypt"],
    summary: "re-encrypt a self-describing ciphertext or wrapped data key under another key or version, in the service",
    details: `--in is a self-describing ciphertext (crypto encrypt --blob writes one; docs/CIPHERTEXT.md) or a
wrapped data key. Its header names the key and version it is under; the service decrypts and
encrypts again in the HSM, and the plaintext never reaches this machine. Without --to the result is
under the primary version of the same key (a rewrap after rotation). AES-GCM: --aad is the AAD the
input was made with, --new-aad the result's (default: the same). Data keys: --context KEY=VALUE, as
they were made with (kept). A data key wrapped before ciphertext headers (HDK1) needs --source-key-id.`,
    options: {
      in: { type: "string", arg: "FILE", required: true, description: "the ciphertext (- for stdin)" },
      to: { type: "string", arg: "ID", description: "the destination key (default: the source key's primary version)" },
      aad: { type: "string", arg: "TEXT", description: "AES-GCM: the input's AAD, as UTF-8 text" },
      "aad-file": { type: "string", arg: "FILE", description: "the same, read from a file" },
      "new-aad": { type: "string", arg: "TEXT", description: "AES-GCM: the result's AAD (default: the input's)" },
      "new-aad-file": { type: "string", arg: "FILE", description: "the same, read from a file" },
      context: { type: "string", arg: "KEY=VALUE", multiple: true, description: "data keys: an encryption context entry (repeat)" },
      "source-key-id": { type: "string", arg: "ID", description: "an HDK1 data key only: the key it was wrapped under" },
      out: OUT_OPTION,
      encoding: ENCODING_OPTION,
    },
    examples: ["hsmctl crypto encrypt --key-id K --blob --in secret.txt --out secret.ct", "hsmctl crypto re-encrypt --in secret.ct --to K2 --out secret.k2.ct"],
    async run(ctx, values) {
      const path = requireString(values, "in");
      const ciphertextBlob = await readInput(ctx.io, path, "in");
      if (ciphertextBlob.length === 0) throw new UsageError(`--in: ${path} is empty`);
      const req = {
        ciphertextBlob,
        destinationKeyId: stringValue(values, "to") ?? "",
        sourceAad: await textOrFile(ctx, values, "aad"),
        destinationAad: await textOrFile(ctx, values, "new-aad"),
        encryptionContext: parseContext(values),
        sourceKeyId: stringValue(values, "source-key-id") ?? "",
      };
      const r = await ctx.client().reEncrypt(req);
      const info = { sourceKeyId: r.sourceKeyId, sourceKeyVersion: r.sourceKeyVersion, keyId: r.keyId, keyVersion: r.keyVersion };
      await deliverBytes(ctx, values, "ciphertextBlob", Buffer.from(r.ciphertextBlob), info, "ciphertext");
    },
  },
  {
    words: ["crypto", "envelope-rewrap"],
    summary: "re-wrap an envelope message's data key under another key or version; the body is copied untouched",
    details: `Reads the header of --in (an envelope message, crypto envelope-encrypt's output), has the service
re-encrypt its wrapped data key (ReEncrypt) under --to (default: the primary version of the same key),
re-authenticates the header (this machine unwraps the data key once, as a decryption does) and writes
the new header followed by the frames exactly as they were. The file is streamed: its size does not matter.`,
    options: {
      in: { type: "string", arg: "FILE", required: true, description: "the envelope message" },
      out: { type: "string", arg: "FILE", required: true, description: "the rewrapped message (written to a temporary file, then renamed)" },
      to: { type: "string", arg: "ID", description: "the destination key (default: the message key's primary version)" },
    },
    examples: ["hsmctl crypto envelope-rewrap --in backup.hsme --out backup.v2.hsme"],
    async run(ctx, values) {
      const input = requireString(values, "in");
      const output = requireString(values, "out");
      if (input === "-" || output === "-") throw new UsageError("crypto envelope-rewrap works on files (--in and --out), not stdin or stdout");
      let head: Buffer;
      try {
        const fh = await open(input, "r");
        try {
          const buf = Buffer.alloc(Math.min(HEADER_WINDOW, ENVELOPE_MAX_FRAME_SIZE));
          const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
          head = buf.subarray(0, bytesRead);
        } finally {
          await fh.close();
        }
      } catch (err) {
        throw new UsageError(`--in: cannot read ${input}: ${ioReason(err)}`);
      }
      const r = await rewrapEnvelope(ctx.client(), head, { destinationKeyId: stringValue(values, "to") });
      const tmp = join(dirname(output), `.${basename(output)}.${randomBytes(6).toString("hex")}.tmp`);
      try {
        const out = createWriteStream(tmp, { mode: 0o600 });
        out.write(r.message);
        await pipeline(createReadStream(input, { start: head.length }), out);
        await rename(tmp, output);
      } catch (err) {
        await rm(tmp, { force: true });
        throw new UsageError(`--out: cannot write ${output}: ${ioReason(err)}`);
      }
      const info = { keyId: r.keyId, keyVersion: r.keyVersion, previousKeyId: r.previousKeyId, previousKeyVersion: r.previousKeyVersion, out: output };
      ctx.emit(info, `rewrapped ${input} → ${output}: key ${r.previousKeyId} v${r.previousKeyVersion} → ${r.keyId} v${r.keyVersion}`);
    },
  },
];
