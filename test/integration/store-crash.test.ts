/**
 * A real crash test of the embedded store: a child process creates keys in a burst of concurrent txns
 * and is killed with SIGKILL at a random moment; the store reopened in this process must hold every
 * key the child saw acknowledged, with its exact value, and nothing half written.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openEmbeddedStore } from "../../src/store";

const CHILD = join(__dirname, "../helpers/store-crash-child.cjs");
const { record } = createRequire(__filename)(CHILD) as { record: (n: number) => string };

const ROUNDS = 6;
const PER_ROUND = 4000;
const root = mkdtempSync(join(tmpdir(), "hsmd-store-crash-"));
const dir = join(root, "state");
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface ChildRun {
  acked: Set<number>;
  opened: boolean;
  done: boolean;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** Runs the child and kills it with SIGKILL once killAfterAcks ACKs were read, or after killAfterMs. */
function runChild(first: number, kill: { acks?: number; ms?: number }): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir, String(first), String(PER_ROUND), "64", String(256 * 1024)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const run: ChildRun = { acked: new Set(), opened: false, done: false, signal: null, stderr: "" };
    let buf = "";
    let killed = false;
    const killNow = () => {
      if (!killed) {
        killed = true;
        child.kill("SIGKILL");
      }
    };
    const timer = kill.ms !== undefined ? setTimeout(killNow, kill.ms) : undefined;
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.startsWith("ACK ")) run.acked.add(Number(line.slice(4)));
        else if (line === "OPEN") run.opened = true;
        else if (line === "DONE") run.done = true;
      }
      if (kill.acks !== undefined && run.acked.size >= kill.acks) killNow();
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (c: string) => (run.stderr += c));
    child.on("error", reject);
    // 'exit' comes after the kernel reaped the child: its pid is dead, so its LOCK is stale.
    child.on("close", (_code, signal) => {
      if (timer) clearTimeout(timer);
      run.signal = signal;
      resolve(run);
    });
  });
}

describe("embedded store survives kill -9", () => {
  it(`keeps every acknowledged create over ${ROUNDS} crashes at random moments`, { timeout: 240_000 }, async () => {
    const everAcked = new Set<number>();
    let totalAcked = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const first = round * PER_ROUND;
      // Round 0 may die while opening or in its first writes; the others after a random number of ACKs.
      const kill = round === 0 ? { ms: 150 + Math.floor(Math.random() * 300) } : { acks: 50 + Math.floor(Math.random() * 2500) };
      const run = await runChild(first, kill);
      expect(run.stderr.replace(/hsmd store warning:[^\n]*\n/g, "")).toBe("");
      expect(run.done, `round ${round} finished before the kill: make the burst longer`).toBe(false);
      expect(run.signal).toBe("SIGKILL");
      for (const n of run.acked) everAcked.add(n);
      totalAcked += run.acked.size;

      const warnings: string[] = [];
      const store = await openEmbeddedStore(dir, { warn: (m) => warnings.push(m) });
      try {
        const entries = await store.list("keys/");
        const present = new Map(entries.map((e) => [Number(e.key.slice(5)), e]));
        // Every key ever acknowledged, in this round or an earlier one, is there with its exact value.
        for (const n of everAcked) {
          const e = present.get(n);
          expect(e, `acknowledged keys/${n} lost in round ${round}`).toBeDefined();
          expect(e!.value.toString("utf8")).toBe(record(n));
        }
        // Nothing half written: every stored value is a whole record, from a burst we ran.
        for (const [n, e] of present) {
          expect(n).toBeLessThan(first + PER_ROUND);
          expect(JSON.parse(e.value.toString("utf8"))).toEqual(JSON.parse(record(n)));
          expect(e.version).toBe(1);
          expect(e.createRevision).toBe(e.modRevision);
        }
        // Each create was one revision: revisions are exactly 1..revision, one per present key.
        const revs = entries.map((e) => e.modRevision).sort((x, y) => x - y);
        expect(revs).toEqual(Array.from({ length: store.revision() }, (_, i) => i + 1));
        expect(store.revision()).toBe(entries.length);
        expect(await store.healthy()).toBe(true);
      } finally {
        await store.close();
      }
    }
    // The test has teeth only if the children got far enough to acknowledge work before dying.
    expect(totalAcked).toBeGreaterThan(ROUNDS * 50 - 50);
  });
});
