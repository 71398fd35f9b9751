import { afterAll, beforeAll, describe, it } from "vitest";
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from "node:crypto";
import { EncryptionAlgorithm, HsmClient, KeySpec, KeyUsage, SigningAlgorithm, WrapAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";
import { CONCURRENCY, KeyLoader, Tally, assertTally, hex, inChunks, loadVectors, once, plan, verdictOf, type Verdict, type WycheproofTest } from "../helpers/wycheproof";

// Wycheproof key-wrap vectors (RFC 3394 KW, RFC 5649 KWP) through the service: the KEK goes in through
// BYOK (see KeyLoader), every vector's blob through UnwrapKey over real gRPC.
//
// valid → a key is created, and it holds exactly the vector's bytes: wrapped back out under the same
// KEK (KW and KWP are deterministic) it gives the vector's ciphertext again, and it works as the key
// it should be (AES: decrypts what Node encrypted with the vector's bytes; HMAC keys of 32 bytes or
// more: MACs as Node does with them).
// invalid → INVALID_ARGUMENT.
//
// The spec the blob is unwrapped as: 16 bytes → AES-128, 32 → AES-256, any other length → a generic
// secret (KEY_SPEC_HMAC_SHA256, CKK_GENERIC_SECRET, which the device takes at any length). Invalid
// vectors are unwrapped as that generic secret too, so that a refusal can only come from the blob
// (integrity or length checks), never from a key-length rule of the key type.

let td: TestDaemon;
let c: HsmClient;
let loader: KeyLoader;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td);
  loader = await new KeyLoader(c).init();
  console.log(`[wycheproof] key wrap: ${loader.describe()}`);
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

interface WrapTest extends WycheproofTest {
  key: string;
  msg: string;
  ct: string;
}
interface WrapGroup {
  keySize: number;
  tests: WrapTest[];
}

function specFor(len: number): KeySpec {
  return len === 16 ? KeySpec.KEY_SPEC_AES_128 : len === 32 ? KeySpec.KEY_SPEC_AES_256 : KeySpec.KEY_SPEC_HMAC_SHA256;
}

/**
 * hsmd keeps only secret keys it can store faithfully: a multiple of 8 bytes (SoftHSM2 2.6's KWP wrap
 * zero-pads other lengths) and, for HMAC-SHA256, at least 32 bytes. It refuses others after the
 * unwrap's integrity check passed, with this message.
 */
const LENGTH_POLICY = /secret key material must be a multiple of 8 bytes|key must be at least 32 bytes/;
const storable = (len: number) => len === 16 || (len % 8 === 0 && len >= 32);
let refusedByPolicy: number[] = [];

/**
 * Keys whose wrap-back came out zero-padded: SoftHSM2 2.6.1's CKM_AES_KEY_WRAP_PAD pads a key whose
 * length is not a multiple of 8 with zeros before wrapping, so the blob's length indicator says the
 * padded length (not RFC 5649). The unwrap under test is right; counted and printed, not hidden.
 */
let zeroPaddedWrapBacks: number[] = [];

/** Checks that the unwrapped key holds `material`; returns what is wrong, or undefined. */
async function checkKey(t: WrapTest, keyId: string, spec: KeySpec, material: Buffer, kekId: string, algorithm: WrapAlgorithm, ct: Buffer): Promise<string | undefined> {
  const back = Buffer.from((await c.wrapKey({ wrappingKeyId: kekId, keyId, algorithm })).wrappedKey);
  if (!back.equals(ct)) {
    const kek = hex(t.key);
    let unwrapped: Buffer | undefined;
    if (algorithm === WrapAlgorithm.WRAP_ALGORITHM_AES_KWP && material.length % 8 !== 0) {
      try {
        const d = createDecipheriv(`id-aes${kek.length * 8}-wrap-pad`, kek, Buffer.from("A65959A6", "hex"));
        unwrapped = Buffer.concat([d.update(back), d.final()]);
      } catch {
        unwrapped = undefined;
      }
    }
    const padded = Buffer.concat([material, Buffer.alloc((8 - (material.length % 8)) % 8)]);
    if (!unwrapped?.equals(padded)) return `wrapped back out it is ${back.toString("hex")}, not the vector's ct`;
    zeroPaddedWrapBacks.push(t.tcId);
  }
  if (spec === KeySpec.KEY_SPEC_AES_128 || spec === KeySpec.KEY_SPEC_AES_256) {
    const iv = randomBytes(12);
    const pt = Buffer.from("wycheproof key-wrap check");
    const e = createCipheriv(spec === KeySpec.KEY_SPEC_AES_128 ? "aes-128-gcm" : "aes-256-gcm", material, iv);
    const nodeCt = Buffer.concat([e.update(pt), e.final(), e.getAuthTag()]);
    const d = await c.decrypt({ keyId, algorithm: EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM, ciphertext: nodeCt, iv });
    if (!Buffer.from(d.plaintext).equals(pt)) return "as an AES key it does not decrypt what Node encrypted with the vector's key bytes";
  } else if (material.length >= 32) {
    const m = Buffer.from("wycheproof key-wrap check");
    const mac = Buffer.from((await c.sign({ keyId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, message: m })).signature);
    if (!mac.equals(createHmac("sha256", material).update(m).digest())) return "its HMAC differs from Node's HMAC with the vector's key bytes";
  }
  return undefined;
}

