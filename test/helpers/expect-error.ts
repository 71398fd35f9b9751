import { expect } from "vitest";
import { HsmClientError } from "../../src/sdk";

/**
 * The call must reject with an HsmClientError of exactly `codeName` whose details contain every
 * phrase (a RegExp must match), and never a raw PKCS#11 return value or "internal error" in front of
 * a person. Answers the error for further checks.
 */
export async function expectError(p: Promise<unknown>, codeName: string, ...phrases: (string | RegExp)[]): Promise<HsmClientError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${codeName}, but the call succeeded`).toBeInstanceOf(HsmClientError);
  const e = err as HsmClientError;
  expect({ codeName: e.codeName, details: e.details }).toEqual({ codeName, details: expect.any(String) });
  for (const phrase of phrases) {
    if (typeof phrase === "string") expect(e.details).toContain(phrase);
    else expect(e.details).toMatch(phrase);
  }
  expect(e.details).not.toMatch(/CKR_|internal error/);
  return e;
}

/** A call's outcome as the authorization matrices compare it: "OK" or the HsmClientError's code name (anything else is rethrown). */
export async function callOutcome(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return "OK";
  } catch (e) {
    if (e instanceof HsmClientError) return e.codeName;
    throw e;
  }
}
