/**
 * Writes `npm run bench`'s generated part of docs/BENCHMARKS.md: only what lies between
 * `<!-- bench:start -->` and `<!-- bench:end -->` is replaced, so the hand-written sections (the A/B
 * comparisons, "Where the time goes") and the cluster section (scripts/bench-cluster.ts) stay.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";

const REGION = /<!-- bench:start -->[\s\S]*<!-- bench:end -->/;

/** A markdown table from a header and rows. */
export function markdownTable(header: string[], rows: string[][]): string {
  return [`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
}

/**
 * Replaces the generated region of `file` with `body` (between the markers); without the markers,
 * puts the region under the title and keeps everything else that was there.
 */
export function writeBenchRegion(file: string, body: string): void {
  const region = `<!-- bench:start -->\n${body.trim()}\n<!-- bench:end -->`;
  const prev = existsSync(file) ? readFileSync(file, "utf8") : "# Benchmarks\n";
  if (REGION.test(prev)) {
    writeFileSync(
      file,
      prev.replace(REGION, () => region),
    );
    return;
  }
  const title = /^# .*\n/.exec(prev)?.[0] ?? "# Benchmarks\n";
  const rest = prev.startsWith(title) ? prev.slice(title.length) : prev;
  writeFileSync(file, `${title}\n${region}\n\n${rest.trimStart()}`);
}
