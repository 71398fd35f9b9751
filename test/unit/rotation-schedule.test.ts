import { mkdtempSync, rmSync } from "node:fs";
import { randomBytes, randomUUID } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { KeyFactory } from "../../src/keys/key-create";
import { KeyRecords } from "../../src/keys/key-records";
import { KeyRotation } from "../../src/keys/key-rotation";
import { SINGLE_NODE } from "../../src/keys/placement";
import { decodeRecord, encodeRecord, recordKey, type KeyRecord } from "../../src/keys/record";
import { nextRotationAt, rotationFor } from "../../src/keys/rotation-policy";
import { rotationPass, rotationTimer } from "../../src/keys/rotation-schedule";
import type { KeyDevice } from "../../src/pkcs11";
import { openEmbeddedStore, type EmbeddedStore } from "../../src/store";

// The scheduled rotation pass on a fake clock: three "nodes" (each its own records, rotation and
// fake device) over one real embedded store race on every due period. The compare-and-put on the
// record's rotation.nextAt lets exactly one version land per period; losers leave no object.

const DAY = 1000;
const TIMING = { dayMs: DAY, rotationPeriodDays: { min: 1, max: 10 } };
const T0 = Date.parse("2030-01-01T00:00:00.000Z");

/** A device that makes AES keys as ids in a set, yielding between steps so that nodes interleave. */
function fakeDevice() {
  const objects = new Set<string>();
  let generated = 0;
  const later = () => new Promise<void>((r) => setImmediate(r));
  const device = {
    objects,
    get generated() {
      return generated;
    },
    async generate(id: string) {
      await later();
      generated++;
      objects.add(id);
      return {};
    },
    async secretLength() {
      return 32;
    },
    async sealForRecord() {
      await later();
      return { alg: "AES_KWP" as const, wrappingKeyId: "dk", blob: randomBytes(40) };
    },
    async destroy(id: string) {
      objects.delete(id);
    },
    async rename(from: string, to: string) {
      objects.delete(from);
      objects.add(to);
    },
    cached: () => false,
  };
  return device;
}

let dir: string;
let store: EmbeddedStore;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "hsmd-rot-"));
  store = await openEmbeddedStore(dir);
});
afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

async function node(now: { t: number }) {
  const device = fakeDevice();
  const dev = device as unknown as KeyDevice;
  const records = new KeyRecords({ device: dev, store, placement: SINGLE_NODE });
  await records.load();
  const factory = new KeyFactory({ device: dev, store, records, placement: SINGLE_NODE, domainKeyId: "dk" });
  const rotation = new KeyRotation({ device: dev, store, records, factory, placement: SINGLE_NODE, limits: { maxRequestIdLength: 128 }, timing: TIMING, now: () => now.t });
  return { device, records, rotation };
}

async function seed(periodDays: number, extra: Partial<KeyRecord> = {}): Promise<string> {
  const id = randomUUID();
  const createdAt = new Date(T0).toISOString();
  const r: KeyRecord = {
    id,
    label: "scheduled",
    spec: "AES_256",
    usages: ["encrypt", "decrypt"],
    state: "ENABLED",
    origin: "GENERATED",
    createdAt,
    publicOnly: false,
    exportable: false,
    currentVersion: 1,
    versions: [{ version: 1, createdAt, residency: "wrapped", material: { alg: "AES_KWP", wrappingKeyId: "dk", blob: randomBytes(40) } }],
    rotation: rotationFor(TIMING, periodDays, T0),
    ...extra,
  };
  await store.txn([], [{ type: "put", key: recordKey(id), value: encodeRecord(r) }]);
  return id;
}

const stored = async (id: string) => decodeRecord((await store.get(recordKey(id)))!.value);

