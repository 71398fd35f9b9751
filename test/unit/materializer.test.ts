/**
 * The materializer's logic on a fake device (pure logic: which keys it unwraps and destroys, and
 * when): LRU order, pins, single flight, eviction while a key is wanted again, apply-time proofs,
 * re-materialization after a lost session, and a budget of 16 objects under 1,000 keys in use.
 * The real device is test/integration/materialize-budget.test.ts.
 */
import { describe, expect, it } from "vitest";
import type { KeyRecord } from "../../src/keys";
import { Materializer } from "../../src/keys/materializer";
import { KeyNotMaterializedError, type WrappedMaterial } from "../../src/pkcs11";

const tick = () => new Promise<void>((r) => setImmediate(r));

/** A device that counts objects per key, refuses to make a key twice, and can hold calls until released. */
class FakeDevice {
  readonly objects = new Map<string, number>();
  readonly unwraps = new Map<string, number>();
  readonly log: string[] = [];
  peak = 0;
  /** While set, device calls wait for it. */
  gate: Promise<void> | undefined;
  bad = new Set<string>();

  private total(): number {
    let n = 0;
    for (const v of this.objects.values()) n += v;
    return n;
  }
  async materialize(id: string, alg: { type: string }, _u: unknown, material: WrappedMaterial): Promise<void> {
    await tick();
    if (this.gate) await this.gate;
    if (this.objects.has(id)) throw new Error(`${id} made twice`);
    if (this.bad.has(id)) throw new Error(`bad record ${id}`);
    expect(material.blob.toString()).toBe(`blob:${id}`);
    this.objects.set(id, alg.type === "aes" ? 1 : 2);
    this.unwraps.set(id, (this.unwraps.get(id) ?? 0) + 1);
    this.peak = Math.max(this.peak, this.total());
    this.log.push(`materialize ${id}`);
  }
  async createPublic(id: string): Promise<never> {
    throw new Error(`createPublic ${id}: not expected`);
  }
  async destroy(id: string): Promise<void> {
    await tick();
    this.objects.delete(id);
    this.log.push(`destroy ${id}`);
  }
  /** A device operation on the key: fails as the real one does when the key is not there. */
  async op(id: string): Promise<string> {
    await tick();
    if (!this.objects.has(id)) throw new KeyNotMaterializedError(id, "secret");
    return `ok ${id}`;
  }
}

const rec = (id: string, spec: "AES_256" | "EC_P256" = "AES_256"): KeyRecord => ({
  id,
  label: id,
  spec,
  usages: ["sign"],
  state: "enabled",
  origin: "GENERATED",
  createdAt: "2026-01-01T00:00:00Z",
  publicOnly: false,
  exportable: false,
  currentVersion: 1,
  versions: [{ version: 1, createdAt: "2026-01-01T00:00:00Z", residency: "wrapped" }],
});

function setup(budget = 16) {
  const device = new FakeDevice();
  const fetched: string[] = [];
  const m = new Materializer({
    device: device as never,
    budget,
    material: async (r) => {
      fetched.push(r.id);
      return { alg: "AES_KWP", wrappingKeyId: "d", blob: Buffer.from(`blob:${r.id}`) };
    },
  });
  const use = (id: string, spec?: "AES_256" | "EC_P256") => m.use(rec(id, spec), () => device.op(id));
  return { device, m, use, fetched };
}

