import type { Op } from "../store";

/**
 * Where keys are held, as far as the key rules need to know: in a cluster, how many nodes hold a
 * key decides when it may be used (cluster.minNodes), and a create or delete carries this node's
 * coverage entries in its own store transaction. `cluster/Coverage` implements it; keys/ never
 * imports cluster/.
 */
export interface KeyPlacement {
  /** UNAVAILABLE (transient) until enough nodes hold the key; resolves at once when that is known. */
  checkUsable(id: string): Promise<void>;
  /** After a create: waits (bounded) until enough nodes hold the new key. */
  awaitCoverage(id: string): Promise<void>;
  /** Store writes a create adds to its transaction: this node holds the new key. */
  createOps(id: string, at: string): Op[];
  /** Store writes a delete adds to its transaction: nobody holds the key any more. */
  deleteOps(id: string): Promise<Op[]>;
}

/** One node, no coverage: every key is usable once committed. */
export const SINGLE_NODE: KeyPlacement = {
  checkUsable: async () => undefined,
  awaitCoverage: async () => undefined,
  createOps: () => [],
  deleteOps: async () => [],
};
