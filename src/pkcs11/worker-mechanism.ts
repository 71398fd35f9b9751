import type * as pk from "pkcs11js";
import type { WireBytes, WireMechanism } from "./worker-protocol";

/**
 * How a mechanism crosses to a session worker: its byte fields written into the batch's one input
 * buffer and named by offset ({@link WireMechanism}), so that structured clone copies no typed array
 * per item.
 */

/** The bytes a mechanism's parameter puts in the batch's input buffer. */
export function mechanismBytes(m: pk.Mechanism | undefined): number {
  const p = m?.parameter as unknown;
  if (Buffer.isBuffer(p)) return p.length;
  let n = 0;
  if (p && typeof p === "object") for (const v of Object.values(p)) if (Buffer.isBuffer(v)) n += v.length;
  return n;
}

/** The mechanism with its byte fields written into the batch's input buffer (by `put`) and named by offset. */
export function wireMechanism(m: pk.Mechanism, put: (b: Buffer) => WireBytes): WireMechanism {
  const p = m.parameter as unknown;
  if (Buffer.isBuffer(p)) return { mechanism: m.mechanism, bytes: put(p) };
  if (p && typeof p === "object") {
    const fields: Record<string, number | WireBytes> = {};
    for (const [k, v] of Object.entries(p)) fields[k] = Buffer.isBuffer(v) ? put(v) : (v as number); // numbers (and absent fields) as they are
    return { mechanism: m.mechanism, fields };
  }
  return { mechanism: m.mechanism };
}
