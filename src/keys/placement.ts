/**
 * Where keys are held, as far as the key rules need to know: in a cluster, how many nodes have
 * applied a key's create decides when it may be used (cluster.minNodes). `cluster/Watermarks`
 * implements it from the nodes' applied-revision watermarks (one store row per node, none per key);
 * keys/ never imports cluster/.
 */
export interface KeyPlacement {
  /** This node's id in a cluster (new records carry it as createdOn); undefined on a single node. */
  readonly nodeId?: string;
  /** UNAVAILABLE (transient) until cluster.minNodes nodes have applied the key's create revision. */
  checkUsable(id: string, createRevision: number | undefined): Promise<void>;
  /** After a create committed at `revision`: waits (bounded) until minNodes nodes have applied it. */
  awaitCoverage(id: string, revision: number): Promise<void>;
}

/** One node, no watermarks: every key is usable once committed. */
export const SINGLE_NODE: KeyPlacement = {
  checkUsable: async () => undefined,
  awaitCoverage: async () => undefined,
};
