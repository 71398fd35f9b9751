/**
 * Aliases (issue 13), the pure part: the name rules, the stored row, who may see an alias, and which
 * keys an alias may be re-pointed between (KMS UpdateAlias: the same key type and the same usages).
 * No store, no device: unit-testable with plain records.
 */
import { invalid } from "../errors";
import type { KeyRecord, UserRef } from "./record";
import { algorithmOf } from "./spec";

/** Every alias name starts with it (as KMS's). */
export const ALIAS_PREFIX = "alias/";
/** Names under it are hsmd's own (as KMS's "alias/aws/"): no user may make one. */
export const RESERVED_ALIAS_PREFIX = "alias/hsmd/";
/** Characters after the prefix, at most. */
export const MAX_ALIAS_NAME_LENGTH = 250;
/** Where alias rows live in the state store: `aliases/<name without "alias/">`. */
export const ALIASES_PREFIX = "aliases/";

const NAME_RE = /^[A-Za-z0-9/_-]+$/;

/** An alias as the state store holds it (`aliases/<name without "alias/">`, JSON). */
export interface AliasRecord {
  /** With its prefix: "alias/payments". */
  name: string;
  targetKeyId: string;
  /** The crypto user that made it: the only one who may re-point or delete it. */
  owner: UserRef;
  createdAt: string;
  updatedAt: string;
}

/** Whether a request field's value names an alias rather than a key id. */
export const isAliasName = (id: string): boolean => id.startsWith(ALIAS_PREFIX);

/**
 * Throws INVALID_ARGUMENT naming `field` and the rule unless `name` is a well-formed alias name:
 * "alias/" then 1 to 250 of [A-Za-z0-9/_-], not under the reserved "alias/hsmd/". `creating`: the
 * reserved prefix is refused only for names being made (a lookup of one just finds nothing).
 */
export function checkAliasName(name: string, field = "alias_name", creating = false): string {
  const rule = `an alias name is "${ALIAS_PREFIX}" followed by 1 to ${MAX_ALIAS_NAME_LENGTH} of the characters A-Z a-z 0-9 / _ -`;
  if (!name) throw invalid(`${field} is required (${rule})`);
  const shown = JSON.stringify(name.slice(0, 80));
  if (!name.startsWith(ALIAS_PREFIX)) throw invalid(`${field} ${shown} does not start with "${ALIAS_PREFIX}": ${rule}`);
  const rest = name.slice(ALIAS_PREFIX.length);
  if (rest.length === 0) throw invalid(`${field} ${shown} has nothing after "${ALIAS_PREFIX}": ${rule}`);
  if (rest.length > MAX_ALIAS_NAME_LENGTH) throw invalid(`${field} has ${rest.length} characters after "${ALIAS_PREFIX}", more than ${MAX_ALIAS_NAME_LENGTH}: ${rule}`);
  if (!NAME_RE.test(rest)) throw invalid(`${field} ${shown} holds a character outside A-Z a-z 0-9 / _ -: ${rule}`);
  if (creating && name.startsWith(RESERVED_ALIAS_PREFIX)) throw invalid(`${field} ${shown}: names under "${RESERVED_ALIAS_PREFIX}" are reserved for hsmd; choose another`);
  return name;
}

/** The store key of an alias row. */
export const aliasKey = (name: string): string => ALIASES_PREFIX + name.slice(ALIAS_PREFIX.length);
/** The alias name of a store key under {@link ALIASES_PREFIX}. */
export const aliasNameOf = (storeKey: string): string => ALIAS_PREFIX + storeKey.slice(ALIASES_PREFIX.length);

export const encodeAlias = (a: AliasRecord): Buffer => Buffer.from(JSON.stringify(a));

/** A stored alias row; undefined for one that is not (a row this version cannot read is ignored, never fatal). */
export function decodeAlias(value: Buffer): AliasRecord | undefined {
  try {
    const a = JSON.parse(value.toString("utf8")) as Partial<AliasRecord>;
    if (typeof a.name !== "string" || typeof a.targetKeyId !== "string" || typeof a.owner?.userId !== "string") return undefined;
    return {
      name: a.name,
      targetKeyId: a.targetKeyId,
      owner: { user: String(a.owner.user ?? ""), userId: a.owner.userId },
      createdAt: String(a.createdAt ?? ""),
      updatedAt: String(a.updatedAt ?? ""),
    };
  } catch {
    return undefined;
  }
}

/**
 * Whether `userId` may see (and resolve) `alias`: aliases are owned and shared like keys, so its
 * owner sees it, and so does every crypto user that may use its target (the key's owner, or a user
 * the key is shared with). `target`: the target key's record (undefined: it no longer exists).
 */
export function aliasVisible(alias: AliasRecord, target: KeyRecord | undefined, userId: string): boolean {
  if (alias.owner.userId === userId) return true;
  if (!target) return false;
  return target.owner?.userId === userId || (target.shares?.some((s) => s.userId === userId) ?? false);
}

/** The key type an alias may be re-pointed within: aes, hmac, rsa, ec or ed25519 (KMS: the same key type). */
export const specFamilyOf = (r: KeyRecord): string => algorithmOf(r.spec).type;

/**
 * Why an alias may not move from `from` to `to` (KMS UpdateAlias: the same key type and the same key
 * usage), or undefined when it may: code that uses the alias keeps working on the new key.
 */
export function repointRefusal(from: KeyRecord, to: KeyRecord): string | undefined {
  const ff = specFamilyOf(from);
  const tf = specFamilyOf(to);
  if (ff !== tf) return `key ${to.id} is a ${to.spec} key (${tf}) and key ${from.id} a ${from.spec} key (${ff}): an alias moves only between keys of the same type`;
  const fu = [...from.usages].sort().join(", ");
  const tu = [...to.usages].sort().join(", ");
  if (fu !== tu) return `key ${to.id} has usages ${tu} and key ${from.id} has ${fu}: an alias moves only between keys with the same usages`;
  if (from.publicOnly !== to.publicOnly)
    return `key ${to.id} is ${to.publicOnly ? "" : "not "}public-only and key ${from.id} is ${from.publicOnly ? "" : "not "}: an alias moves only between keys of the same kind`;
  return undefined;
}