describe("Wycheproof AES key wrap (unwrap) through the service", () => {
  const files = [
    ["aes_wrap_test.json", WrapAlgorithm.WRAP_ALGORITHM_AES_KW],
    ["aes_kwp_test.json", WrapAlgorithm.WRAP_ALGORITHM_AES_KWP],
  ] as const;
  for (const [file, algorithm] of files) {
    const p = plan(loadVectors<WrapGroup, WrapTest>(file), (g) => (g.keySize === 128 || g.keySize === 256 ? undefined : `AES-${g.keySize} KEK (SoftHSM2 and hsmd take AES-128 and AES-256 only)`));
    it(p.title, async () => {
      const tally = new Tally(file, ["INVALID_ARGUMENT"]);
      zeroPaddedWrapBacks = [];
      refusedByPolicy = [];
      // The KEK may also wrap: the check wraps each unwrapped key back out and compares with the vector.
      const importKek = once((keyHex) =>
        loader.load(keyHex.length === 32 ? KeySpec.KEY_SPEC_AES_128 : KeySpec.KEY_SPEC_AES_256, hex(keyHex), [KeyUsage.KEY_USAGE_UNWRAP, KeyUsage.KEY_USAGE_WRAP], { label: "wycheproof-kek" }),
      );
      await inChunks(p.run, CONCURRENCY, async ({ test }) => {
        const msg = hex(test.msg);
        const ct = hex(test.ct);
        const spec = test.result === "valid" ? specFor(msg.length) : KeySpec.KEY_SPEC_HMAC_SHA256;
        let kekId = "";
        const imp = await verdictOf(async () => {
          kekId = await importKek(test.key);
          return { accepted: true };
        });
        const v: Verdict = !imp.accepted
          ? { accepted: false, how: `import:${imp.how}`, message: imp.message }
          : await verdictOf(async () => {
              const k = await c.unwrapKey({ unwrappingKeyId: kekId, algorithm, wrappedKey: ct, spec, label: `wycheproof-${test.tcId}`, exportable: true });
              if (test.result !== "valid") return { accepted: true };
              const wrong = await checkKey(test, k.id, spec, msg, kekId, algorithm, ct).catch((e: unknown) => `check failed: ${String((e as Error)?.message ?? e)}`);
              return wrong ? { accepted: true, wrong } : { accepted: true };
            });
        let verdict = v;
        if (!v.accepted && LENGTH_POLICY.test(v.message ?? "")) {
          // Integrity passed, the length policy refused: right for a valid vector of an unstorable
          // length; for an invalid vector it means the blob was wrongly accepted.
          if (test.result === "valid" && !storable(msg.length)) {
            refusedByPolicy.push(test.tcId);
            verdict = { accepted: true };
          } else {
            verdict = { accepted: true, wrong: `unwrapped, then refused by the length policy: ${v.message}` };
          }
        }
        tally.record(test, verdict);
      });
      if (refusedByPolicy.length) {
        console.warn(
          `[wycheproof] ${file}: ${refusedByPolicy.length} valid vectors unwrapped and then refused by the length policy (not a multiple of 8, or an HMAC key under 32 bytes): tcIds ${refusedByPolicy.sort((a, b) => a - b).join(",")}`,
        );
      }
      if (zeroPaddedWrapBacks.length) {
        console.warn(
          `[wycheproof] ${file}: WrapKey AES_KWP came back zero-padded (not RFC 5649) for ${zeroPaddedWrapBacks.length} keys whose length is not a multiple of 8: tcIds ${zeroPaddedWrapBacks.sort((a, b) => a - b).join(",")}`,
        );
      }
      assertTally(p, tally);
    });
  }
});
