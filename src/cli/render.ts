/**
 * How hsmctl shows the API's messages: plain JSON views (enum values by their command-line names,
 * bytes in base64, 64-bit counters as numbers) for `--output json`, and aligned text for people.
 */
import type { AuditEntry, ClusterStatus, JoinRequest, Key, QuorumRequest, User } from "../sdk";
import { joinStatuses, keyOrigins, keySpecs, keyStates, keyUsages, quorumStatuses, roles } from "./names";

/** `key: value` lines, the keys aligned; empty values left out. */
export function fields(rows: [string, string | number | boolean | undefined][]): string {
  const shown = rows.filter(([, v]) => v !== undefined && v !== "");
  const width = Math.max(0, ...shown.map(([k]) => k.length));
  return shown.map(([k, v]) => `${`${k}:`.padEnd(width + 1)} ${String(v)}`).join("\n");
}

/** A table with a header row; `(none)` when there are no rows. */
export function columns(headers: string[], rows: string[][]): string {
  if (rows.length === 0) return "(none)";
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** A bigint counter as a number (exact below 2^53, which every counter of the API is). */
export function num(v: bigint | number): number {
  return typeof v === "bigint" ? Number(v) : v;
}

export function keyView(k: Key): Record<string, unknown> {
  return {
    id: k.id,
    label: k.label,
    spec: keySpecs.name(k.spec),
    usages: k.usages.map((u) => keyUsages.name(u)),
    state: keyStates.name(k.state),
    origin: keyOrigins.name(k.origin),
    owner: k.owner,
    sharedWith: k.sharedWith,
    exportable: k.exportable,
    publicOnly: k.publicOnly,
    version: k.version,
    createdAt: k.createdAt,
    ...(k.heldBy.length ? { heldBy: k.heldBy } : {}),
    // issue 13 lane S
    ...(k.description ? { description: k.description } : {}),
    ...(Object.keys(k.tags).length ? { tags: { ...k.tags } } : {}),
    ...(k.deletionDate ? { deletionDate: k.deletionDate } : {}),
    ...(k.validTo ? { validTo: k.validTo } : {}),
    ...(k.aliases.length ? { aliases: k.aliases } : {}),
    ...(k.publicKeySpki.length ? { publicKeySpki: Buffer.from(k.publicKeySpki).toString("base64") } : {}),
  };
}

export function keyText(k: Key): string {
  return fields([
    ["id", k.id],
    ["label", k.label],
    ["spec", keySpecs.name(k.spec)],
    ["usages", k.usages.map((u) => keyUsages.name(u)).join(", ")],
    ["state", keyStates.name(k.state)],
    ["origin", keyOrigins.name(k.origin)],
    ["owner", k.owner],
    ["shared with", k.sharedWith.join(", ")],
    ["exportable", k.exportable],
    ["public only", k.publicOnly ? true : undefined],
    ["version", k.version],
    ["created", k.createdAt],
    ["held by", k.heldBy.join(", ")],
    // issue 13 lane S
    ["description", k.description || undefined],
    [
      "tags",
      Object.entries(k.tags)
        .map(([t, v]) => `${t}=${v}`)
        .join(", "),
    ],
    ["deletion date", k.deletionDate || undefined],
    ["valid to", k.validTo || undefined],
    ["aliases", k.aliases.join(", ")],
  ]);
}

export function keysText(keys: Key[]): string {
  return columns(
    ["ID", "LABEL", "SPEC", "USAGES", "STATE", "ORIGIN", "OWNER", "CREATED"],
    keys.map((k) => [k.id, k.label, keySpecs.name(k.spec), k.usages.map((u) => keyUsages.name(u)).join(","), keyStates.name(k.state), keyOrigins.name(k.origin), k.owner, k.createdAt]),
  );
}

export function userView(u: User): Record<string, unknown> {
  return {
    username: u.username,
    role: roles.name(u.role),
    mustChangePassword: u.mustChangePassword,
    locked: u.locked,
    ...(u.lockReason ? { lockReason: u.lockReason } : {}),
    failedLogins: u.failedLogins,
    createdAt: u.createdAt,
    updatedAt: u.updatedAt,
  };
}

export function userText(u: User): string {
  return fields([
    ["username", u.username],
    ["role", roles.name(u.role)],
    ["locked", u.locked ? `yes (${u.lockReason || "locked"})` : "no"],
    ["must change password", u.mustChangePassword ? "yes" : "no"],
    ["failed logins", u.failedLogins],
    ["created", u.createdAt],
    ["updated", u.updatedAt],
  ]);
}

export function usersText(users: User[]): string {
  return columns(
    ["USERNAME", "ROLE", "LOCKED", "MUST-CHANGE-PASSWORD", "FAILED-LOGINS", "CREATED"],
    users.map((u) => [u.username, roles.name(u.role), u.locked ? `yes (${u.lockReason || "locked"})` : "no", u.mustChangePassword ? "yes" : "no", String(u.failedLogins), u.createdAt]),
  );
}

export function quorumView(q: QuorumRequest): Record<string, unknown> {
  return {
    id: q.id,
    operation: q.operation,
    params: q.params,
    requestedBy: q.requestedBy,
    requestedAt: q.requestedAt,
    required: q.required,
    status: quorumStatuses.name(q.status),
    approvals: q.approvals.map((a) => ({ officer: a.officer, at: a.at })),
    expiresAt: q.expiresAt,
    ...(q.rejectedBy ? { rejectedBy: q.rejectedBy } : {}),
    ...(q.executedAt ? { executedAt: q.executedAt } : {}),
  };
}

function paramsText(params: Record<string, string>): string {
  return Object.entries(params)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

export function quorumText(q: QuorumRequest): string {
  return fields([
    ["id", q.id],
    ["operation", q.operation],
    ["params", paramsText(q.params)],
    ["status", quorumStatuses.name(q.status)],
    ["approvals", `${q.approvals.length} of ${q.required}${q.approvals.length ? ` (${q.approvals.map((a) => a.officer).join(", ")})` : ""}`],
    ["requested by", q.requestedBy],
    ["requested at", q.requestedAt],
    ["expires", q.expiresAt],
    ["rejected by", q.rejectedBy],
    ["executed", q.executedAt],
  ]);
}

export function quorumsText(qs: QuorumRequest[]): string {
  return columns(
    ["ID", "OPERATION", "PARAMS", "STATUS", "APPROVALS", "REQUESTED-BY", "EXPIRES"],
    qs.map((q) => [q.id, q.operation, paramsText(q.params), quorumStatuses.name(q.status), `${q.approvals.length}/${q.required}`, q.requestedBy, q.expiresAt]),
  );
}

export function joinView(j: JoinRequest): Record<string, unknown> {
  return {
    nodeId: j.nodeId,
    transportKeySha256: j.transportKeySha256,
    advertise: j.advertise,
    requestedAt: j.requestedAt,
    expiresAt: j.expiresAt,
    status: joinStatuses.name(j.status),
    ...(j.approvedBy ? { approvedBy: j.approvedBy, approvedOn: j.approvedOn } : {}),
    ...(j.rejectedBy ? { rejectedBy: j.rejectedBy } : {}),
  };
}

export function joinText(j: JoinRequest): string {
  return fields([
    ["node", j.nodeId],
    ["transport key sha256", j.transportKeySha256],
    ["advertise", j.advertise],
    ["status", joinStatuses.name(j.status)],
    ["requested", j.requestedAt],
    ["expires", j.expiresAt],
    ["approved by", j.approvedBy ? `${j.approvedBy} on ${j.approvedOn}` : undefined],
    ["rejected by", j.rejectedBy],
  ]);
}

export function joinsText(js: JoinRequest[]): string {
  return columns(
    ["NODE", "STATUS", "TRANSPORT-KEY-SHA256", "ADVERTISE", "EXPIRES"],
    js.map((j) => [j.nodeId, joinStatuses.name(j.status), j.transportKeySha256, j.advertise, j.expiresAt]),
  );
}

export function clusterView(s: ClusterStatus): Record<string, unknown> {
  return {
    cluster: s.cluster,
    store: s.store,
    storeRevision: num(s.storeRevision),
    self: s.self,
    nodes: s.nodes.map((n) => ({
      nodeId: n.nodeId,
      advertise: n.advertise,
      appliedRevision: num(n.appliedRevision),
      lag: num(n.lag),
      hsmHealthy: n.hsmHealthy,
      storeReachable: n.storeReachable,
      lastContact: n.lastContact,
      joinedAt: n.joinedAt,
      keys: n.keys,
    })),
  };
}

export function clusterText(s: ClusterStatus): string {
  const head = s.cluster
    ? `cluster ${s.cluster} (${s.store}, revision ${num(s.storeRevision)}), answered by ${s.self}: ${s.nodes.length} node${s.nodes.length === 1 ? "" : "s"}`
    : `single node (${s.store || "embedded"} store, revision ${num(s.storeRevision)})${s.self ? `, answered by ${s.self}` : ""}`;
  if (s.nodes.length === 0) return head;
  const table = columns(
    ["NODE", "ADVERTISE", "APPLIED-REV", "LAG", "HSM", "STORE", "KEYS", "LAST-CONTACT"],
    s.nodes.map((n) => [n.nodeId, n.advertise, String(num(n.appliedRevision)), String(num(n.lag)), n.hsmHealthy ? "ok" : "DOWN", n.storeReachable ? "ok" : "DOWN", String(n.keys), n.lastContact]),
  );
  return `${head}\n${table}`;
}

export function auditView(e: AuditEntry): Record<string, unknown> {
  const out: Record<string, unknown> = { seq: num(e.seq) };
  for (const [k, v] of Object.entries(e)) if (k !== "seq" && v !== "") out[k] = v;
  return out;
}

export function auditText(entries: AuditEntry[]): string {
  return columns(
    ["SEQ", "TIME", "USER", "OPERATION", "STATUS", "KEY", "TARGET", "DETAIL"],
    entries.map((e) => [String(num(e.seq)), e.time, e.user || "-", e.operation, e.status, e.keyId, e.target, e.detail]),
  );
}
