/**
 * Waits for a daemon the benchmark or soak script spawned (`hsmd init|start` with stdout piped) to
 * print its ready banner, and answers the gRPC address it names; rejects if the daemon exits first,
 * with `detail()` (for example the tail of its stderr) appended.
 */
import type { ChildProcess } from "node:child_process";

export function grpcAddressOf(child: ChildProcess, detail: () => string = () => ""): Promise<string> {
  return new Promise<string>((res, rej) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /gRPC\s+(\S+)/.exec(out);
      if (m) res(m[1]!);
    });
    child.on("exit", (code) => {
      const more = detail();
      rej(new Error(`hsmd exited with ${code}${more ? `: ${more}` : ""}`));
    });
  });
}
