/** The daemon: wires the parts and starts them in dependency order (see daemon.ts); the entry points import it from here. */
export { Daemon } from "./daemon";
export { type DaemonOptions, stderrLog } from "./options";
export { firstOfficerPasswordFile, officerPasswordFile } from "./paths";
export type { DaemonView } from "./status";
