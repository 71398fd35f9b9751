import Ajv, { type ValidateFunction } from "ajv";
import { parseListenAddress } from "./listen";
import { problemsFromAjv } from "./problems";
import { CONFIG_SCHEMA, PROFILE_SCHEMA, RESOLVED_DEVICE_SCHEMA } from "./schema";
import type { ConfigProblem } from "./types";

/*
 * One ajv instance, schemas compiled once at module load. `allErrors` so that every problem is
 * reported together; `verbose` so that the formatter can read our `errorMessages` annotation from the
 * failing schema; `strict` so that a typo in the schemas themselves fails fast.
 */
const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, strictRequired: false });
ajv.addVocabulary(["errorMessages"]);
ajv.addFormat("host-port", { type: "string", validate: (s: string) => parseListenAddress(s) !== undefined });

const validators: Record<"config" | "profile" | "device", ValidateFunction> = {
  config: ajv.compile(CONFIG_SCHEMA),
  profile: ajv.compile(PROFILE_SCHEMA),
  device: ajv.compile(RESOLVED_DEVICE_SCHEMA),
};

/** Checks `data` against one of the schemas; problems' paths are prefixed with `prefix`. */
export function checkSchema(which: keyof typeof validators, data: unknown, prefix = ""): ConfigProblem[] {
  const validate = validators[which];
  return validate(data) ? [] : problemsFromAjv(validate.errors, prefix);
}
