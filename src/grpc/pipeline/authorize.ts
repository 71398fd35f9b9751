import type { AccessGuard, KeyRef } from "../../access";
import { invalid } from "../../errors";
import type { Principal } from "../../users";

/**
 * The one decision of whether `principal` may make a request of `method`: the method's role rule
 * ({@link AccessGuard.authorize}: role, one-time password) and then each key the request names
 * (`keyRefs`, from the rule's `keys(req)`) through {@link AccessGuard.key} (owner, shared, or
 * NOT_FOUND). A key ref that could not be read from the request (a malformed ciphertext header:
 * `ref.invalid`) answers INVALID_ARGUMENT. A unary call and each message of the crypto stream both
 * come here, so the two can never decide differently. Rejects with the refusal (an HsmError).
 */
export async function authorizeRequest(guard: AccessGuard, method: string, principal: Principal | undefined, keyRefs: readonly KeyRef[]): Promise<void> {
  guard.authorize(method, principal);
  for (const ref of keyRefs) {
    if (ref.invalid !== undefined) throw invalid(ref.invalid);
    await guard.key(principal!, ref.id, ref.need, ref.field);
  }
}
