/**
 * Command-line names of the API's enums: `KEY_SPEC_EC_P256` is `ec-p256`, `KEY_USAGE_SIGN` is `sign`,
 * `SIGNING_ALGORITHM_ECDSA_SHA256` is `ecdsa-sha256`. Parsing also accepts any case, underscores, and
 * the full proto name; printing always uses the short name.
 */
import { EncryptionAlgorithm, JoinStatus, KeyOrigin, KeySpec, KeyState, KeyUsage, QuorumStatus, Role, SigningAlgorithm, WrapAlgorithm } from "../sdk";
import { UsageError } from "./errors";

/** One enum's names both ways. */
export interface EnumNames<E extends number> {
  /** The short names, in enum order (UNSPECIFIED and UNRECOGNIZED left out). */
  readonly names: readonly string[];
  /** The short name of a value (`"ec-p256"`); `unspecified` or the number when it has none. */
  name(value: E): string;
  /** The value of a name, or a UsageError naming `flag` and listing the accepted names. */
  parse(text: string, flag: string): E;
}

function enumNames<E extends number>(enumObject: Record<string, string | number>, prefix: string, aliases: Record<string, E> = {}): EnumNames<E> {
  const byName = new Map<string, E>();
  const byValue = new Map<number, string>();
  const names: string[] = [];
  for (const [key, value] of Object.entries(enumObject)) {
    if (typeof value !== "number" || value <= 0 || !key.startsWith(prefix)) continue;
    const short = key.slice(prefix.length).toLowerCase().replace(/_/g, "-");
    byName.set(short, value as E);
    byName.set(key.toLowerCase().replace(/_/g, "-"), value as E);
    byValue.set(value, short);
    names.push(short);
  }
  for (const [alias, value] of Object.entries(aliases)) byName.set(alias, value);
  return {
    names,
    name: (value) => byValue.get(value) ?? (value === 0 ? "unspecified" : String(value)),
    parse: (text, flag) => {
      const value = byName.get(text.trim().toLowerCase().replace(/_/g, "-"));
      if (value === undefined) throw new UsageError(`${flag}: unknown value ${JSON.stringify(text)} (one of: ${names.join(", ")})`);
      return value;
    },
  };
}

export const keySpecs = enumNames<KeySpec>(KeySpec, "KEY_SPEC_");
export const keyUsages = enumNames<KeyUsage>(KeyUsage, "KEY_USAGE_");
export const keyStates = enumNames<KeyState>(KeyState, "KEY_STATE_");
export const keyOrigins = enumNames<KeyOrigin>(KeyOrigin, "KEY_ORIGIN_");
export const roles = enumNames<Role>(Role, "ROLE_", { co: Role.ROLE_CRYPTO_OFFICER, cu: Role.ROLE_CRYPTO_USER, au: Role.ROLE_APPLIANCE_USER });
export const quorumStatuses = enumNames<QuorumStatus>(QuorumStatus, "QUORUM_STATUS_");
export const joinStatuses = enumNames<JoinStatus>(JoinStatus, "JOIN_STATUS_");
export const encryptionAlgorithms = enumNames<EncryptionAlgorithm>(EncryptionAlgorithm, "ENCRYPTION_ALGORITHM_");
export const signingAlgorithms = enumNames<SigningAlgorithm>(SigningAlgorithm, "SIGNING_ALGORITHM_");
export const wrapAlgorithms = enumNames<WrapAlgorithm>(WrapAlgorithm, "WRAP_ALGORITHM_");

/** Secret-key specs (`key generate-symmetric`, raw material for `key import`). */
export const SYMMETRIC_SPECS: readonly KeySpec[] = [KeySpec.KEY_SPEC_AES_128, KeySpec.KEY_SPEC_AES_256, KeySpec.KEY_SPEC_HMAC_SHA256, KeySpec.KEY_SPEC_HMAC_SHA384, KeySpec.KEY_SPEC_HMAC_SHA512];

/** True for AES and HMAC specs. */
export function isSymmetric(spec: KeySpec): boolean {
  return SYMMETRIC_SPECS.includes(spec);
}

/** Parses repeated and comma-separated `--usage` values; undefined or empty: none (the kind's defaults). */
export function parseUsages(values: readonly string[] | undefined): KeyUsage[] {
  const out: KeyUsage[] = [];
  for (const v of values ?? []) {
    for (const part of v.split(",")) {
      if (part.trim() === "") continue;
      const usage = keyUsages.parse(part, "--usage");
      if (!out.includes(usage)) out.push(usage);
    }
  }
  return out;
}

/** The signing algorithm a key's spec implies when `--algorithm` is not given. */
export function defaultSigningAlgorithm(spec: KeySpec): SigningAlgorithm | undefined {
  switch (spec) {
    case KeySpec.KEY_SPEC_EC_P256:
    case KeySpec.KEY_SPEC_EC_SECP256K1:
      return SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256;
    case KeySpec.KEY_SPEC_EC_P384:
      return SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA384;
    case KeySpec.KEY_SPEC_EC_P521:
      return SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA512;
    case KeySpec.KEY_SPEC_RSA_2048:
    case KeySpec.KEY_SPEC_RSA_3072:
    case KeySpec.KEY_SPEC_RSA_4096:
      return SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256;
    case KeySpec.KEY_SPEC_ED25519:
      return SigningAlgorithm.SIGNING_ALGORITHM_ED25519;
    case KeySpec.KEY_SPEC_HMAC_SHA256:
      return SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256;
    case KeySpec.KEY_SPEC_HMAC_SHA384:
      return SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA384;
    case KeySpec.KEY_SPEC_HMAC_SHA512:
      return SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA512;
    case KeySpec.KEY_SPEC_AES_128:
    case KeySpec.KEY_SPEC_AES_256:
      // An AES key signs only as an AES-CMAC key (usages sign, verify).
      return SigningAlgorithm.SIGNING_ALGORITHM_AES_CMAC;
    default:
      return undefined;
  }
}

/** The encryption algorithm a key's spec implies when `--algorithm` is not given. */
export function defaultEncryptionAlgorithm(spec: KeySpec): EncryptionAlgorithm | undefined {
  switch (spec) {
    case KeySpec.KEY_SPEC_AES_128:
    case KeySpec.KEY_SPEC_AES_256:
      return EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM;
    case KeySpec.KEY_SPEC_RSA_2048:
    case KeySpec.KEY_SPEC_RSA_3072:
    case KeySpec.KEY_SPEC_RSA_4096:
      return EncryptionAlgorithm.ENCRYPTION_ALGORITHM_RSA_OAEP_SHA256;
    default:
      return undefined;
  }
}

/** The wrap algorithm a wrapping key's spec implies when `--algorithm` is not given. */
export function defaultWrapAlgorithm(spec: KeySpec): WrapAlgorithm | undefined {
  if (spec === KeySpec.KEY_SPEC_AES_128 || spec === KeySpec.KEY_SPEC_AES_256) return WrapAlgorithm.WRAP_ALGORITHM_AES_KWP;
  if (spec === KeySpec.KEY_SPEC_RSA_2048 || spec === KeySpec.KEY_SPEC_RSA_3072 || spec === KeySpec.KEY_SPEC_RSA_4096) {
    return WrapAlgorithm.WRAP_ALGORITHM_RSA_OAEP_SHA256;
  }
  return undefined;
}

/** True for the ECDSA algorithms (the only ones `--format raw` changes). */
export function isEcdsa(algorithm: SigningAlgorithm): boolean {
  return (
    algorithm === SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256 || algorithm === SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA384 || algorithm === SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA512
  );
}
