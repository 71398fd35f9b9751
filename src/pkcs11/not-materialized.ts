import { Code, HsmError } from "../errors";
import type { Part } from "./types";

/** Thrown when a key's objects are not in the device: the caller materializes it from its record. */
export class KeyNotMaterializedError extends HsmError {
  constructor(
    readonly keyId: string,
    readonly part: Part,
  ) {
    super(Code.Unavailable, `key ${keyId} is not materialized in the device`, { transient: true });
  }
}
