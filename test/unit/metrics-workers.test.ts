import { describe, expect, it } from "vitest";
import { Metrics } from "../../src/metrics";

// The session workers' counters reach /metrics through the device's stats, one series per worker slot.
describe("session-worker metrics", () => {
  it("renders ops, batches, restarts and busy per worker, read at scrape time", async () => {
    const m = new Metrics({ defaultMetrics: false });
    const stats = [
      { ops: 10, batches: 2, restarts: 0, busy: false },
      { ops: 7, batches: 1, restarts: 1, busy: true },
    ];
    m.setWorkerSource(() => stats);
    stats[0]!.ops = 12;
    const { body } = await m.render();
    expect(body).toMatch(/^hsmd_device_worker_ops\{worker="0"\} 12$/m);
    expect(body).toMatch(/^hsmd_device_worker_ops\{worker="1"\} 7$/m);
    expect(body).toMatch(/^hsmd_device_worker_batches\{worker="0"\} 2$/m);
    expect(body).toMatch(/^hsmd_device_worker_restarts\{worker="1"\} 1$/m);
    expect(body).toMatch(/^hsmd_device_worker_busy\{worker="1"\} 1$/m);
  });

  it("has no worker series without workers (device.workers 0)", async () => {
    const m = new Metrics({ defaultMetrics: false });
    m.setWorkerSource(() => []);
    expect((await m.render()).body).not.toMatch(/^hsmd_device_worker_ops\{/m);
  });
});
