import { inspect } from "node:util";
import type { Config } from "./types";

/** What a secret is shown as in logs, status and JSON. */
export const REDACTED = "[redacted]";

/** A JSON-safe copy of a Config with the PIN replaced by `"[redacted]"` (TLS appears as file paths only). */
export type RedactedConfig = Omit<Config, "device" | "cluster"> & {
  readonly cluster: (Omit<NonNullable<Config["cluster"]>, "tls"> & { readonly tls: Record<string, string | undefined> | null }) | null;
} & { readonly device: Omit<Config["device"], "pin"> & { readonly pin: typeof REDACTED } };

/**
 * A plain, redacted copy of the configuration for logs and `/v1/status`: the PIN shows as
 * `"[redacted]"`, its source (variable name or file path) stays visible.
 */
export function describeConfig(config: Config): RedactedConfig {
  const { node, listen, tls, devMode, device, limits, auth, audit, connections, grpc, cluster, lifecycle, sources } = config;
  return {
    node: { ...node },
    listen: { grpc: { ...listen.grpc }, admin: { ...listen.admin } },
    tls: tls === null ? null : { ...tls },
    devMode,
    device: {
      profile: device.profile,
      module: device.module,
      tokenLabel: device.tokenLabel,
      slot: device.slot,
      pin: REDACTED,
      pinSource: { ...device.pinSource },
      poolSize: device.poolSize,
      workers: device.workers,
      objectBudget: device.objectBudget,
      quirks: { ...device.quirks, aesKeyBits: [...device.quirks.aesKeyBits] },
      disabledMechanisms: [...device.disabledMechanisms],
    },
    limits: { ...limits },
    lifecycle: { ...lifecycle, deletionWindowDays: { ...lifecycle.deletionWindowDays }, rotationPeriodDays: { ...lifecycle.rotationPeriodDays } },
    auth: { ...auth, quorum: { ...auth.quorum } },
    audit: { ...audit },
    connections: { ...connections, admin: { ...connections.admin } },
    grpc: { ...grpc },
    cluster: cluster && { ...cluster, endpoints: [...cluster.endpoints], tls: cluster.tls && { ca: cluster.tls.ca && REDACTED, cert: cluster.tls.cert && REDACTED, key: cluster.tls.key && REDACTED } },
    sources: { ...sources },
  };
}

/**
 * Makes a compiled config safe to print and immutable: `toJSON` and `util.inspect` on the config and on
 * its device section show the redacted form (non-enumerable, so they do not show up as fields), then
 * every object is frozen.
 */
export function sealConfig(config: Config): Config {
  const hidden = (target: object, view: () => unknown) => {
    Object.defineProperty(target, "toJSON", { value: view, enumerable: false });
    Object.defineProperty(target, inspect.custom, { value: view, enumerable: false });
  };
  hidden(config, () => describeConfig(config));
  hidden(config.device, () => describeConfig(config).device);
  return deepFreeze(config);
}

/** Freezes an object and everything reachable from it. */
export function deepFreeze<T>(value: T): T {
  // Buffers (PEM contents) cannot be frozen: typed arrays with elements refuse Object.freeze.
  if (typeof value === "object" && value !== null && !ArrayBuffer.isView(value) && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
