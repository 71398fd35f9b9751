/**
 * The refusal both stores give a watch that asks for revisions they no longer hold (the embedded log
 * after compaction, the etcd mirror past its replay window), so that callers handle one error type.
 */
import { Code, HsmError } from "../errors";

/** Thrown by watch() when fromRevision is older than what the log still holds. */
export class StoreCompactedError extends HsmError {
  constructor(
    readonly fromRevision: number,
    readonly compactRevision: number,
  ) {
    super(Code.FailedPrecondition, `cannot watch from revision ${fromRevision}: the store was compacted at revision ${compactRevision}; ` + `list the prefix and watch from revision() instead`);
  }
}
