import { afterAll, beforeAll, describe, it } from "vitest";
import { HsmClient, KeySpec, KeyUsage, PublicKeyFormat, SignatureFormat, SigningAlgorithm } from "../../src/sdk";
import { startTestDaemon, type TestDaemon } from "../helpers/daemon";
import { userClient } from "../helpers/users";
import { CONCURRENCY, KeyLoader, Tally, assertTally, hex, inChunks, loadVectors, once, plan, verdictOf, type Plan, type Verdict, type WycheproofTest } from "../helpers/wycheproof";

// Wycheproof signature vectors through the service: each group's public key goes in through
// ImportPublicKey (HMAC keys through BYOK ImportKey, see KeyLoader), every vector through Verify over real gRPC.
// valid → valid:true; invalid → valid:false or INVALID_ARGUMENT (the tally says which, per file);
// acceptable → either, recorded.

let td: TestDaemon;
let c: HsmClient;

beforeAll(async () => {
  td = await startTestDaemon();
  c = await userClient(td);
});
afterAll(async () => {
  c?.close();
  await td?.cleanup();
});

interface SigTest extends WycheproofTest {
  msg: string;
  sig: string;
}
interface PublicKeyGroup {
  publicKeyDer: string;
  publicKeyJwk?: Record<string, unknown>;
  tests: SigTest[];
}

/** Correct rejections of an invalid signature: a `false` answer, or an INVALID_ARGUMENT error. */
const REJECTIONS = ["valid:false", "INVALID_ARGUMENT"];

/**
 * Imports each group's key once (groups concurrently, in chunks), then verifies every planned vector
 * (32 at a time). A group whose key import fails turns each of its vectors into `import:<code>`,
 * which is no correct outcome for any of them.
 */
async function runVerify<G extends { tests: SigTest[] }>(
  p: Plan<G, SigTest>,
  tally: Tally,
  importKey: (g: G) => Promise<string>,
  request: (keyId: string, t: SigTest) => { keyId: string; algorithm: SigningAlgorithm; message: Buffer; signature: Buffer; signatureFormat?: SignatureFormat },
): Promise<void> {
  const groups = [...new Set(p.run.map((x) => x.group))];
  const keys = new Map<G, { id?: string; error?: Verdict }>();
  await inChunks(groups, 8, async (g) => {
    const v = await verdictOf(async () => {
      keys.set(g, { id: await importKey(g) });
      return { accepted: true };
    });
    if (!v.accepted) keys.set(g, { error: { accepted: false, how: `import:${v.how}`, message: v.message } });
  });
  await inChunks(p.run, CONCURRENCY, async ({ group, test }) => {
    const k = keys.get(group)!;
    const v: Verdict = k.error ?? (await verdictOf(async () => ((await c.verify(request(k.id!, test))).valid ? { accepted: true } : { accepted: false, how: "valid:false" })));
    tally.record(test, v);
  });
}

const importSpki = (der: string) =>
  c.importPublicKey({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, publicKey: hex(der), label: "wycheproof", usages: [KeyUsage.KEY_USAGE_VERIFY] }).then((k) => k.id);

describe("Wycheproof ECDSA verify through the service", () => {
  const files = [
    ["ecdsa_secp256r1_sha256_test.json", SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, SignatureFormat.SIGNATURE_FORMAT_DER],
    ["ecdsa_secp256r1_sha256_p1363_test.json", SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256, SignatureFormat.SIGNATURE_FORMAT_RAW],
    ["ecdsa_secp384r1_sha384_test.json", SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA384, SignatureFormat.SIGNATURE_FORMAT_DER],
  ] as const;
  for (const [file, algorithm, signatureFormat] of files) {
    const p = plan(loadVectors<PublicKeyGroup, SigTest>(file));
    it(p.title, async () => {
      const tally = new Tally(file, REJECTIONS);
      await runVerify(
        p,
        tally,
        (g) => importSpki(g.publicKeyDer),
        (keyId, t) => ({ keyId, algorithm, message: hex(t.msg), signature: hex(t.sig), signatureFormat }),
      );
      assertTally(p, tally);
    });
  }
});

describe("Wycheproof RSA verify through the service", () => {
  const files = [
    ["rsa_signature_2048_sha256_test.json", SigningAlgorithm.SIGNING_ALGORITHM_RSA_PKCS1_SHA256],
    ["rsa_pss_2048_sha256_mgf1_32_test.json", SigningAlgorithm.SIGNING_ALGORITHM_RSA_PSS_SHA256],
  ] as const;
  for (const [file, algorithm] of files) {
    // PSS: hsmd uses salt length = hash length (32 for SHA-256), MGF1 with the same hash: exactly
    // this file's parameters, checked here so a different file cannot slip in.
    const p = plan(loadVectors<PublicKeyGroup & { sLen?: number; mgfSha?: string; sha: string }, SigTest>(file), (g) =>
      g.sha !== "SHA-256" || (g.sLen !== undefined && g.sLen !== 32) || (g.mgfSha !== undefined && g.mgfSha !== "SHA-256") ? "parameters hsmd does not offer" : undefined,
    );
    it(p.title, async () => {
      const tally = new Tally(file, REJECTIONS);
      await runVerify(
        p,
        tally,
        (g) => importSpki(g.publicKeyDer),
        (keyId, t) => ({ keyId, algorithm, message: hex(t.msg), signature: hex(t.sig) }),
      );
      assertTally(p, tally);
    });
  }
});

