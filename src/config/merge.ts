/*
 * Layering: profile < config file < overrides. Plain objects merge key by key; arrays and scalars are
 * replaced. Two groups are replaced as a whole, never mixed across layers: the PIN source (an `env`
 * from one layer and a `file` from another would be ambiguous) and the token selector (a layer that
 * names a `tokenLabel` or a `slot` drops the lower layer's choice).
 */

type Obj = Record<string, unknown>;

/** True for `{...}` values (not arrays, not null). */
export function isPlainObject(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Merges `upper` over `lower` (device section rules): see the file comment. Inputs are not modified. */
export function mergeDevice(lower: Obj, upper: Obj): Obj {
  const base = { ...lower };
  if ("tokenLabel" in upper || "slot" in upper) {
    delete base.tokenLabel;
    delete base.slot;
  }
  if ("pin" in upper) delete base.pin;
  return mergeObjects(base, upper, "/device");
}

/** Deep merge of a whole config document; `undefined` in `upper` leaves `lower`'s value. */
export function mergeConfig(lower: unknown, upper: unknown): unknown {
  if (!isPlainObject(lower) || !isPlainObject(upper)) return upper === undefined ? lower : upper;
  return mergeObjects(lower, upper, "");
}

function mergeObjects(lower: Obj, upper: Obj, path: string): Obj {
  const out: Obj = { ...lower };
  for (const [k, v] of Object.entries(upper)) {
    if (v === undefined) continue;
    const here = `${path}/${k}`;
    const l = out[k];
    if (here === "/device" && isPlainObject(l) && isPlainObject(v)) out[k] = mergeDevice(l, v);
    else if (isPlainObject(l) && isPlainObject(v)) out[k] = mergeObjects(l, v, here);
    else out[k] = v;
  }
  return out;
}
