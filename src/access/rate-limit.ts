/**
 * Login rate limiting per peer address: a token bucket per client IP (the port is left out, so new
 * connections do not buy new buckets). Login is the one call without a session, and each one costs a
 * scrypt hash: one peer may not spend the node's hashing on guesses faster than the configured rate.
 */
import { Code, HsmError } from "../errors";

/** Rate of a {@link PeerRateLimiter} (from `auth.loginRateLimit`). */
export interface RateLimitOptions {
  /** logins a peer may make at once after being quiet (the bucket's size). */
  burst: number;
  /** tokens added back per second per peer. */
  perSecond: number;
  /** peers tracked at once; beyond it the least recently seen peers are forgotten (their buckets were the fullest). */
  maxPeers: number;
  /** clock in ms (tests inject one). @default Date.now */
  now?: () => number;
}

/** Default login rate: bursts of 30, then 10 a second, per peer address; 10,000 peers tracked. */
export const DEFAULT_LOGIN_RATE: Readonly<Omit<RateLimitOptions, "now">> = Object.freeze({ burst: 30, perSecond: 10, maxPeers: 10_000 });

/** The outcome of {@link PeerRateLimiter.take}. */
export type RateDecision = { ok: true } | { ok: false; retryAfterMs: number };

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * The client address of a grpc-js peer string (`ipv4:127.0.0.1:5000`, `127.0.0.1:5000`,
 * `ipv6:[::1]:5000`, `[::1]:5000`, `unix:/path`): the host without the port.
 */
export function peerAddress(peer: string): string {
  const p = peer.replace(/^(ipv4|ipv6):/, "");
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(p);
  if (v6) return v6[1]!;
  const v4 = /^([^:]+):\d+$/.exec(p);
  return v4 ? v4[1]! : p;
}

/** Token buckets keyed by peer address (see the module comment). */
export class PeerRateLimiter {
  // A Map keeps insertion order: re-inserting on each take makes the first entry the least recently seen.
  private readonly buckets = new Map<string, Bucket>();
  private readonly now: () => number;
  /** Takes refused since start (for /metrics). */
  refused = 0;

  constructor(private readonly opts: RateLimitOptions) {
    if (!(opts.burst >= 1) || !Number.isFinite(opts.burst)) throw new RangeError(`burst must be at least 1, got ${String(opts.burst)}`);
    if (!(opts.perSecond > 0) || !Number.isFinite(opts.perSecond)) throw new RangeError(`perSecond must be positive, got ${String(opts.perSecond)}`);
    if (!Number.isSafeInteger(opts.maxPeers) || opts.maxPeers < 1) throw new RangeError(`maxPeers must be a positive integer, got ${String(opts.maxPeers)}`);
    this.now = opts.now ?? Date.now;
  }

  /** Takes one token from `key`'s bucket, or says how long until one is there. */
  take(key: string): RateDecision {
    const now = this.now();
    const b = this.buckets.get(key) ?? { tokens: this.opts.burst, at: now };
    this.buckets.delete(key);
    b.tokens = Math.min(this.opts.burst, b.tokens + (Math.max(0, now - b.at) / 1000) * this.opts.perSecond);
    b.at = now;
    this.buckets.set(key, b);
    if (this.buckets.size > this.opts.maxPeers) this.buckets.delete(this.buckets.keys().next().value!);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { ok: true };
    }
    this.refused++;
    return { ok: false, retryAfterMs: Math.ceil(((1 - b.tokens) / this.opts.perSecond) * 1000) };
  }

  /**
   * {@link take} for a login from `peer`: throws RESOURCE_EXHAUSTED saying when to retry when the
   * peer is over its rate.
   */
  admitLogin(peer: string): void {
    const addr = peerAddress(peer);
    const d = this.take(addr);
    if (d.ok) return;
    const secs = (d.retryAfterMs / 1000).toFixed(d.retryAfterMs < 10_000 ? 1 : 0);
    throw new HsmError(
      Code.ResourceExhausted,
      `too many logins from ${addr}: retry in ${secs} s (the limit is ${this.opts.burst} at once, then ${this.opts.perSecond} per second: auth.loginRateLimit)`,
    );
  }

  /** Peers tracked now. */
  get size(): number {
    return this.buckets.size;
  }
}
