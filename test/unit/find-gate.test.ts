import { describe, expect, it } from "vitest";
import { FindGate } from "../../src/pkcs11/find-gate";

const tick = () => new Promise<void>((r) => setImmediate(r));

describe("FindGate", () => {
  it("a search with nothing in flight takes the gate at once", async () => {
    const g = new FindGate();
    const release = await g.acquire();
    expect(g.held).toBe(true);
    release();
    expect(g.held).toBe(false);
  });

  it("a search waits for the creations in flight to settle", async () => {
    const g = new FindGate();
    g.enter();
    g.enter();
    let got = false;
    const p = g.acquire().then((r) => {
      got = true;
      return r;
    });
    await tick();
    expect(got).toBe(false);
    expect(g.held).toBe(true); // new creations are held back while it waits
    g.leave();
    await tick();
    expect(got).toBe(false);
    g.leave();
    const release = await p;
    expect(got).toBe(true);
    expect(g.busy).toBe(false);
    release();
  });

  it("creations wait while a search holds the gate, and start when it is released", async () => {
    const g = new FindGate();
    const release = await g.acquire();
    let opened = false;
    const p = g.open().then(() => (opened = true));
    await tick();
    expect(opened).toBe(false);
    release();
    await p;
    expect(opened).toBe(true);
  });

  it("two searches never hold the gate at once", async () => {
    const g = new FindGate();
    const order: string[] = [];
    const a = g.acquire().then((r) => {
      order.push("a");
      return r;
    });
    const b = g.acquire().then((r) => {
      order.push("b");
      return r;
    });
    const ra = await a;
    await tick();
    expect(order).toEqual(["a"]);
    ra();
    const rb = await b;
    expect(order).toEqual(["a", "b"]);
    expect(g.held).toBe(true);
    rb();
    expect(g.held).toBe(false);
  });

  it("release is idempotent and leave without enter is a bug", async () => {
    const g = new FindGate();
    const r = await g.acquire();
    r();
    const r2 = await g.acquire();
    r(); // a second call of the first release must not free the second holder
    expect(g.held).toBe(true);
    r2();
    expect(() => g.leave()).toThrow(/without enter/);
  });
});