describe("Materializer", () => {
  it("evicts the least recently used key, never one in use", async () => {
    const { device, m, use } = setup(16);
    for (let i = 0; i < 16; i++) await use(`k${i}`);
    expect(m.stats()).toMatchObject({ resident: 16, misses: 16, hits: 0, evictions: 0 });
    await use("k0"); // k0 is now the most recent: k1 is the oldest
    let release!: () => void;
    const held = m.use(rec("k1"), () => new Promise<string>((r) => (release = () => r("held")))); // pins k1
    await tick();
    await use("k16");
    await m.idle();
    expect(device.objects.has("k1")).toBe(true); // pinned: skipped
    expect(device.objects.has("k2")).toBe(false); // the oldest not in use
    expect(device.objects.has("k0")).toBe(true);
    release();
    expect(await held).toBe("held");
    expect(m.stats()).toMatchObject({ resident: 16, misses: 17, hits: 2, evictions: 1 });
  });

  it("unwraps a key once for concurrent first uses (single flight)", async () => {
    const { device, m, use, fetched } = setup();
    const results = await Promise.all(Array.from({ length: 50 }, () => use("a")));
    expect(results.every((r) => r === "ok a")).toBe(true);
    expect(device.unwraps.get("a")).toBe(1);
    expect(fetched).toEqual(["a"]);
    expect(m.stats()).toMatchObject({ misses: 1, hits: 49 });
  });

  it("shares a failed load's error with every waiter, and tries again on the next use", async () => {
    const { device, m, use } = setup();
    device.bad.add("x");
    const all = await Promise.allSettled(Array.from({ length: 5 }, () => use("x")));
    expect(all.every((r) => r.status === "rejected" && /bad record x/.test(String(r.reason)))).toBe(true);
    expect(m.stats()).toMatchObject({ misses: 1, resident: 0 });
    device.bad.delete("x");
    expect(await use("x")).toBe("ok x");
    expect(m.stats()).toMatchObject({ misses: 2, resident: 1 });
  });

  it("a key being evicted and wanted again waits for the destroy, then is unwrapped again", async () => {
    const { device, m, use } = setup(16);
    for (let i = 0; i < 16; i++) await use(`k${i}`);
    // k0 is the oldest: k16's load evicts it; k0's use meanwhile must not race the destroy.
    const a = use("k16");
    await tick();
    const b = use("k0");
    expect(await Promise.all([a, b])).toEqual(["ok k16", "ok k0"]);
    await m.idle();
    expect(device.unwraps.get("k0")).toBe(2);
    const iDestroy = device.log.indexOf("destroy k0");
    expect(iDestroy).toBeGreaterThan(-1);
    expect(device.log.lastIndexOf("materialize k0")).toBeGreaterThan(iDestroy);
  });

  it("materializes a key again, once, when its objects went with a session", async () => {
    const { device, m, use } = setup();
    await use("s");
    device.objects.delete("s"); // C_CloseAllSessions behind hsmd's back
    expect(await use("s")).toBe("ok s");
    expect(device.unwraps.get("s")).toBe(2);
    expect(device.log.slice(-2)).toEqual(["destroy s", "materialize s"]);
    // A second loss in the same call is not retried forever.
    await expect(m.use(rec("s"), async () => Promise.reject(new KeyNotMaterializedError("s", "secret")))).rejects.toBeInstanceOf(KeyNotMaterializedError);
  });

  it("counts a key pair as two objects and keeps the device within the budget", async () => {
    const { device, m, use } = setup(16);
    for (let i = 0; i < 12; i++) await use(`p${i}`, "EC_P256");
    await m.idle();
    expect(m.stats().resident).toBe(16);
    expect(device.peak).toBeLessThanOrEqual(16);
    expect(device.objects.size).toBe(8);
  });

  it("prove keeps a new record when there is room, else destroys it at once", async () => {
    const { device, m, use } = setup(16);
    await m.prove({ ...rec("n1"), versions: [{ version: 1, createdAt: "", residency: "wrapped" }] });
    expect(device.objects.has("n1")).toBe(true);
    expect(m.stats()).toMatchObject({ proofs: 1, resident: 1, misses: 0 });
    expect(await use("n1")).toBe("ok n1");
    expect(m.stats().hits).toBe(1);
    for (let i = 0; i < 15; i++) await use(`k${i}`);
    await m.prove(rec("n2"));
    expect(device.unwraps.get("n2")).toBe(1);
    expect(device.objects.has("n2")).toBe(false);
    expect(m.stats()).toMatchObject({ proofs: 2, resident: 16, evictions: 0 });
    device.bad.add("n3");
    await expect(m.prove(rec("n3"))).rejects.toThrow(/bad record n3/);
    expect(m.stats().resident).toBe(16);
  });

  it("notes keys made here as resident and trims past the budget", async () => {
    const { device, m } = setup(16);
    for (let i = 0; i < 20; i++) {
      device.objects.set(`c${i}`, 1);
      m.noteResident(rec(`c${i}`));
    }
    await m.idle();
    expect(m.stats()).toMatchObject({ resident: 16, evictions: 4 });
    expect([0, 1, 2, 3].map((i) => device.objects.has(`c${i}`))).toEqual([false, false, false, false]);
    expect(device.objects.has("c19")).toBe(true);
  });

  it("serves 1,000 keys in concurrent use with a budget of 16: no failed call, unwrap once per miss", async () => {
    const { device, m, use } = setup(16);
    const ids = Array.from({ length: 1000 }, (_, i) => `u${i}`);
    const calls = Array.from({ length: 3000 }, (_, i) => ids[(i * 7919) % ids.length]!);
    let next = 0;
    const results: string[] = [];
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (next < calls.length) {
          const id = calls[next++]!;
          results.push(await use(id));
        }
      }),
    );
    await m.idle();
    expect(results).toHaveLength(3000);
    expect(device.peak).toBeLessThanOrEqual(16);
    const unwraps = [...device.unwraps.values()].reduce((a, b) => a + b, 0);
    const s = m.stats();
    expect(s.misses).toBe(unwraps);
    expect(s.hits + s.misses).toBe(3000);
    expect(s.resident).toBeLessThanOrEqual(16);
    expect(s.evictions).toBe(unwraps - device.objects.size);
  });

  it("a record deleted while it loads is destroyed once the load ends", async () => {
    const { device, m } = setup();
    let open!: () => void;
    device.gate = new Promise((r) => (open = r));
    const p = m.use(rec("d"), () => device.op("d"));
    await tick();
    m.forget("d");
    open();
    await expect(p).rejects.toThrow(/deleted while it was being used/);
    expect(device.objects.has("d")).toBe(false);
    expect(m.stats().resident).toBe(0);
  });
});

