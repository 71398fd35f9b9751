import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { reEncryptKeys, RULES } from "../../src/access";
import { Code, HsmError } from "../../src/errors";
import { CIPHERTEXT_KINDS, encodeCiphertextHeader, parseCiphertextHeader, type CiphertextHeader, type CiphertextKind } from "../../src/keys/ciphertext-header";

// The self-describing ciphertext header (docs/CIPHERTEXT.md): the documented bytes, round trips,
// every malformed case, and the access rules that read it.

const ID = "0b6f2f4e-5d1c-4f57-9a3e-3c1f0f7a1b2c";
const gcm = (over: Partial<CiphertextHeader> = {}): CiphertextHeader => ({ kind: "AES_GCM", keyId: ID, keyVersion: 3, iv: Buffer.alloc(12, 7), body: Buffer.alloc(20, 9), ...over });

function invalidMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(HsmError);
    expect((e as HsmError).code).toBe(Code.InvalidArgument);
    return (e as HsmError).message;
  }
  throw new Error("did not throw");
}

describe("ciphertext header: the documented layout", () => {
  it("is magic, version, kind, key version, key id, IV, then the ciphertext", () => {
    const b = encodeCiphertextHeader(gcm());
    expect(b.subarray(0, 4).toString("ascii")).toBe("hsm1");
    expect(b[4]).toBe(1);
    expect(b[5]).toBe(1);
    expect(b.readUInt32BE(6)).toBe(3);
    expect(b[10]).toBe(ID.length);
    expect(b.subarray(11, 11 + ID.length).toString("ascii")).toBe(ID);
    expect(b[11 + ID.length]).toBe(12);
    expect(b.subarray(12 + ID.length, 24 + ID.length).equals(Buffer.alloc(12, 7))).toBe(true);
    expect(b.subarray(24 + ID.length).equals(Buffer.alloc(20, 9))).toBe(true);
    expect(b.length).toBe(11 + ID.length + 1 + 12 + 20);
  });

  it("round-trips every kind", () => {
    const cases: Array<[CiphertextKind, number, number]> = [
      ["AES_GCM", 12, 16],
      ["AES_CBC_PAD", 16, 32],
      ["AES_CTR", 16, 0],
      ["DATA_KEY", 12, 48],
    ];
    for (const [kind, ivLen, bodyLen] of cases) {
      const h = { kind, keyId: "k_1-A", keyVersion: 0xffff_ffff, iv: Buffer.alloc(ivLen, 1), body: Buffer.alloc(bodyLen, 2) };
      expect(parseCiphertextHeader(encodeCiphertextHeader(h))).toEqual(h);
      expect(encodeCiphertextHeader(h)[5]).toBe(CIPHERTEXT_KINDS[kind]);
    }
  });

  it("encode ∘ parse is the identity on what encode writes (property)", () => {
    const kind = fc.constantFrom<CiphertextKind>("AES_GCM", "AES_CBC_PAD", "AES_CTR", "DATA_KEY");
    fc.assert(
      fc.property(
        kind,
        fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
        fc.integer({ min: 1, max: 0xffff_ffff }),
        fc.uint8Array({ maxLength: 64 }),
        fc.integer({ min: 1, max: 4 }),
        (k, keyId, keyVersion, raw, blocks) => {
          const body = k === "DATA_KEY" ? Buffer.alloc(48, 5) : k === "AES_CBC_PAD" ? Buffer.alloc(16 * blocks, 3) : Buffer.concat([Buffer.from(raw), Buffer.alloc(16)]);
          const h = { kind: k, keyId, keyVersion, iv: Buffer.alloc(k === "AES_GCM" || k === "DATA_KEY" ? 12 : 16, 4), body };
          const b = encodeCiphertextHeader(h);
          expect(parseCiphertextHeader(b)).toEqual(h);
          expect(encodeCiphertextHeader(parseCiphertextHeader(b)).equals(b)).toBe(true);
        },
      ),
    );
  });

  it("refuses to encode what it could not read back", () => {
    expect(invalidMessage(() => encodeCiphertextHeader(gcm({ keyId: "no spaces" })))).toContain("cannot go in a ciphertext header");
    expect(invalidMessage(() => encodeCiphertextHeader(gcm({ keyVersion: 0 })))).toContain("key version 0");
    expect(invalidMessage(() => encodeCiphertextHeader(gcm({ iv: Buffer.alloc(16) })))).toContain("12-byte IV");
  });
});

