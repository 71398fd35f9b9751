/**
 * Key records from before records stored names: hsmd up to issue 10 wrote `spec` and `origin` as the
 * API's ts-proto enum numbers (KeySpec 9 = EC_P256, KeyOrigin 1 = GENERATED). A tolerant reader, not
 * a rewrite: every decode accepts both, and a record is written with names the next time it changes
 * (a share, a delete is no write). Stores written by any version load unchanged, a downgrade still
 * reads records that were not touched, and no start-up pass rewrites a million records in etcd.
 * The numbers are frozen here: they are the stored format's, whatever the proto does next.
 */
import type { KeyOriginName, KeySpecName } from "./types";

/** KeySpec numbers as hsm.v1 numbered them when records stored them (1 = AES_128 … 13 = ED25519). */
const SPEC_BY_NUMBER: Readonly<Record<number, KeySpecName>> = {
  1: "AES_128",
  2: "AES_256",
  3: "HMAC_SHA256",
  4: "HMAC_SHA384",
  5: "HMAC_SHA512",
  6: "RSA_2048",
  7: "RSA_3072",
  8: "RSA_4096",
  9: "EC_P256",
  10: "EC_P384",
  11: "EC_P521",
  12: "EC_SECP256K1",
  13: "ED25519",
};
/** KeyOrigin numbers as records stored them (1 = GENERATED … 5 = DERIVED). */
const ORIGIN_BY_NUMBER: Readonly<Record<number, KeyOriginName>> = { 1: "GENERATED", 2: "IMPORTED", 3: "PUBLIC", 4: "UNWRAPPED", 5: "DERIVED" };

/** A record's spec, by name, from either stored format; an unknown value is kept as stored (it fails where used). */
export function specFromStored(v: unknown): KeySpecName {
  return (typeof v === "number" ? (SPEC_BY_NUMBER[v] ?? String(v)) : v) as KeySpecName;
}

/** A record's origin, by name, from either stored format. */
export function originFromStored(v: unknown): KeyOriginName {
  return (typeof v === "number" ? (ORIGIN_BY_NUMBER[v] ?? String(v)) : v) as KeyOriginName;
}

/** A decoded record (JSON) with its spec and origin as names, and its state by name (records before issue 13 said "enabled"). */
export function upgradeRecord<T extends { spec: unknown; origin: unknown }>(r: T): T & { spec: KeySpecName; origin: KeyOriginName } {
  const state = (r as { state?: unknown }).state;
  return { ...r, spec: specFromStored(r.spec), origin: originFromStored(r.origin), ...(state === "enabled" || state === undefined ? { state: "ENABLED" } : {}) };
}