describe("scheduled rotation, three nodes racing on a fake clock", () => {
  it("makes exactly one version per period, advances nextAt by a period, and leaves no transient object", async () => {
    const id = await seed(2);
    const clock = { t: T0 };
    const nodes = await Promise.all([node(clock), node(clock), node(clock)]);
    // Not due yet: nothing happens.
    clock.t = T0 + 2 * DAY - 1;
    expect((await Promise.all(nodes.map((n) => rotationPass(n, clock.t)))).flat()).toEqual([]);
    for (let period = 1; period <= 5; period++) {
      clock.t = T0 + period * 2 * DAY;
      const made = (await Promise.all(nodes.map((n) => rotationPass(n, clock.t)))).flat();
      expect(made).toEqual([{ keyId: id, version: period + 1 }]);
      // A second pass in the same period (every node's copy may still say "due"): nothing more.
      expect((await Promise.all(nodes.map((n) => rotationPass(n, clock.t + 1)))).flat()).toEqual([]);
      const r = await stored(id);
      expect(r.currentVersion).toBe(period + 1);
      expect(r.rotation).toEqual({ periodDays: 2, nextAt: new Date(T0 + (period + 1) * 2 * DAY).toISOString() });
    }
    const r = await stored(id);
    expect(r.versions.map((v) => v.version)).toEqual([1, 2, 3, 4, 5, 6]);
    // Each version its own material.
    expect(new Set(r.versions.map((v) => v.material!.blob.toString("hex"))).size).toBe(6);
    // Every node generated at most one key per period; none kept a transient object.
    for (const n of nodes) expect(n.device.objects.size).toBe(0);
    const generated = nodes.reduce((a, n) => a + n.device.generated, 0);
    // The nodes did race: losers generated too (and destroyed what they made).
    expect(generated).toBeGreaterThan(5);
    expect(generated).toBeLessThanOrEqual(15);
  });

  it("a node that was down for periods rotates once, with the next rotation a period from now", async () => {
    const id = await seed(1);
    const clock = { t: T0 + 10.5 * DAY };
    const [a] = await Promise.all([node(clock)]);
    expect(await rotationPass(a!, clock.t)).toEqual([{ keyId: id, version: 2 }]);
    expect((await stored(id)).rotation!.nextAt).toBe(new Date(clock.t + DAY).toISOString());
    expect(await rotationPass(a!, clock.t)).toEqual([]);
  });

  it("skips keys that are not ENABLED or not GENERATED, and keys without a schedule", async () => {
    const disabled = await seed(1, { state: "DISABLED" });
    const imported = await seed(1, { origin: "IMPORTED" });
    const none = await seed(1, { rotation: undefined });
    const clock = { t: T0 + 5 * DAY };
    const n = await node(clock);
    expect(await rotationPass(n, clock.t)).toEqual([]);
    for (const id of [disabled, imported, none]) expect((await stored(id)).currentVersion).toBe(1);
    expect(n.device.generated).toBe(0);
  });

  it("the DueTimer runs the pass on its clock; the audit hook hears of each rotation this node made", async () => {
    const id = await seed(1);
    const clock = { t: T0 + DAY };
    const n = await node(clock);
    const heard: Array<[string, number]> = [];
    const timer = rotationTimer({ ...n, intervalMs: 60_000, now: () => clock.t, onRotated: (k, v) => void heard.push([k, v]) });
    await timer.runOnce();
    await timer.stop();
    expect(heard).toEqual([[id, 2]]);
  });

  it("rotationFor and nextRotationAt: bounds and rhythm", () => {
    expect(rotationFor(TIMING, 0, T0)).toBeUndefined();
    expect(() => rotationFor(TIMING, 11, T0)).toThrow(/1 to 10 days/);
    expect(() => rotationFor(TIMING, 1.5, T0)).toThrow(/rotation_period_days/);
    expect(nextRotationAt(TIMING, { periodDays: 3, nextAt: new Date(T0).toISOString() }, T0 + 1)).toBe(new Date(T0 + 3 * DAY).toISOString());
  });
});
