/** Optimistic read-modify-write over the state store: compare on what was read, retry on conflict. */
import { setTimeout as sleep } from "node:timers/promises";
import { HsmError, Code } from "../errors";
import type { Compare, Op, StateStore } from "../store";

/** One attempt's outcome: a write guarded by compares (retried if they fail), or an answer with no write. */
export type Attempt<R> = { compares: Compare[]; ops: Op[]; result: R } | { result: R };

/** Attempts before giving up with UNAVAILABLE (each conflict means another writer made progress). */
export const MAX_TXN_ATTEMPTS = 40;

/**
 * Runs `attempt` (which reads what it needs and returns the guarded write) until its txn commits or it
 * answers without writing. A compare failure means a concurrent writer changed a record this attempt
 * read: the whole read-modify-write runs again on fresh data, so no update is ever lost.
 */
export async function retryTxn<R>(store: StateStore, what: string, attempt: () => Promise<Attempt<R>>): Promise<R> {
  for (let i = 0; i < MAX_TXN_ATTEMPTS; i++) {
    const a = await attempt();
    if (!("ops" in a)) return a.result;
    const res = await store.txn(a.compares, a.ops);
    if (res.succeeded) return a.result;
    // Jittered backoff so that a herd of writers on one record does not collide in every round.
    await sleep(Math.floor(Math.random() * Math.min(2 + i * 2, 25)));
  }
  throw new HsmError(Code.Unavailable, `${what}: too many concurrent updates, retry`, { transient: true });
}
