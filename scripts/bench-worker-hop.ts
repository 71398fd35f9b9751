/**
 * What one hop to a worker thread costs on this machine: the main thread posts a message to an idle
 * worker_thread, which answers at once; main-thread CPU (process.cpuUsage, so the worker's share is
 * in it too) and wall time per round trip, for an empty message and for a batch-shaped one (eight
 * items named by offset, an input ArrayBuffer transferred each way). The session workers pay one
 * such hop per batch: it is the floor under the device layer's cost per batch.
 *
 *   npm run build && node dist/scripts/bench-worker-hop.js [round trips, default 20000]
 */
import { Worker, isMainThread, parentPort } from "node:worker_threads";

type Shape = "empty" | "batch of 8";

function roundTrips(shape: Shape, n: number): Promise<{ cpuUs: number; wallUs: number }> {
  const w = new Worker(__filename);
  const items = Array.from({ length: 8 }, (_, i) => ({ kind: "sign", mech: { mechanism: 0x251 }, key: { at: i * 8, len: 8 }, inOff: 64 + i * 32, inLen: 32, outLen: 32 }));
  return new Promise((resolve) => {
    let done = 0;
    const send = () => {
      if (shape === "empty") return w.postMessage({ t: "batch", id: done });
      const input = new ArrayBuffer(512);
      w.postMessage({ t: "batch", id: done, items, input, outSize: 256 }, [input]);
    };
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    w.on("message", () => {
      if (++done < n) return send();
      const c = process.cpuUsage(cpu0);
      const wall = Number(process.hrtime.bigint() - t0) / 1e3;
      void w.terminate();
      resolve({ cpuUs: (c.user + c.system) / n, wallUs: wall / n });
    });
    send();
  });
}

if (isMainThread) {
  const n = Number(process.argv[2] ?? 20000);
  (async () => {
    console.log("| message | round trips | process CPU µs per round trip | wall µs per round trip |");
    console.log("| --- | --- | --- | --- |");
    for (const shape of ["empty", "batch of 8"] as Shape[]) {
      await roundTrips(shape, 1000); // warm-up
      const r = await roundTrips(shape, n);
      console.log(`| ${shape} | ${n} | ${r.cpuUs.toFixed(1)} | ${r.wallUs.toFixed(1)} |`);
    }
  })();
} else {
  parentPort!.on("message", (m: { id: number; items?: unknown[] }) => {
    if (!m.items) return parentPort!.postMessage({ t: "done", id: m.id });
    const out = new ArrayBuffer(256);
    parentPort!.postMessage({ t: "done", id: m.id, out, results: m.items.map(() => ({ len: 32, secs: 0 })) }, [out]);
  });
}
