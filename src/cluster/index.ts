/**
 * The cluster: the applier (store records into this node's HSM), the nodes' watermarks, the start-up
 * catch-up and reconcile,
 * membership records, the join ceremony (domain key handed from HSM to HSM under a
 * trusted transport key) and node reports. The state store itself (embedded or etcd) is in src/store.
 */
export {
  JOINS_PREFIX,
  Membership,
  NODES_PREFIX,
  NODE_STATUS_PREFIX,
  TRANSPORT_KEY_ID,
  fingerprintOf,
  joinKey,
  nodeKey,
  type JoinRecord,
  type JoinState,
  type MemberView,
  type MembershipOptions,
  type NodeRecord,
  type NodeReport,
} from "./membership";
export { Applier, type ApplierOptions } from "./applier";
export { COVERAGE_WAIT_MS, LEGACY_COVERAGE_PREFIX, WATERMARKS_PREFIX, Watermarks, parseWatermark, watermarkKey, type WatermarkRow, type WatermarksOptions } from "./watermark";
export { catchUp, fullCheckReason, type CatchUpOptions, type CatchUpRecords, type CatchUpResult } from "./catch-up";
export { reconcile, type ReconcileContext, type ReconcileResult } from "./reconcile";
export { APPLY_CONCURRENCY, Slots } from "./slots";
export { JoinCeremony, checkNodeId, normalizeFingerprint } from "./join";
