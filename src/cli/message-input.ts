/**
 * The message of `crypto sign` and `crypto verify`, read so that any file size works: for the
 * algorithms that hash (ECDSA, RSA PKCS#1 v1.5, RSA-PSS) the file is hashed here, streamed, and only
 * its digest is sent (`MESSAGE_TYPE_DIGEST`, as `openssl dgst` and KMS' MessageType=DIGEST do); the
 * service signs exactly what it would have signed over the whole message. Ed25519 (PureEdDSA) and
 * HMAC have no digest form, so their message is sent whole, and one over the daemon's message limit
 * (`limits.maxPayloadBytes`, RESOURCE_EXHAUSTED) is refused here, before anything is sent.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { SigningAlgorithm } from "../sdk";
import { UsageError } from "./errors";
import { formatBytes, ioReason } from "./io";
import type { CliIo } from "./spec";

/** The daemon's default `limits.maxPayloadBytes` (64 KiB): the most a message sent whole may hold unless told otherwise. */
export const DEFAULT_MAX_MESSAGE_BYTES = 65_536;

/** The hash an algorithm signs a digest of, for those that accept `MESSAGE_TYPE_DIGEST`; undefined for Ed25519 and HMAC. */
export function digestHashOf(algorithm: SigningAlgorithm): "sha256" | "sha384" | "sha512" | undefined {
  const S = SigningAlgorithm;
  switch (algorithm) {
    case S.SIGNING_ALGORITHM_ECDSA_SHA256:
    case S.SIGNING_ALGORITHM_RSA_PKCS1_SHA256:
    case S.SIGNING_ALGORITHM_RSA_PSS_SHA256:
      return "sha256";
    case S.SIGNING_ALGORITHM_ECDSA_SHA384:
    case S.SIGNING_ALGORITHM_RSA_PKCS1_SHA384:
    case S.SIGNING_ALGORITHM_RSA_PSS_SHA384:
      return "sha384";
    case S.SIGNING_ALGORITHM_ECDSA_SHA512:
    case S.SIGNING_ALGORITHM_RSA_PKCS1_SHA512:
    case S.SIGNING_ALGORITHM_RSA_PSS_SHA512:
      return "sha512";
    default:
      return undefined;
  }
}

/** The input as a stream: the file, or stdin for `-` (refused when it is a terminal). */
function inputStream(io: CliIo, path: string, flag: string): NodeJS.ReadableStream {
  if (path !== "-") return createReadStream(path);
  if (io.stdin.isTTY) throw new UsageError(`--${flag} -: stdin is a terminal; pipe the data in or give a file`);
  return io.stdin;
}

/** The `hash` digest of `--<flag> FILE` (`-`: stdin), read in chunks: the file is never held whole. */
export async function hashInput(io: CliIo, path: string, flag: string, hash: string): Promise<Buffer> {
  const h = createHash(hash);
  try {
    for await (const chunk of inputStream(io, path, flag)) h.update(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--${flag}: cannot read ${path}: ${ioReason(err)}`);
  }
  return h.digest();
}

/**
 * The bytes of `--<flag> FILE` (`-`: stdin) for a message sent whole, refused (before it is read, for
 * a file) when it holds more than `max` bytes, with why: `what` signs the message itself.
 */
export async function readBoundedInput(io: CliIo, path: string, flag: string, max: number, what: string): Promise<Buffer> {
  const tooBig = (size: string) =>
    new UsageError(
      `--${flag}: ${path} holds ${size}; ${what} is computed over the whole message in the HSM (there is no digest form to send instead), and the daemon takes at most ${max} bytes (${formatBytes(max)}) per message (its limits.maxPayloadBytes; if yours allows more, give --max-message-bytes)`,
    );
  if (path !== "-") {
    const size = await stat(path).then(
      (s) => (s.isFile() ? s.size : undefined),
      (err: unknown) => {
        throw new UsageError(`--${flag}: cannot read ${path}: ${ioReason(err)}`);
      },
    );
    if (size !== undefined && size > max) throw tooBig(`${size} bytes (${formatBytes(size)})`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of inputStream(io, path, flag)) {
      const b = typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer);
      total += b.length;
      if (total > max) throw tooBig(`more than ${max} bytes`);
      chunks.push(b);
    }
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--${flag}: cannot read ${path}: ${ioReason(err)}`);
  }
  return Buffer.concat(chunks);
}
