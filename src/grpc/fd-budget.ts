import { readFileSync, readdirSync } from "node:fs";

let processLimit: { value: number | undefined } | undefined;

/**
 * The soft RLIMIT_NOFILE of this process ("Max open files" in /proc/self/limits): what open(2),
 * accept(2) and the PKCS#11 module's own file opens share. Undefined where it cannot be read (not
 * Linux) or is unlimited. This process's is read once (reading it takes a descriptor, which may be
 * missing exactly when it is needed); `limitsText` parses a given text instead.
 */
export function softFdLimit(limitsText?: string): number | undefined {
  if (limitsText === undefined) {
    if (processLimit) return processLimit.value;
    let text: string;
    try {
      text = readFileSync("/proc/self/limits", "utf8");
    } catch {
      return undefined;
    }
    processLimit = { value: softFdLimit(text) };
    return processLimit.value;
  }
  const text = limitsText;
  const m = /^Max open files\s+(\S+)/m.exec(text);
  if (!m || m[1] === "unlimited") return undefined;
  const n = Number.parseInt(m[1]!, 10);
  return Number.isFinite(n) && n > 0 ? n : undefined;
}

/** Descriptors this process holds now (entries of /proc/self/fd), or undefined where it cannot tell. */
export function openFdCount(): number | undefined {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return undefined;
  }
}

/**
 * Descriptors this process can still open (soft limit minus open ones), or undefined where it cannot
 * tell. 0 when even listing the open ones fails for want of a descriptor (EMFILE, ENFILE).
 */
export function freeFds(): number | undefined {
  const limit = softFdLimit();
  if (limit === undefined) return undefined;
  try {
    return limit - readdirSync("/proc/self/fd").length;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "EMFILE" || code === "ENFILE" ? 0 : undefined;
  }
}

/** What {@link connectionBudget} decided, and the line the daemon logs about it. */
export interface ConnectionBudget {
  /** The gRPC connection bound in force. */
  maxConnections: number;
  /** True when the fd limit lowered the configured bound. */
  clamped: boolean;
  message: string;
}

/**
 * The gRPC connection bound: the configured `maxConnections`, but never more than the soft fd limit
 * leaves once the descriptors open now, `fdReserve` (SoftHSM2 opens a file per token object it reads,
 * the store and the audit log need theirs) and the admin server's own connections are set aside. A
 * node whose sockets take every descriptor fails its device calls (SoftHSM2 then marks its token
 * invalid until the module is re-initialized), so the socket count must be bounded below the limit.
 */
export function connectionBudget(o: { configured: number; fdReserve: number; adminConnections: number; softLimit?: number; openNow?: number }): ConnectionBudget {
  const limit = o.softLimit ?? softFdLimit();
  if (limit === undefined) {
    return { maxConnections: o.configured, clamped: false, message: `gRPC connections: at most ${o.configured} at once (file descriptor limit unknown)` };
  }
  const open = o.openNow ?? openFdCount() ?? 0;
  const room = Math.max(1, limit - open - o.fdReserve - o.adminConnections);
  if (room >= o.configured) {
    return { maxConnections: o.configured, clamped: false, message: `gRPC connections: at most ${o.configured} at once (file descriptor limit ${limit})` };
  }
  return {
    maxConnections: room,
    clamped: true,
    message:
      `gRPC connections: at most ${room} at once, not the configured ${o.configured}: the file descriptor limit (RLIMIT_NOFILE) is ${limit}, ` +
      `${open} are open, ${o.fdReserve} are kept for the HSM, store and audit log (connections.fdReserve) and ${o.adminConnections} for the admin port; raise the limit (ulimit -n, LimitNOFILE=) to allow more`,
  };
}
