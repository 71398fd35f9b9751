export { buildAdminApp } from "./app";
export type { AdminBounds, AdminDeps, ErrorBody, ReadinessCheck } from "./app";
