import { availableParallelism } from "node:os";
import { describe, expect, it } from "vitest";
import { describeConfig, loadConfig } from "../../src/config";
import { env, minimal, problemsOf, useConfigDir, writeConfig } from "../helpers/config";

// device.workers: how many session workers run the hot path off the event loop (0 = the main
// thread's pool), its default, its bounds, and the session budget it shares with poolSize.
useConfigDir();

describe("device.workers", () => {
  it("defaults to one per core, at least one", () => {
    const config = loadConfig({ file: writeConfig(minimal()), env });
    expect(config.device.workers).toBe(Math.max(1, availableParallelism()));
    expect(describeConfig(config).device.workers).toBe(config.device.workers);
  });

  it("takes 0 (the main thread's pool) and an explicit count", () => {
    expect(loadConfig({ env, overrides: { ...minimal(), device: { workers: 0 } } }).device.workers).toBe(0);
    expect(loadConfig({ env, overrides: { ...minimal(), device: { workers: 3 } } }).device.workers).toBe(3);
  });

  it("refuses a negative, fractional or too large count, naming the field", () => {
    for (const workers of [-1, 1.5, 65, "2"]) {
      const problems = problemsOf(() => loadConfig({ env, overrides: { ...minimal(), device: { workers } } }));
      expect(
        problems.map((p) => p.path),
        String(workers),
      ).toEqual(["/device/workers"]);
    }
  });

  it("counts each worker's session against the device's quirks.maxSessions (YubiHSM 2: 16, pool 4)", () => {
    const yubi = { ...minimal(), device: { profile: "yubihsm2", tokenLabel: "t", module: "/x.so" } };
    const problems = problemsOf(() => loadConfig({ env, overrides: { ...yubi, device: { ...yubi.device, workers: 13 } } }));
    expect(problems).toEqual([{ path: "/device/workers", message: expect.stringMatching(/must be <= 12 .*maxSessions/) }]);
    expect(loadConfig({ env, overrides: { ...yubi, device: { ...yubi.device, workers: 12 } } }).device.workers).toBe(12);
    // The default fits in what is left: never more than maxSessions - poolSize.
    expect(loadConfig({ env, overrides: { ...yubi, device: { ...yubi.device, poolSize: 16 } } }).device.workers).toBe(0);
  });
});