describe("Materializer, key versions (issue 13)", () => {
  it("materializes each version from its own material under its own device id, and forgets one version alone", async () => {
    const device = new FakeDevice();
    const asked: string[] = [];
    const m = new Materializer({
      device: device as never,
      budget: 16,
      material: async (r, v) => {
        asked.push(`${r.id}@${v}`);
        return { alg: "AES_KWP", wrappingKeyId: "d", blob: Buffer.from(`blob:${v > 1 ? `${r.id}.v${v}` : r.id}`) };
      },
    });
    const v = (n: number) => ({ version: n, createdAt: "2026-01-01T00:00:00Z", residency: "wrapped" as const });
    const r: KeyRecord = { ...rec("k"), currentVersion: 2, versions: [v(1), v(2)] };
    expect(await m.use(r, () => device.op("k.v2"))).toBe("ok k.v2");
    expect(await m.use(r, () => device.op("k"), 1)).toBe("ok k");
    expect(await m.use(r, () => device.op("k.v2"), 2)).toBe("ok k.v2");
    expect(asked).toEqual(["k@2", "k@1"]);
    expect(m.stats()).toMatchObject({ resident: 2, misses: 2, hits: 1 });
    // Version 1 trimmed: only its entry goes.
    m.forget("k");
    expect([m.holds("k"), m.holds("k.v2")]).toEqual([false, true]);
    expect(m.stats().resident).toBe(1);
    await expect(m.use(r, () => device.op("k.v3"), 3)).rejects.toThrow(/no version 3/);
  });
});
