/**
 * The "Scale" section of docs/BENCHMARKS.md that `npm run bench:scale -- --write` writes: what was
 * measured and how, the results by N, and the targets. Only the region between
 * `<!-- scale:start -->` and `<!-- scale:end -->` is replaced; without it, the section is appended.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { markdownTable } from "./bench-doc";
import { resultRows, type ScaleRun, targetRows } from "./bench-scale-stats";

const REGION = /<!-- scale:start -->[\s\S]*<!-- scale:end -->/;

/** How the run was configured, for the section's prose. */
export interface ScaleSetup {
  signSeconds: number;
  signInflight: number;
  hotKeys: number;
  sample: number;
  etcdFlags: string[];
}

/** The results table (one column per N) and the targets table of the largest N, as markdown. */
export function scaleTables(runs: ScaleRun[]): { results: string; targets: string } {
  const results = markdownTable(["", ...runs.map((r) => `N = ${r.keys.toLocaleString("en-US")}`)], resultRows(runs));
  const big = runs[0]!;
  const targets = markdownTable(["target", "goal", `result at N = ${big.keys.toLocaleString("en-US")}`, "met"], targetRows(big, runs[1]));
  return { results, targets };
}

/** The section's markdown. */
export function scaleSection(runs: ScaleRun[], setup: ScaleSetup): string {
  const { results, targets } = scaleTables(runs);
  return `<!-- scale:start -->
## Scale

Measured by \`npm run bench:scale\` (scripts/bench-scale.ts) on ${new Date().toISOString().slice(0, 10)}, on the same 2-core machine: 3 etcd members (\`${setup.etcdFlags.join(" ")}\`) and 3 hsmd daemons on loopback, each daemon on its own SoftHSM2 token (pool 8), joined through the real ceremony, filled by one crypto user through the SDK, one client per node, ${runs[0]!.inflight} creations in flight spread over the nodes (keys alternately AES-256 and P-256, 1 in 100 RSA-2048).

- **Raw etcd ceiling:** create-if-absent txn puts of the mean record size through the etcd3 client, same in-flight, for 5 s before the fill, under a prefix deleted after.
- **Replication lag:** the bench watches \`keys/\` (every ${setup.sample}th create's commit revision and when it was seen) and \`watermarks/\` (when each node's watermark changed); a key's lag on a node other than its creator is the first time that node's watermark was seen at or past the key's revision, less the time its commit was seen.
- **Sign:** ${setup.signSeconds} s per phase, ${setup.signInflight} in flight through a client on all endpoints; AES keys encrypt 32 bytes with AES-GCM, P-256 keys sign with ECDSA-SHA256, RSA keys with PKCS#1 v1.5. Hot: ${setup.hotKeys} keys used in turn; cold: a key drawn uniformly from all N at each call. Hit ratio: \`hsmd_key_use_hits_total\` ÷ (hits + \`hsmd_key_use_misses_total\`) over the phase, summed over the daemons (from /metrics, else the same counters in /v1/status' \`keyObjects\`), and the objects evicted meanwhile.
- **Catch-up:** n3 stopped (SIGTERM) while the keys were created through n1 and n2, then started; times from its start until its /readyz answered 200, until a use of the last key created meanwhile through n3 alone succeeded (the target's figure), and until its watermark reached the last creation's commit revision. Before the sign phases the bench waits until every node's watermark has passed the fill's last commit, so that they measure a quiet cluster.
- **RSS:** each daemon's VmRSS after the sign phases. **DB size:** the largest member's \`dbSize\` (\`dbSizeInUse\`) from the maintenance status. **Bytes per record:** the value of \`keys/<id>\` in etcd, mean of a few records per kind.

${results}

Targets (not tests):

${targets}
<!-- scale:end -->`;
}

/** Replaces the Scale section of `file` (or appends it). */
export function writeScaleSection(file: string, section: string): void {
  const prev = existsSync(file) ? readFileSync(file, "utf8") : "# Benchmarks\n";
  const next = REGION.test(prev) ? prev.replace(REGION, () => section) : `${prev.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}
