/**
 * Rate-limited audit entries for refusals a client can repeat at will (a malformed or oversized
 * request costs the sender nothing): the first refusal of a kind in a window is appended at once,
 * the others in the same window are only counted, and one entry carrying their count is appended
 * when the window ends. A flood therefore writes at most two entries per window for each client
 * host, operation and status, instead of one per request, and is still visible in the log.
 */
import type { AuditEntry } from "./entry";
import type { AppendOptions, AuditLog } from "./log";

/** Options of {@link AuditThrottle}. */
export interface AuditThrottleOptions {
  /** Length of a window, in ms. @default 1000 */
  windowMs?: number;
  /**
   * Most windows open at once (client host × operation × status). Past it, refusals of new kinds
   * share one window per operation and status, so the bookkeeping stays bounded too. @default 4096
   */
  maxWindows?: number;
  /** Passed to every append (e.g. `sync` when the log syncs every entry). */
  append?: AppendOptions;
  /** Called when a summary entry cannot be written (the refused calls were already answered). */
  onError?: (e: unknown) => void;
}

interface Window {
  first: AuditEntry;
  host: string;
  suppressed: number;
  timer?: NodeJS.Timeout;
}

/** The host part of a gRPC peer (`ipv4:1.2.3.4:5678`, `[::1]:5678`, `1.2.3.4:5678`): windows are per host, not per connection. */
export function peerHost(peer: string | undefined): string {
  if (!peer) return "unknown";
  const p = peer.replace(/^(ipv4|ipv6):/, "");
  const m = /^\[?(.*?)\]?:\d+$/.exec(p);
  return m ? m[1]! : p;
}

/** Appends refusals to an {@link AuditLog}, at most one per window and kind plus a count of the rest. */
export class AuditThrottle {
  private readonly windows = new Map<string, Window>();
  private readonly windowMs: number;
  private readonly maxWindows: number;
  private readonly pending = new Set<Promise<unknown>>();

  constructor(
    private readonly log: AuditLog,
    private readonly options: AuditThrottleOptions = {},
  ) {
    this.windowMs = options.windowMs ?? 1000;
    this.maxWindows = options.maxWindows ?? 4096;
  }

  /**
   * Records one refusal of `entry.operation` with `entry.status` from the client `entry.client`.
   * Resolves once its entry is written (the first of its window), or at once when it is only
   * counted. Rejects like {@link AuditLog.append} when the first entry cannot be written.
   */
  async record(entry: AuditEntry): Promise<void> {
    const host = peerHost(entry.client);
    let key = `${host}\u0000${entry.operation}\u0000${entry.status}`;
    if (!this.windows.has(key) && this.windows.size >= this.maxWindows) key = `*\u0000${entry.operation}\u0000${entry.status}`;
    const w = this.windows.get(key);
    if (w) {
      w.suppressed++;
      return;
    }
    const fresh: Window = { first: entry, host: key.startsWith("*\u0000") ? "many clients" : host, suppressed: 0 };
    this.windows.set(key, fresh);
    fresh.timer = setTimeout(() => this.close(key), this.windowMs);
    fresh.timer.unref();
    await this.track(this.log.append(entry, this.options.append));
  }

  /** Ends every open window now, writing the counts they hold; resolves when all is written. */
  async flush(): Promise<void> {
    for (const key of [...this.windows.keys()]) this.close(key);
    await Promise.allSettled([...this.pending]);
  }

  private close(key: string): void {
    const w = this.windows.get(key);
    if (!w) return;
    this.windows.delete(key);
    clearTimeout(w.timer);
    if (w.suppressed === 0) return;
    const summary: AuditEntry = {
      operation: w.first.operation,
      status: w.first.status,
      client: w.first.client,
      detail: `${w.suppressed} more like it from ${w.host} within ${this.windowMs} ms, not audited one by one`.slice(0, 200),
    };
    this.track(this.log.append(summary, this.options.append)).catch((e: unknown) => this.options.onError?.(e));
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    const done = () => this.pending.delete(p);
    p.then(done, done);
    return p;
  }
}
