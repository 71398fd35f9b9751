export { buildAdminApp } from "./app";
export type { AdminBounds, AdminDeps, ErrorBody, ReadinessCheck } from "./app";
export { httpStatusOf } from "./status";
