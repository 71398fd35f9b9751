/**
 * The proto ↔ key domain mapping (src/grpc/map): every enum number the API defines maps to its name
 * and back, and an unspecified or unknown one answers INVALID_ARGUMENT with the message the key
 * service gave before the domain spoke names.
 */
import { describe, expect, it } from "vitest";
import { Code } from "../../src/errors";
import { EncryptionAlgorithm, SigningAlgorithm, WrapAlgorithm, type SignRequest } from "../../src/gen/hsm/v1/crypto";
import { KeyOrigin, KeySpec, KeyUsage, PublicKeyFormat } from "../../src/gen/hsm/v1/keys";
import { batchResultToProto, dataKeyFromProto, encryptionAlgorithmFromProto, signFromProto, signingAlgorithmFromProto, wrapAlgorithmFromProto } from "../../src/grpc/map/crypto";
import { importPublicKeyFromProto, listKeysFromProto, originToProto, specFromProto, specToProto, usagesFromProto, usagesToProto } from "../../src/grpc/map/keys";
import { HsmError } from "../../src/errors";
import { KEY_ORIGIN_NAMES, KEY_SPEC_NAMES } from "../../src/keys";

const refusal = (fn: () => unknown) => {
  try {
    fn();
    return "OK";
  } catch (e) {
    return `${(e as HsmError).code}: ${(e as Error).message}`;
  }
};
const sign = (over: Partial<SignRequest>): SignRequest => ({
  keyId: "k",
  algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256,
  message: Buffer.from("m"),
  messageType: 0,
  signatureFormat: 0,
  macLength: 0,
  ...over,
});

describe("grpc/map", () => {
  it("maps every spec, origin and usage number to its name and back", () => {
    for (const n of KEY_SPEC_NAMES) expect(specFromProto(specToProto(n))).toBe(n);
    expect(KEY_SPEC_NAMES.map(specToProto)).toEqual(Object.values(KeySpec).filter((v) => typeof v === "number" && v > 0));
    expect(KEY_ORIGIN_NAMES.map(originToProto)).toEqual([
      KeyOrigin.KEY_ORIGIN_GENERATED,
      KeyOrigin.KEY_ORIGIN_IMPORTED,
      KeyOrigin.KEY_ORIGIN_PUBLIC,
      KeyOrigin.KEY_ORIGIN_UNWRAPPED,
      KeyOrigin.KEY_ORIGIN_DERIVED,
    ]);
    const all = [1, 2, 3, 4, 5, 6, 7] as KeyUsage[];
    expect(usagesToProto(usagesFromProto(all))).toEqual(all);
    for (const [e, prefix, fn] of [
      [EncryptionAlgorithm, "ENCRYPTION_ALGORITHM_", encryptionAlgorithmFromProto],
      [SigningAlgorithm, "SIGNING_ALGORITHM_", signingAlgorithmFromProto],
      [WrapAlgorithm, "WRAP_ALGORITHM_", wrapAlgorithmFromProto],
    ] as const) {
      for (const [k, v] of Object.entries(e)) if (typeof v === "number" && v > 0) expect(`${prefix}${(fn as (n: number) => string)(v)}`).toBe(k);
    }
  });

  it("answers an unspecified or unknown number with the key service's old messages", () => {
    expect(refusal(() => specFromProto(KeySpec.KEY_SPEC_UNSPECIFIED))).toBe(
      `${Code.InvalidArgument}: spec must be one of KEY_SPEC_AES_128, KEY_SPEC_AES_256, KEY_SPEC_HMAC_SHA256, KEY_SPEC_HMAC_SHA384, KEY_SPEC_HMAC_SHA512, KEY_SPEC_RSA_2048, KEY_SPEC_RSA_3072, KEY_SPEC_RSA_4096, KEY_SPEC_EC_P256, KEY_SPEC_EC_P384, KEY_SPEC_EC_P521, KEY_SPEC_EC_SECP256K1, KEY_SPEC_ED25519; got KEY_SPEC_UNSPECIFIED`,
    );
    expect(refusal(() => specFromProto(99 as KeySpec))).toMatch(/; got 99$/);
    expect(refusal(() => usagesFromProto([KeyUsage.KEY_USAGE_SIGN, 0]))).toBe(`${Code.InvalidArgument}: usages: unknown usage 0`);
    expect(refusal(() => encryptionAlgorithmFromProto(0))).toBe(
      `${Code.InvalidArgument}: algorithm must be one of AES_GCM, AES_CBC_PAD, AES_CTR, RSA_OAEP_SHA1/256/384/512; got ENCRYPTION_ALGORITHM_UNSPECIFIED`,
    );
    expect(refusal(() => signingAlgorithmFromProto(0))).toBe(`${Code.InvalidArgument}: algorithm must be a SigningAlgorithm other than UNSPECIFIED; got SIGNING_ALGORITHM_UNSPECIFIED`);
    expect(refusal(() => wrapAlgorithmFromProto(42))).toBe(`${Code.InvalidArgument}: algorithm must be AES_KW, AES_KWP, RSA_OAEP_SHA256 or RSA_OAEP_SHA1; got 42`);
    expect(refusal(() => signFromProto(sign({ messageType: 7 })))).toBe(`${Code.InvalidArgument}: message_type must be RAW or DIGEST; got 7`);
    expect(refusal(() => signFromProto(sign({ signatureFormat: 5 })))).toBe(`${Code.InvalidArgument}: signature_format must be DER or RAW; got 5`);
    expect(refusal(() => importPublicKeyFromProto({ format: PublicKeyFormat.PUBLIC_KEY_FORMAT_UNSPECIFIED, publicKey: Buffer.alloc(1), label: "l", usages: [], requestId: "" }))).toBe(
      `${Code.InvalidArgument}: format must be SPKI_DER, PEM or JWK`,
    );
    expect(refusal(() => listKeysFromProto({ labelPrefix: "", spec: 0, usage: 9 as KeyUsage, pageSize: 0, pageToken: "" }))).toBe(`${Code.InvalidArgument}: usage filter 9 is not a KeyUsage`);
    expect(refusal(() => dataKeyFromProto({ keyId: "k", spec: 77 as KeySpec, encryptionContext: {} }))).toBe(
      `${Code.InvalidArgument}: spec must be KEY_SPEC_AES_256 (the default) or KEY_SPEC_AES_128 for a data key`,
    );
  });

  it("keeps the list filters' meaning: 0 is no filter, a spec the API lacks matches nothing", () => {
    const q = (spec: number) => listKeysFromProto({ labelPrefix: "", spec: spec as KeySpec, usage: 0, pageSize: 0, pageToken: "" });
    expect(q(0).spec).toBeUndefined();
    expect(q(9).spec).toBe("EC_P256");
    expect(q(99).spec).toBeNull();
    expect(dataKeyFromProto({ keyId: "k", spec: 0, encryptionContext: {} }).spec).toBeUndefined();
  });

  it("answers a batch item's error with its gRPC status, and an internal one without details", () => {
    expect(batchResultToProto({ ok: false, error: new HsmError(Code.NotFound, "key x not found") })).toEqual({ $case: "error", value: { code: 5, message: "key x not found" } });
    expect(batchResultToProto({ ok: false, error: new Error("CKR_GENERAL_ERROR secret detail") })).toEqual({ $case: "error", value: { code: 13, message: "internal error" } });
    expect(batchResultToProto({ ok: true, value: 1 })).toEqual({ $case: "ok", value: 1 });
  });
});
