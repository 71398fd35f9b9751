import { afterAll, describe, expect, it } from "vitest";
import { Device } from "../../src/pkcs11";
import { createTempToken, SOFTHSM_MODULE } from "../helpers/softhsm";

// Closing the device while calls run on libuv's thread pool: C_CloseAllSessions / C_Finalize under a
// running C_*Async call crashed a daemon stopped during its applier's unwraps (SIGSEGV). close() now
// refuses new calls, waits for the running ones to settle, then closes. If this regresses, the test
// worker itself dies rather than this test failing politely.

const token = createTempToken();
afterAll(() => token.cleanup());

describe("device close under load", () => {
  it("waits for the calls in flight: each one settles (done or refused as shutting down) and nothing crashes", async () => {
    const dev = await Device.open({ module: SOFTHSM_MODULE, tokenLabel: token.label, pin: token.pin, poolSize: 8, tokenObjects: false });
    await dev.ensureDomainKey("domain-close", true);
    await dev.generate("src", { type: "aes", bits: 256 }, ["encrypt", "decrypt"]);
    const material = (await dev.sealForRecord("src", { type: "aes", bits: 256 }, ["encrypt", "decrypt"], "domain-close"))!;
    await dev.generate("signer", { type: "rsa", bits: 2048 }, ["sign", "verify"]);

    type Outcome = { ok: true } | { ok: false; error: { code?: string; message?: string } };
    const outcome = (p: Promise<unknown>): Promise<Outcome> =>
      p.then(
        () => ({ ok: true as const }),
        (error: { code?: string; message?: string }) => ({ ok: false as const, error }),
      );
    const calls: Promise<Outcome>[] = [];
    for (let i = 0; i < 200; i++) {
      calls.push(outcome(dev.materialize(`m-${i}`, { type: "aes", bits: 256 }, ["encrypt", "decrypt"], material)));
      calls.push(outcome(dev.sign("signer", { name: "RSA_PKCS1", hash: "sha256", input: "message" }, Buffer.from(`m${i}`))));
    }
    // Let the first calls reach the thread pool, then close under them.
    await new Promise((r) => setImmediate(r));
    expect(dev.poolStats().busy).toBeGreaterThan(0);
    await dev.close();
    expect(dev.poolStats().busy).toBe(0);

    const settled = await Promise.all(calls);
    const done = settled.filter((o) => o.ok).length;
    const refused = settled.flatMap((o) => (o.ok ? [] : [o.error]));
    expect(done).toBeGreaterThan(0);
    for (const r of refused) expect(`${r.code}: ${r.message}`).toMatch(/^UNAVAILABLE: .*(shutting down|closed)/);
    console.log(`[device-close] ${done} calls completed, ${refused.length} refused as shutting down`);
  });
});
