import { describe, expect, it } from "vitest";
import { register as globalRegistry } from "prom-client";
import { LATENCY_BUCKETS, Metrics, timer } from "../../src/metrics";

/** The value of one sample line (`name{labels} value`) in Prometheus text, or undefined. */
function sample(text: string, series: string): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    if (line.slice(0, i) === series) return Number(line.slice(i + 1));
  }
  return undefined;
}

describe("Metrics", () => {
  it("uses its own registry, never prom-client's global one", async () => {
    const before = await globalRegistry.metrics();
    const m = new Metrics();
    m.observeRpc("/hsm.v1.KeyService/CreateKey", "OK", 0.001);
    expect(m.registry).not.toBe(globalRegistry);
    expect(await globalRegistry.metrics()).toBe(before);
    expect(globalRegistry.getSingleMetric("hsmd_grpc_requests_total")).toBeUndefined();
  });

  it("collects the default process metrics with the hsmd_ prefix", async () => {
    const { body } = await new Metrics().render();
    expect(body).toMatch(/^hsmd_process_cpu_user_seconds_total /m);
    expect(body).toMatch(/^# TYPE hsmd_nodejs_heap_size_total_bytes gauge/m);
  });

  it("can leave the default metrics out", async () => {
    const { body } = await new Metrics({ defaultMetrics: false }).render();
    expect(body).not.toContain("hsmd_process_");
    expect(body).toContain("# TYPE hsmd_grpc_requests_total counter");
  });

  it("two instances do not collide", async () => {
    const a = new Metrics();
    const b = new Metrics();
    a.observeRpc("/m", "OK", 0.01);
    expect(sample((await a.render()).body, 'hsmd_grpc_requests_total{method="/m",code="OK"}')).toBe(1);
    expect(sample((await b.render()).body, 'hsmd_grpc_requests_total{method="/m",code="OK"}')).toBeUndefined();
  });

  it("counts RPCs by method and code and times them by method", async () => {
    const m = new Metrics({ defaultMetrics: false });
    m.observeRpc("/hsm.v1.CryptoService/Sign", "OK", 0.0002);
    m.observeRpc("/hsm.v1.CryptoService/Sign", "OK", 0.003);
    m.observeRpc("/hsm.v1.CryptoService/Sign", "NOT_FOUND", 0.00004);
    m.observeRpc("/hsm.v1.KeyService/CreateKey", "OK", 2);
    const { contentType, body } = await m.render();
    expect(contentType).toMatch(/^text\/plain/);

    expect(sample(body, 'hsmd_grpc_requests_total{method="/hsm.v1.CryptoService/Sign",code="OK"}')).toBe(2);
    expect(sample(body, 'hsmd_grpc_requests_total{method="/hsm.v1.CryptoService/Sign",code="NOT_FOUND"}')).toBe(1);
    expect(sample(body, 'hsmd_grpc_requests_total{method="/hsm.v1.KeyService/CreateKey",code="OK"}')).toBe(1);

    const sign = 'method="/hsm.v1.CryptoService/Sign"';
    expect(sample(body, `hsmd_grpc_request_duration_seconds_count{${sign}}`)).toBe(3);
    expect(sample(body, `hsmd_grpc_request_duration_seconds_sum{${sign}}`)).toBeCloseTo(0.00324, 8);
    expect(sample(body, `hsmd_grpc_request_duration_seconds_bucket{le="0.00005",${sign}}`)).toBe(1);
    expect(sample(body, `hsmd_grpc_request_duration_seconds_bucket{le="0.00025",${sign}}`)).toBe(2);
    expect(sample(body, `hsmd_grpc_request_duration_seconds_bucket{le="0.005",${sign}}`)).toBe(3);
    expect(sample(body, `hsmd_grpc_request_duration_seconds_bucket{le="+Inf",${sign}}`)).toBe(3);
    expect(sample(body, 'hsmd_grpc_request_duration_seconds_bucket{le="1",method="/hsm.v1.KeyService/CreateKey"}')).toBe(0);
    expect(sample(body, 'hsmd_grpc_request_duration_seconds_bucket{le="2.5",method="/hsm.v1.KeyService/CreateKey"}')).toBe(1);
    // The histogram carries no code label: one series per method only.
    expect(body).not.toMatch(/hsmd_grpc_request_duration_seconds_count\{[^}]*code=/);
  });

  it("has latency buckets from 50µs to 5s, increasing", () => {
    expect(LATENCY_BUCKETS[0]).toBe(0.00005);
    expect(LATENCY_BUCKETS[LATENCY_BUCKETS.length - 1]).toBe(5);
    for (let i = 1; i < LATENCY_BUCKETS.length; i++) expect(LATENCY_BUCKETS[i]).toBeGreaterThan(LATENCY_BUCKETS[i - 1]!);
  });

  it("counts device operations by mechanism and result and times them by mechanism", async () => {
    const m = new Metrics({ defaultMetrics: false });
    m.observeDevice("CKM_ECDSA", 0.001, true);
    m.observeDevice("CKM_ECDSA", 0.002, true);
    m.observeDevice("CKM_ECDSA", 0.0005, false);
    m.observeDevice("CKM_AES_GCM", 0.0001, true);
    const { body } = await m.render();
    expect(sample(body, 'hsmd_device_operations_total{mechanism="CKM_ECDSA",result="ok"}')).toBe(2);
    expect(sample(body, 'hsmd_device_operations_total{mechanism="CKM_ECDSA",result="error"}')).toBe(1);
    expect(sample(body, 'hsmd_device_operations_total{mechanism="CKM_AES_GCM",result="ok"}')).toBe(1);
    expect(sample(body, 'hsmd_device_operations_total{mechanism="CKM_AES_GCM",result="error"}')).toBeUndefined();
    expect(sample(body, 'hsmd_device_operation_duration_seconds_count{mechanism="CKM_ECDSA"}')).toBe(3);
    expect(sample(body, 'hsmd_device_operation_duration_seconds_sum{mechanism="CKM_ECDSA"}')).toBeCloseTo(0.0035, 8);
    expect(sample(body, 'hsmd_device_operation_duration_seconds_count{mechanism="CKM_AES_GCM"}')).toBe(1);
  });

  it("escapes label values", async () => {
    const m = new Metrics({ defaultMetrics: false });
    m.observeRpc('we"ird\\name', "OK", 0.001);
    const { body } = await m.render();
    expect(body).toContain('hsmd_grpc_requests_total{method="we\\"ird\\\\name",code="OK"} 1');
  });

  it("reads the pool source at scrape time, not when it is set", async () => {
    const m = new Metrics({ defaultMetrics: false });
    let stats = { size: 8, busy: 3, waiting: 0 };
    let calls = 0;
    m.setPoolSource(() => {
      calls++;
      return stats;
    });
    expect(calls).toBe(0);

    let { body } = await m.render();
    expect(calls).toBeGreaterThan(0);
    expect(sample(body, 'hsmd_pool_sessions{state="busy"}')).toBe(3);
    expect(sample(body, 'hsmd_pool_sessions{state="idle"}')).toBe(5);
    expect(sample(body, "hsmd_pool_waiting")).toBe(0);

    stats = { size: 8, busy: 8, waiting: 12 };
    ({ body } = await m.render());
    expect(sample(body, 'hsmd_pool_sessions{state="busy"}')).toBe(8);
    expect(sample(body, 'hsmd_pool_sessions{state="idle"}')).toBe(0);
    expect(sample(body, "hsmd_pool_waiting")).toBe(12);
  });

  it("reads the key count at scrape time", async () => {
    const m = new Metrics({ defaultMetrics: false });
    let n = 0;
    m.setKeyCountSource(() => n);
    expect(sample((await m.render()).body, "hsmd_keys")).toBe(0);
    n = 1234;
    expect(sample((await m.render()).body, "hsmd_keys")).toBe(1234);
  });

  it("has no pool sessions series before a source is set, and keeps the last values when a source throws", async () => {
    const m = new Metrics({ defaultMetrics: false });
    let { body } = await m.render();
    expect(sample(body, 'hsmd_pool_sessions{state="busy"}')).toBeUndefined();
    expect(sample(body, "hsmd_pool_waiting")).toBe(0);
    expect(body).toContain("# TYPE hsmd_pool_sessions gauge");

    let fail = false;
    m.setPoolSource(() => {
      if (fail) throw new Error("device closed");
      return { size: 2, busy: 1, waiting: 4 };
    });
    m.setKeyCountSource(() => {
      if (fail) throw new Error("store closed");
      return 7;
    });
    ({ body } = await m.render());
    expect(sample(body, 'hsmd_pool_sessions{state="busy"}')).toBe(1);
    expect(sample(body, "hsmd_keys")).toBe(7);

    fail = true;
    m.observeRpc("/m", "OK", 0.001);
    ({ body } = await m.render());
    // The last good values stay (no false 0), and the rest of the scrape still works.
    expect(sample(body, 'hsmd_pool_sessions{state="busy"}')).toBe(1);
    expect(sample(body, "hsmd_pool_waiting")).toBe(4);
    expect(sample(body, "hsmd_keys")).toBe(7);
    expect(sample(body, 'hsmd_grpc_requests_total{method="/m",code="OK"}')).toBe(1);
  });
});

describe("hsmd_event_loop_utilization", () => {
  it("moves with the loop: higher over a window where the loop was blocked than over one where it waited", async () => {
    const m = new Metrics({ defaultMetrics: false });
    await m.render(); // starts a fresh window
    await new Promise((r) => setTimeout(r, 30)); // the loop waits in epoll: idle
    const idle = sample((await m.render()).body, "hsmd_event_loop_utilization");
    // Block the main thread (the way a synchronous C_SignInit does) without yielding to the loop.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30);
    const busy = sample((await m.render()).body, "hsmd_event_loop_utilization");
    expect(busy).toBeGreaterThan(0);
    expect(busy).toBeLessThanOrEqual(1);
    expect(idle).toBeGreaterThanOrEqual(0);
    expect(busy).toBeGreaterThan(idle!);
  });
});

describe("timer", () => {
  it("returns elapsed seconds from a monotonic clock", async () => {
    const elapsed = timer();
    const first = elapsed();
    expect(first).toBeGreaterThanOrEqual(0);
    await new Promise((r) => setTimeout(r, 20));
    const second = elapsed();
    expect(second).toBeGreaterThan(0.015);
    expect(second).toBeLessThan(5);
    expect(second).toBeGreaterThan(first);
  });
});
