import * as pk from "pkcs11js";
import { describe, expect, it } from "vitest";
import { inventory } from "../../src/pkcs11/objects";
import type { DeviceCore } from "../../src/pkcs11/run";

/** One object as the fake device answers C_GetAttributeValue for it (or the error it throws). */
type FakeObject = { label: string; id: string; cls: number } | { error: string };

/**
 * A device core over a fake pkcs11js: inventory() only searches every object and reads their
 * attributes, so this is the whole surface it touches. A real SoftHSM2 token cannot be made to
 * return an unreadable object deterministically (a truncated object file is sometimes dropped by
 * the device's own index), so the skip path is checked here.
 */
function coreOver(objects: FakeObject[], log: string[]): DeviceCore {
  const handles = objects.map((_, i) => Buffer.from([i]));
  let served = false;
  const p11 = {
    C_FindObjectsInit: () => {
      served = false;
    },
    C_FindObjects: () => {
      if (served) return [];
      served = true;
      return handles;
    },
    C_FindObjectsFinal: () => undefined,
    C_GetAttributeValue: (_s: Buffer, h: Buffer, query: pk.Template) => {
      const o = objects[h[0]!]!;
      if ("error" in o) throw Object.assign(new Error(o.error), { name: "Pkcs11Error" });
      if (query[0]!.type === pk.CKA_EXTRACTABLE)
        return [
          { type: pk.CKA_EXTRACTABLE, value: Buffer.from([0]) },
          { type: pk.CKA_WRAP_WITH_TRUSTED, value: Buffer.from([1]) },
        ];
      const cls = Buffer.alloc(8);
      cls.writeUInt32LE(o.cls, 0);
      return [
        { type: pk.CKA_LABEL, value: Buffer.from(o.label) },
        { type: pk.CKA_ID, value: Buffer.from(o.id) },
        { type: pk.CKA_CLASS, value: cls },
      ];
    },
  };
  const core = {
    p11,
    syncPhase: false,
    findGate: { busy: false },
    opts: { log: (m: string) => log.push(m) },
    run: async <T>(_op: string, _mech: unknown, f: (s: Buffer) => T) => f(Buffer.from([0])),
  };
  return core as unknown as DeviceCore;
}

describe("inventory over an object whose attributes cannot be read", () => {
  it("skips that object, logs why, and lists every other one", async () => {
    const log: string[] = [];
    const c = coreOver(
      [
        { label: "hsmd:k1", id: "k1", cls: pk.CKO_SECRET_KEY },
        { error: "CKR_ATTRIBUTE_VALUE_INVALID" },
        { label: "hsmd:k2", id: "k2", cls: pk.CKO_PRIVATE_KEY },
        { label: "hsmd:k2", id: "k2", cls: pk.CKO_PUBLIC_KEY },
        { label: "someone-else", id: "x", cls: pk.CKO_SECRET_KEY },
      ],
      log,
    );
    const inv = await inventory(c);
    expect([...inv.keys.keys()].sort()).toEqual(["k1", "k2"]);
    expect([...inv.keys.get("k2")!].sort()).toEqual(["private", "public"]);
    expect(inv.weak.size).toBe(0);
    expect(log).toEqual(["pkcs11: skipping an object whose attributes cannot be read (CKR_ATTRIBUTE_VALUE_INVALID)"]);
  });

  it("still lists everything when no object is unreadable (nothing logged)", async () => {
    const log: string[] = [];
    const inv = await inventory(coreOver([{ label: "hsmd:k1", id: "k1", cls: pk.CKO_SECRET_KEY }], log));
    expect([...inv.keys.keys()]).toEqual(["k1"]);
    expect(log).toEqual([]);
  });
});
