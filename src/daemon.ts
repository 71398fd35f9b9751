/**
 * The daemon's public surface, kept at this path for the entry points and tests that import
 * `./daemon`; the code lives in `src/daemon/` (options, store and device opening, domain key, first
 * officer, status, the Daemon class).
 */
export { Daemon, type DaemonOptions, type DaemonView, firstOfficerPasswordFile, officerPasswordFile, stderrLog } from "./daemon/index";
