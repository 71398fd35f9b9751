export { buildAdminApp } from "./app";
export type { AdminDeps, ErrorBody, ReadinessCheck } from "./app";
