/**
 * CPU and event-loop probes for `npm run bench`: the user+sys CPU of a child process (all its
 * threads, libuv's pool included) from /proc/<pid>/stat, this process's own from process.cpuUsage(),
 * and the daemon's `hsmd_event_loop_utilization` scraped from its admin port, read around one cell.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Clock ticks per second (`getconf CLK_TCK`), the unit of utime/stime in /proc/<pid>/stat; 100 on Linux almost always. */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU of process `pid` so far, in µs (fields 14 and 15 of /proc/<pid>/stat, after the parenthesised name). */
export function procCpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state): utime is field 14, stime field 15.
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLK_TCK;
}

/** The value of an unlabelled series in Prometheus text, or undefined. */
function sample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : undefined;
}

/** What one cell cost: CPU per operation of this process and of the child, and the child's ELU over the cell. */
export interface CellCost {
  /** This process's user+sys CPU per operation, µs. */
  selfUs: number;
  /** The child's user+sys CPU per operation, µs (undefined without a child). */
  childUs?: number;
  /** The daemon's event-loop utilization over the cell, 0 to 1 (undefined without an admin address). */
  elu?: number;
}

/**
 * Reads CPU (and ELU) at `begin()` and again at `end(ops)`. `pid` is the child under test (the daemon
 * or the echo server); `admin` the daemon's admin address, whose /metrics scrape opens and closes the
 * ELU window (the gauge covers the time since the previous scrape).
 */
export class CellProbe {
  private self0 = process.cpuUsage();
  private child0 = 0;

  constructor(
    private readonly pid?: number,
    private readonly admin?: string,
  ) {}

  async begin(): Promise<void> {
    if (this.admin) await this.elu();
    this.self0 = process.cpuUsage();
    if (this.pid) this.child0 = procCpuMicros(this.pid);
  }

  async end(ops: number): Promise<CellCost> {
    const self = process.cpuUsage(this.self0);
    const child = this.pid ? procCpuMicros(this.pid) - this.child0 : undefined;
    const elu = this.admin ? await this.elu() : undefined;
    return { selfUs: (self.user + self.system) / ops, childUs: child === undefined ? undefined : child / ops, elu };
  }

  private async elu(): Promise<number | undefined> {
    const res = await fetch(`http://${this.admin}/metrics`);
    return sample(await res.text(), "hsmd_event_loop_utilization");
  }
}
