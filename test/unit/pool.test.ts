import { describe, expect, it } from "vitest";
import { SessionPool } from "../../src/pkcs11/pool";

const s = (n: number) => Buffer.from([n]);

describe("SessionPool", () => {
  it("lends each session to one caller at a time, first come first served", async () => {
    const p = new SessionPool();
    p.reset([s(1)]);
    const a = await p.acquire();
    let got: Buffer | undefined;
    const b = p.acquire().then((x) => (got = x));
    await Promise.resolve();
    expect(got).toBeUndefined();
    p.release(a);
    await b;
    expect(got).toEqual(a);
    expect(p.stats()).toEqual({ size: 1, busy: 1, waiting: 0 });
  });

  it("close fails the waiters and refuses new callers; drained waits for the sessions lent out", async () => {
    const p = new SessionPool();
    p.reset([s(1), s(2)]);
    const a = await p.acquire();
    const b = await p.acquire();
    const waiting = p.acquire();
    p.close("shutting down");
    await expect(waiting).rejects.toMatchObject({ code: "UNAVAILABLE" });
    await expect(p.acquire()).rejects.toMatchObject({ code: "UNAVAILABLE" });
    let drained: boolean | undefined;
    const d = p.drained(5_000).then((x) => (drained = x));
    p.release(a);
    await Promise.resolve();
    expect(drained).toBeUndefined(); // b is still out
    p.release(b);
    await d;
    expect(drained).toBe(true);
    expect(await p.drained(5_000)).toBe(true); // nothing out: at once
  });

  it("drained gives up after its timeout while a session is still out", async () => {
    const p = new SessionPool();
    p.reset([s(1)]);
    await p.acquire();
    p.close("shutting down");
    expect(await p.drained(30)).toBe(false);
  });
});
