import type { Config } from "../config";
import type { JoinRecord } from "../cluster";

/** What `hsmd start|init|join` asks of Daemon.start: the compiled config and the ceremony flags. */
export interface DaemonOptions {
  config: Config;
  /** Create the domain key and the node's metadata when the store has none (`hsmd init`). */
  init?: boolean;
  /**
   * Join an existing cluster when this node's HSM lacks the cluster's domain key (`hsmd join`):
   * records a join request and waits for a crypto officer to approve it.
   */
  join?: boolean;
  /** Called with the join request once recorded (the operator shows its fingerprint to the approving officer). */
  onJoinRequest?: (r: JoinRecord) => void;
  /**
   * Destroy the device objects no record explains (and those already in quarantine) instead of
   * quarantining them (`--purge-orphans`): only when the store is known to be complete.
   */
  purgeOrphans?: boolean;
  /**
   * A cluster node proves every record at start (`--full-check`) instead of only those changed since
   * the revision it had applied; the full check also runs on its own when the store has compacted past it.
   */
  fullCheck?: boolean;
  log?: (msg: string) => void;
}

/** Redacted, human-facing log line writer (stderr). */
export function stderrLog(msg: string): void {
  process.stderr.write(`${new Date().toISOString()} hsmd: ${msg}\n`);
}
