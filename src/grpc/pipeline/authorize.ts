import type { AccessGuard, KeyRef } from "../../access";
import { invalid } from "../../errors";
import { isAliasName } from "../../keys";
import type { Principal } from "../../users";

/** A KeyRef's .proto field name as the request object's property (key_id → keyId). */
const propOf = (field: string) => field.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/**
 * The one decision of whether `principal` may make a request of `method`: the method's role rule
 * ({@link AccessGuard.authorize}: role, one-time password) and then each key the request names
 * (`keyRefs`, from the rule's `keys(req)`) through {@link AccessGuard.key} (owner, shared, or
 * NOT_FOUND). A key ref that could not be read from the request (a malformed ciphertext header:
 * `ref.invalid`) answers INVALID_ARGUMENT. A unary call and each message of the crypto stream both
 * come here, so the two can never decide differently. Rejects with the refusal (an HsmError).
 *
 * A key ref that names an alias ("alias/NAME") is resolved first, for the caller, and the key id
 * is written back into `req` (the ref's field) and into the ref, so that services never see
 * aliases and the audit names the key (issue 13).
 */
export async function authorizeRequest(guard: AccessGuard, method: string, principal: Principal | undefined, keyRefs: KeyRef[], req?: Record<string, unknown>): Promise<void> {
  guard.authorize(method, principal);
  for (const ref of keyRefs) {
    if (ref.invalid !== undefined) throw invalid(ref.invalid);
    if (isAliasName(ref.id)) {
      const id = await guard.resolveKeyId(principal!, ref.id, ref.field);
      const prop = propOf(ref.field);
      if (req && req[prop] === ref.id) req[prop] = id;
      ref.id = id;
    }
    await guard.key(principal!, ref.id, ref.need, ref.field);
  }
}

/**
 * Batch items that name an alias get the key id it resolves to for the caller (items whose alias
 * does not resolve keep it: their own access check then answers NOT_FOUND for that item alone).
 */
export async function resolveBatchItems(guard: AccessGuard, principal: Principal, items: unknown): Promise<void> {
  if (!Array.isArray(items)) return;
  await Promise.all(
    (items as Array<{ keyId?: unknown }>).map(async (item) => {
      if (typeof item?.keyId !== "string" || !isAliasName(item.keyId)) return;
      try {
        item.keyId = await guard.resolveKeyId(principal, item.keyId);
      } catch {
        // decided by the item's own check
      }
    }),
  );
}
