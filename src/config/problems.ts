import type { ErrorObject } from "ajv";
import type { ConfigProblem } from "./types";

/**
 * Thrown by `loadConfig`/`compileConfig` when the configuration cannot be used. Carries every problem
 * found, not just the first, so an operator fixes the file in one pass. The message has one line per
 * problem, `config: <path>: <reason>`, and never contains a secret (the PIN is never read into it).
 */
export class ConfigError extends Error {
  override readonly name = "ConfigError";

  constructor(readonly problems: readonly ConfigProblem[]) {
    super(formatProblems(problems));
    Object.freeze(this.problems);
  }
}

/** One line per problem: `config: /device/poolSize: must be integer`. */
export function formatProblems(problems: readonly ConfigProblem[]): string {
  return problems.map((p) => `config: ${p.path || "/"}: ${p.message}`).join("\n");
}

/** Escapes one JSON pointer segment (RFC 6901). */
export function pointerSegment(key: string): string {
  return key.replace(/~/g, "~0").replace(/\//g, "~1");
}

/** Adds problems not already listed (same path and message), keeping the order of discovery. */
export function addProblems(into: ConfigProblem[], more: readonly ConfigProblem[]): void {
  for (const p of more) {
    if (!into.some((q) => q.path === p.path && q.message === p.message)) into.push(p);
  }
}

/**
 * Turns ajv's errors into problems with a JSON path and a reason a person can act on. Sub-errors of
 * `anyOf`/`not` branches are dropped (the combinator's own message says it); a `required` error points
 * at the missing property; an unknown property points at itself and suggests the nearest known one.
 * Only schema facts go into messages, never the offending value (it could be a secret).
 */
export function problemsFromAjv(errors: readonly ErrorObject[] | null | undefined, prefix = ""): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const e of errors ?? []) {
    if (/\/(anyOf|oneOf)\/\d+\//.test(e.schemaPath)) continue;
    const custom = (e.parentSchema as { errorMessages?: Record<string, string> } | undefined)?.errorMessages;
    let path = prefix + e.instancePath;
    let message: string;
    switch (e.keyword) {
      case "required": {
        const prop = (e.params as { missingProperty: string }).missingProperty;
        path += "/" + pointerSegment(prop);
        message = custom?.[`required/${prop}`] ?? "is required";
        break;
      }
      case "additionalProperties": {
        const prop = (e.params as { additionalProperty: string }).additionalProperty;
        path += "/" + pointerSegment(prop);
        const known = Object.keys((e.parentSchema as { properties?: object } | undefined)?.properties ?? {});
        const near = nearest(prop, known);
        message = `is not a known property${near ? ` (did you mean '${near}'?)` : ""}; allowed: ${known.join(", ")}`;
        break;
      }
      case "enum": {
        const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
        message = custom?.enum ?? `must be one of ${allowed.map((v) => String(v)).join(", ")}`;
        break;
      }
      default:
        message = custom?.[e.keyword] ?? e.message ?? `fails ${e.keyword}`;
    }
    addProblems(out, [{ path: path || "/", message }]);
  }
  return out;
}

/** The candidate closest to `word` by edit distance, if close enough to be a likely typo. */
function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = Infinity;
  const w = word.toLowerCase();
  for (const c of candidates) {
    const l = c.toLowerCase();
    const score = l.startsWith(w) || w.startsWith(l) ? 0 : distance(w, l);
    if (score < bestScore) {
      best = c;
      bestScore = score;
    }
  }
  return bestScore <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}
