/** Password hashing (scrypt from node:crypto), the password and username policies, one-time passwords. */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from "node:crypto";
import { Code, HsmError, invalid } from "../errors";
import type { PasswordHash } from "./types";

/** scrypt cost parameters. */
export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** Default scrypt cost: N=2^15, r=8, p=1 (32 MiB, roughly 50-100 ms per hash on a server core). */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = Object.freeze({ N: 2 ** 15, r: 8, p: 1 });

/** Password length policy, in characters (Unicode code points after NFC normalisation). */
export const PASSWORD_MIN_LENGTH = 8;
/** Password length policy, in characters (Unicode code points after NFC normalisation). */
export const PASSWORD_MAX_LENGTH = 64;
/** Username length limit. */
export const USERNAME_MAX_LENGTH = 32;
/** Username characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit. */
export const USERNAME_PATTERN = /^[a-z0-9][a-z0-9._-]*$/;

const SALT_BYTES = 16;
const KEY_LEN = 32;

function scryptAsync(password: string, salt: Buffer, keyLen: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => scryptCb(password, salt, keyLen, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

function scryptOptions(p: ScryptParams): ScryptOptions {
  // Node refuses when 128*N*r*p exceeds maxmem (default 32 MiB, exactly the default cost): give room.
  return { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r * p.p + (1 << 20) };
}

/** Throws INVALID_ARGUMENT unless the parameters are a sane scrypt cost (N a power of two in 2..2^20, r 1..32, p 1..16). */
export function checkScryptParams(p: ScryptParams): void {
  const { N, r, p: par } = p;
  if (!Number.isSafeInteger(N) || N < 2 || N > 2 ** 20 || (N & (N - 1)) !== 0) {
    throw invalid(`scrypt N must be a power of two between 2 and 2^20, got ${String(N)}`);
  }
  if (!Number.isSafeInteger(r) || r < 1 || r > 32) throw invalid(`scrypt r must be an integer 1..32, got ${String(r)}`);
  if (!Number.isSafeInteger(par) || par < 1 || par > 16) throw invalid(`scrypt p must be an integer 1..16, got ${String(par)}`);
}

function normalize(password: string): string {
  return password.normalize("NFC");
}

/**
 * Throws INVALID_ARGUMENT naming the rule unless `password` is a string of 8 to 64 characters
 * (code points after NFC normalisation). `what` names the field in the message.
 */
export function checkPasswordPolicy(password: unknown, what = "password"): asserts password is string {
  if (typeof password !== "string") throw invalid(`${what} must be a string`);
  const n = [...normalize(password)].length;
  if (n < PASSWORD_MIN_LENGTH || n > PASSWORD_MAX_LENGTH) {
    throw invalid(`${what} must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters long (password length policy), got ${n}`);
  }
}

/** True when `name` is a valid username: 1 to 32 characters of `[a-z0-9][a-z0-9._-]*`. */
export function isValidUsername(name: unknown): name is string {
  return typeof name === "string" && name.length >= 1 && name.length <= USERNAME_MAX_LENGTH && USERNAME_PATTERN.test(name);
}

/** Throws INVALID_ARGUMENT naming the rule unless `name` is a valid username (see {@link isValidUsername}). */
export function checkUsername(name: unknown): asserts name is string {
  if (typeof name !== "string") throw invalid("username must be a string");
  if (name.length < 1 || name.length > USERNAME_MAX_LENGTH) {
    throw invalid(`username must be 1 to ${USERNAME_MAX_LENGTH} characters long, got ${name.length}`);
  }
  if (!USERNAME_PATTERN.test(name)) {
    throw invalid(`username ${JSON.stringify(name)} is not allowed: use lowercase letters, digits, '.', '_' and '-', ` + `starting with a letter or digit`);
  }
}

/** Hashes a password with scrypt and a fresh 16-byte salt; the parameters are recorded with the hash. */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<PasswordHash> {
  checkScryptParams(params);
  const salt = randomBytes(SALT_BYTES);
  const key = await scryptAsync(normalize(password), salt, KEY_LEN, scryptOptions(params));
  return {
    alg: "scrypt",
    N: params.N,
    r: params.r,
    p: params.p,
    salt: salt.toString("base64"),
    hash: key.toString("base64"),
    keyLen: KEY_LEN,
  };
}

/**
 * Checks a password against a stored hash in constant time, with the parameters recorded in the hash.
 * A damaged hash record throws INTERNAL (it is never treated as a match).
 */
export async function verifyPassword(password: string, stored: PasswordHash): Promise<boolean> {
  if (stored?.alg !== "scrypt") throw new HsmError(Code.Internal, `stored password hash has unknown algorithm`);
  try {
    checkScryptParams(stored);
  } catch (err) {
    throw new HsmError(Code.Internal, "stored password hash has invalid parameters", { cause: err });
  }
  const expected = Buffer.from(stored.hash, "base64");
  if (!Number.isSafeInteger(stored.keyLen) || stored.keyLen < 16 || stored.keyLen > 64 || expected.length !== stored.keyLen) {
    throw new HsmError(Code.Internal, "stored password hash has an invalid length");
  }
  const key = await scryptAsync(normalize(String(password)), Buffer.from(stored.salt, "base64"), stored.keyLen, scryptOptions(stored));
  return timingSafeEqual(key, expected);
}

/** A random one-time password: 18 random bytes as 24 base64url characters (144 bits). */
export function generateOneTimePassword(): string {
  return randomBytes(18).toString("base64url");
}