describe("Wycheproof Ed25519 verify through the service", () => {
  const file = "ed25519_test.json";
  const p = plan(loadVectors<PublicKeyGroup, SigTest>(file));
  it(p.title, async () => {
    const tally = new Tally(file, REJECTIONS);
    await runVerify(
      p,
      tally,
      async (g) => {
        const jwk = g.publicKeyJwk as { kty: string; crv: string; x: string };
        const k = await c.importPublicKey({
          format: PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK,
          publicKey: Buffer.from(JSON.stringify({ kty: jwk.kty, crv: jwk.crv, x: jwk.x })),
          label: "wycheproof-ed25519",
        });
        return k.id;
      },
      (keyId, t) => ({ keyId, algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: hex(t.msg), signature: hex(t.sig) }),
    );
    assertTally(p, tally);
  });
});

describe("Wycheproof HMAC-SHA256 sign and verify through the service", () => {
  interface MacGroup {
    keySize: number;
    tagSize: number;
    tests: MacTest[];
  }
  const file = "hmac_sha256_test.json";
  const p = plan(loadVectors<MacGroup, MacTest>(file), (_g, t) => {
    if (t.key.length / 2 < 32) return "key under 32 bytes (SoftHSM2's minimum for CKM_SHA256_HMAC)";
    // SoftHSM2 2.6 zero-pads such a key when wrapping it under the domain key; past the 64-byte block
    // that changes the MAC, so hsmd refuses to keep it (bad-input tests cover the refusal).
    if (t.key.length / 2 > 64 && (t.key.length / 2) % 8 !== 0) return "key over 64 bytes and not a multiple of 8 (refused: the device cannot store it faithfully)";
    return undefined;
  });
  it(p.title, async () => {
    const tally = new Tally(file, REJECTIONS);
    const loader = await new KeyLoader(c).init();
    console.log(`[wycheproof] ${file}: ${loader.describe()}`);
    // Sign and verify: a truncated tag (tagSize < 256) is checked by computing the MAC in the HSM.
    const importMacKey = once((keyHex) => loader.load(KeySpec.KEY_SPEC_HMAC_SHA256, hex(keyHex), [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY], { label: "wycheproof-hmac" }));
    await runMac(p, tally, importMacKey, SigningAlgorithm.SIGNING_ALGORITHM_HMAC_SHA256, (g) => (g.tagSize < 256 ? g.tagSize / 8 : 0));
    assertTally(p, tally, p.run.filter(({ test }) => test.result === "valid").length);
  });
});

/**
 * MAC vectors through Sign and Verify: every vector's tag through Verify (with `macLength` when
 * the group's tags are truncated); for valid vectors also Sign, whose tag must be the vector's
 * (recorded as a second check). A key the service refuses turns the vector into `import:<code>`.
 */
async function runMac<G extends { tagSize: number; tests: MacTest[] }>(
  p: Plan<G, MacTest>,
  tally: Tally,
  importKey: (keyHex: string) => Promise<string>,
  algorithm: SigningAlgorithm,
  macLength: (g: G) => number,
): Promise<void> {
  await inChunks(p.run, CONCURRENCY, async ({ group, test }) => {
    let keyId: string | undefined;
    const imp = await verdictOf(async () => {
      keyId = await importKey(test.key);
      return { accepted: true };
    });
    const req = { keyId: keyId!, algorithm, message: hex(test.msg), macLength: macLength(group) };
    const v: Verdict = !imp.accepted
      ? { accepted: false, how: `import:${imp.how}`, message: imp.message }
      : await verdictOf(async () => ((await c.verify({ ...req, signature: hex(test.tag) })).valid ? { accepted: true } : { accepted: false, how: "valid:false" }));
    // hsmd's floor: a tag under 16 bytes is refused up front, whatever the vector's result.
    const underFloor = req.macLength > 0 && req.macLength < 16 ? { expect: "reject" as const, rejections: ["INVALID_ARGUMENT"], reason: "tag under hsmd's 16-byte floor" } : undefined;
    tally.record(test, v, underFloor);
    if (test.result !== "valid") return;
    const signed: Verdict = !imp.accepted
      ? v
      : await verdictOf(async () => {
          const tag = Buffer.from((await c.sign(req)).signature);
          return tag.equals(hex(test.tag)) ? { accepted: true } : { accepted: true, wrong: `Sign made ${tag.toString("hex")}` };
        });
    tally.record({ ...test, comment: `${test.comment} (Sign)` }, signed, underFloor ?? { expect: "accept", reason: "Sign makes the vector's tag" });
  });
}

interface MacTest extends WycheproofTest {
  key: string;
  msg: string;
  tag: string;
}

describe("Wycheproof AES-CMAC sign and verify through the service", () => {
  interface CmacGroup {
    keySize: number;
    tagSize: number;
    tests: MacTest[];
  }
  const file = "aes_cmac_test.json";
  const p = plan(loadVectors<CmacGroup, MacTest>(file), (g) => (g.keySize === 192 ? "AES-192 key (SoftHSM2 and hsmd take AES-128 and AES-256 only)" : undefined));
  it(p.title, async () => {
    // An invalid key size must be refused when the key is made, before any MAC.
    const tally = new Tally(file, ["valid:false", "import:INVALID_ARGUMENT"]);
    const loader = await new KeyLoader(c).init();
    console.log(`[wycheproof] ${file}: ${loader.describe()}`);
    const importCmacKey = once((keyHex) =>
      loader.load(keyHex.length <= 32 ? KeySpec.KEY_SPEC_AES_128 : KeySpec.KEY_SPEC_AES_256, hex(keyHex), [KeyUsage.KEY_USAGE_SIGN, KeyUsage.KEY_USAGE_VERIFY], { label: "wycheproof-cmac" }),
    );
    await runMac(p, tally, importCmacKey, SigningAlgorithm.SIGNING_ALGORITHM_AES_CMAC, () => 0);
    assertTally(p, tally, p.run.filter(({ test }) => test.result === "valid").length);
  });
});
