import { describe, expect, it } from "vitest";
import { freshIv } from "../../src/keys/iv-pool";

describe("freshIv", () => {
  it("hands out IVs of the asked length, each its own copy, never the same bytes twice (across block refills)", () => {
    const seen = new Set<string>();
    const ivs: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const iv = freshIv(i % 2 ? 12 : 16);
      expect(iv.length).toBe(i % 2 ? 12 : 16);
      ivs.push(iv);
      seen.add(iv.toString("hex"));
    }
    // 28,000 bytes: the 4 KiB block was refilled several times; 96/128-bit random values never repeat.
    expect(seen.size).toBe(2000);
    // Each IV owns its memory: changing one changes no other.
    const copy = Buffer.from(ivs[1]!);
    ivs[0]!.fill(0);
    expect(ivs[1]).toEqual(copy);
    expect(ivs.slice(1).some((iv) => iv.every((b) => b === 0))).toBe(false);
  });

  it("refuses a length outside 1..64", () => {
    for (const n of [0, -1, 65, 1.5, Number.NaN]) expect(() => freshIv(n)).toThrow(RangeError);
  });
});
