/**
 * The `grpc` section (crypto stream bounds): defaults when absent, the values given, bounds refused
 * with their paths, and the section in describeConfig.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { describeConfig, loadConfig, validateConfig } from "../../src/config";

const env = { HSMD_PIN: "pin-unused-here" };
const minimal = () => ({ node: { dataDir: join("/tmp", "hsmd-config-grpc-unused") }, devMode: true });

describe("grpc", () => {
  it("applies the defaults when the section is absent", () => {
    const g = loadConfig({ env, overrides: minimal() }).grpc;
    expect(g).toEqual({ streamMaxInFlight: 256, streamMaxInFlightTotal: 4096, streamAuthRecheckMs: 250 });
    expect(Object.isFrozen(g)).toBe(true);
  });

  it("takes the values given and shows them in describeConfig", () => {
    const config = loadConfig({ env, overrides: { ...minimal(), grpc: { streamMaxInFlight: 8, streamMaxInFlightTotal: 64, streamAuthRecheckMs: 100 } } });
    expect(config.grpc).toEqual({ streamMaxInFlight: 8, streamMaxInFlightTotal: 64, streamAuthRecheckMs: 100 });
    expect(describeConfig(config).grpc).toEqual(config.grpc);
  });

  it("refuses values out of bounds and unknown fields, naming each", () => {
    const problems = validateConfig({ ...minimal(), grpc: { streamMaxInFlight: 0, streamMaxInFlightTotal: 2_000_000, streamAuthRecheckMs: 5, streamMaxInflight: 1 } }, { env });
    const paths = problems.map((p) => p.path).sort();
    expect(paths).toEqual(expect.arrayContaining(["/grpc/streamAuthRecheckMs", "/grpc/streamMaxInFlight", "/grpc/streamMaxInFlightTotal"]));
    expect(problems.some((p) => p.message.includes("streamMaxInflight") || p.path.includes("streamMaxInflight"))).toBe(true);
  });
});
