/** Which version of a key a use names (issue 13): the primary by default, an older one on request. */
import { notFound, precondition } from "../errors";
import type { KeyRecord } from "./record";
import { versionOf } from "./versions";

/**
 * The version a call uses: `requested` 0 is the primary; another must exist (NOT_FOUND: trimmed or
 * never made) and, for a use of old data (`decrypt`, `verify`), be at or above the key's
 * min_decryption_version (FAILED_PRECONDITION naming both). `sign` and `encrypt` always use the primary.
 */
export function versionForUse(r: KeyRecord, requested: number, what: "decrypt" | "verify" | "public key"): number {
  if (!requested) return r.currentVersion;
  if (!Number.isSafeInteger(requested) || requested < 0 || !versionOf(r, requested)) {
    throw notFound(`key ${r.id} has no version ${requested} (its versions: ${r.versions.map((v) => v.version).join(", ")}; trimmed versions are gone)`);
  }
  const min = r.minDecryptionVersion ?? 1;
  if (what !== "public key" && requested < min) {
    throw precondition(`key ${r.id} version ${requested} is below its min_decryption_version ${min}: it can no longer ${what} (SetMinDecryptionVersion lowers the floor while the version exists)`);
  }
  return requested;
}