describe("ciphertext header: malformed input is INVALID_ARGUMENT naming what is wrong", () => {
  const good = encodeCiphertextHeader(gcm());
  const edit = (at: number, v: number) => {
    const b = Buffer.from(good);
    b[at] = v;
    return b;
  };
  const cases: Array<[string, Buffer, string]> = [
    ["empty", Buffer.alloc(0), "is empty"],
    ["another format", Buffer.from("HDK1xxxxxxxxxxxxxxxx"), 'does not start with "hsm1"'],
    ["magic only", Buffer.from("hsm1"), "truncated (4 bytes)"],
    ["unknown header version", edit(4, 2), "header version 2 is unknown"],
    ["unknown kind", edit(5, 9), "kind 9 is unknown"],
    ["version 0", Buffer.concat([good.subarray(0, 6), Buffer.alloc(4), good.subarray(10)]), "key version 0"],
    ["empty key id", edit(10, 0), "key id is empty"],
    ["key id running past the end", edit(10, 200), "truncated in the key id"],
    ["key id with a bad character", edit(11, 0x2f), "not a key id"],
    ["IV of the wrong length", edit(11 + ID.length, 16), "12-byte IV"],
    ["truncated in the IV", good.subarray(0, 11 + ID.length + 5), "truncated in the IV"],
    ["GCM without a full tag", good.subarray(0, good.length - 5), "shorter than the 16-byte tag"],
    ["CBC not a multiple of 16", encodeCiphertextHeader({ kind: "AES_CBC_PAD", keyId: ID, keyVersion: 1, iv: Buffer.alloc(16), body: Buffer.alloc(17) }), "multiple of 16"],
    ["data key of an odd length", encodeCiphertextHeader({ kind: "DATA_KEY", keyId: ID, keyVersion: 1, iv: Buffer.alloc(12), body: Buffer.alloc(40) }), "16- or 32-byte key"],
  ];
  for (const [name, bytes, says] of cases) {
    it(name, () => {
      const msg = invalidMessage(() => parseCiphertextHeader(bytes, "ciphertext_blob"));
      expect(msg).toContain(says);
      expect(msg).toContain("ciphertext_blob");
    });
  }

  it("every prefix of a good blob short of the tag is refused, never a crash", () => {
    for (let n = 0; n < good.length - 4; n++) invalidMessage(() => parseCiphertextHeader(good.subarray(0, n)));
  });

  it("random bytes never throw anything but INVALID_ARGUMENT (property)", () => {
    const withMagic = fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.concat([Buffer.from("hsm1"), Buffer.from(b)]));
    const nearGood = fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 }), fc.nat(good.length)).map(([at, v, cut]) => {
      const b = Buffer.from(good);
      b[at] = v;
      return b.subarray(0, cut);
    });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 120 }), withMagic, nearGood), (b) => {
        try {
          const h = parseCiphertextHeader(b);
          expect(h.keyVersion).toBeGreaterThan(0);
        } catch (e) {
          expect(e).toBeInstanceOf(HsmError);
          expect((e as HsmError).code).toBe(Code.InvalidArgument);
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe("access rules read the header (never throwing)", () => {
  const blob = encodeCiphertextHeader(gcm());
  const decrypt = RULES.Decrypt!.keys!;
  const dataKey = RULES.DecryptDataKey!.keys!;

  it("Decrypt: the header's key when key_id is empty; both when key_id names another", () => {
    expect(decrypt({ keyId: "", ciphertextBlob: blob })).toEqual([{ field: "ciphertext_blob", id: ID, need: "use" }]);
    expect(decrypt({ keyId: ID, ciphertextBlob: blob })).toEqual([{ field: "ciphertext_blob", id: ID, need: "use" }]);
    expect(decrypt({ keyId: "other", ciphertextBlob: blob })).toEqual([
      { field: "ciphertext_blob", id: ID, need: "use" },
      { field: "key_id", id: "other", need: "use" },
    ]);
    expect(decrypt({ keyId: "raw", ciphertextBlob: new Uint8Array() })).toEqual([{ field: "key_id", id: "raw", need: "use" }]);
  });

  it("a malformed header is an invalid ref, for any bytes (property)", () => {
    expect(decrypt({ keyId: "", ciphertextBlob: Buffer.from("hsm1\u0002") })[0]).toMatchObject({ id: "", invalid: expect.stringContaining("truncated") });
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 80 }), fc.string({ maxLength: 8 }), (b, keyId) => {
        const refs = [...decrypt({ keyId, ciphertextBlob: b }), ...reEncryptKeys({ ciphertextBlob: b, destinationKeyId: keyId })];
        for (const r of refs) expect(r.invalid === undefined || typeof r.invalid === "string").toBe(true);
      }),
    );
  });

  it("DecryptDataKey: the header's key; an HDK1 data key (no header) names key_id", () => {
    const dk = encodeCiphertextHeader({ kind: "DATA_KEY", keyId: ID, keyVersion: 2, iv: Buffer.alloc(12), body: Buffer.alloc(48) });
    expect(dataKey({ keyId: "", wrappedDataKey: dk })).toEqual([{ field: "wrapped_data_key", id: ID, need: "use" }]);
    expect(dataKey({ keyId: "kek", wrappedDataKey: Buffer.concat([Buffer.from("HDK1"), Buffer.alloc(60)]) })).toEqual([{ field: "key_id", id: "kek", need: "use" }]);
  });

  it("ReEncrypt: use of the source (header, or source_key_id for HDK1) and of the destination", () => {
    expect(reEncryptKeys({ ciphertextBlob: blob, destinationKeyId: "dest" })).toEqual([
      { field: "ciphertext_blob", id: ID, need: "use" },
      { field: "destination_key_id", id: "dest", need: "use" },
    ]);
    expect(reEncryptKeys({ ciphertextBlob: blob, destinationKeyId: "" })).toEqual([{ field: "ciphertext_blob", id: ID, need: "use" }]);
    expect(reEncryptKeys({ ciphertextBlob: Buffer.concat([Buffer.from("HDK1"), Buffer.alloc(60)]), sourceKeyId: "old", destinationKeyId: "" })).toEqual([
      { field: "source_key_id", id: "old", need: "use" },
    ]);
    expect(reEncryptKeys({ ciphertextBlob: Buffer.from("junk"), destinationKeyId: "d" })[0]).toMatchObject({ invalid: expect.stringContaining('"hsm1"') });
  });
});
