import * as crypto from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CryptoServiceService, type CryptoServiceServer, type SignRequest } from "../../src/gen/hsm/v1/crypto";
import { Key, KeyServiceService, type KeyServiceServer, type GenerateKeyRequest } from "../../src/gen/hsm/v1/keys";
import { GrpcStatus, HsmClient, HsmClientError, KeySpec, KeyUsage, SigningAlgorithm, wrapForImport } from "../../src/sdk";

// A unit test of the client: a tiny in-process grpc-js server with fake services, bound to port 0.

type Unary<Req, Res> = grpc.handleUnaryCall<Req, Res>;
const unimplemented: Unary<unknown, never> = (_call, cb) => cb({ code: grpc.status.UNIMPLEMENTED, details: "not in this fake" });

/** What the fake server saw, for assertions. */
const seen: { generateKey?: GenerateKeyRequest; metadata?: grpc.Metadata; pageTokens: string[]; cancelled: number } = {
  pageTokens: [],
  cancelled: 0,
};

const PAGES: Record<string, { ids: string[]; next: string }> = {
  "": { ids: ["k1", "k2"], next: "p2" },
  p2: { ids: ["k3", "k4"], next: "p3" },
  p3: { ids: ["k5"], next: "" },
};

/** A handler that never answers, as a stuck server would; counts the cancellations it sees. */
const never: Unary<unknown, never> = (call) => {
  call.on("cancelled", () => {
    seen.cancelled += 1;
  });
};

const keyService: KeyServiceServer = {
  generateKey: (call, cb) => {
    seen.generateKey = call.request;
    seen.metadata = call.metadata;
    cb(null, Key.fromPartial({ id: "k-new", label: call.request.label, spec: call.request.spec, usages: [KeyUsage.KEY_USAGE_SIGN], version: 1 }));
  },
  getKey: (call, cb) => cb({ code: grpc.status.NOT_FOUND, details: `key ${call.request.keyId} not found` }),
  listKeys: (call, cb) => {
    seen.pageTokens.push(call.request.pageToken);
    const page = PAGES[call.request.pageToken];
    if (!page) return cb({ code: grpc.status.INVALID_ARGUMENT, details: "bad page token" });
    cb(null, { keys: page.ids.map((id) => Key.fromPartial({ id, label: call.request.labelPrefix + id })), nextPageToken: page.next });
  },
  deleteKey: never,
  getPublicKey: unimplemented,
  importPublicKey: unimplemented,
  getImportParameters: unimplemented,
  importKey: unimplemented,
  shareKey: unimplemented,
  unshareKey: unimplemented,
};

const cryptoService: CryptoServiceServer = {
  encrypt: unimplemented,
  decrypt: unimplemented,
  sign: (call, cb) => cb(null, { keyId: call.request.keyId, signature: Buffer.from(call.request.message).reverse(), keyVersion: 1 }),
  verify: unimplemented,
  wrapKey: unimplemented,
  unwrapKey: unimplemented,
  deriveKey: unimplemented,
  generateRandom: never,
  batchSign: (call, cb) =>
    cb(null, {
      results: call.request.items.map((item: SignRequest) =>
        item.keyId === "missing"
          ? { result: { $case: "error" as const, value: { code: grpc.status.NOT_FOUND, message: "no such key" } } }
          : { result: { $case: "ok" as const, value: { keyId: item.keyId, signature: Buffer.from([item.algorithm]), keyVersion: 1 } } },
      ),
    }),
  batchVerify: unimplemented,
  batchEncrypt: unimplemented,
  batchDecrypt: unimplemented,
};

let server: grpc.Server;
let endpoint: string;
const clients: HsmClient[] = [];

/** A client on the fake server, closed after each test. */
function client(defaultDeadlineMs?: number): HsmClient {
  const c = new HsmClient({ endpoint, defaultDeadlineMs });
  clients.push(c);
  return c;
}

async function rejection(p: Promise<unknown>): Promise<HsmClientError> {
  const err = await p.then(
    () => {
      throw new Error("expected the call to reject");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(HsmClientError);
  return err as HsmClientError;
}

beforeAll(async () => {
  server = new grpc.Server();
  server.addService(KeyServiceService, keyService);
  server.addService(CryptoServiceService, cryptoService);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  endpoint = `127.0.0.1:${port}`;
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(() => {
  server.forceShutdown();
});

describe("HsmClient calls", () => {
  it("round-trips a call, filling request defaults and sending metadata", async () => {
    const key = await client().generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "signer" }, { metadata: { "x-request-id": "r-1" } });
    expect(key).toMatchObject({ id: "k-new", label: "signer", spec: KeySpec.KEY_SPEC_EC_P256, usages: [KeyUsage.KEY_USAGE_SIGN], version: 1 });
    expect(seen.generateKey).toEqual({ spec: KeySpec.KEY_SPEC_EC_P256, label: "signer", usages: [], exportable: false, requestId: "", description: "", tags: {}, rotationPeriodDays: 0 });
    expect(seen.metadata?.get("x-request-id")).toEqual(["r-1"]);

    const sig = await client().sign({ keyId: "k", algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ED25519, message: Buffer.from([1, 2, 3]) });
    expect(sig.keyId).toBe("k");
    expect(Buffer.from(sig.signature)).toEqual(Buffer.from([3, 2, 1]));
  });

  it("round-trips a batch with partial items and per-item errors", async () => {
    const res = await client().batchSign({
      items: [{ keyId: "a", algorithm: SigningAlgorithm.SIGNING_ALGORITHM_ECDSA_SHA256 }, { keyId: "missing" }],
    });
    expect(res.results[0]?.result).toEqual({ $case: "ok", value: { keyId: "a", signature: Buffer.from([7]), keyVersion: 1 } });
    expect(res.results[1]?.result).toEqual({ $case: "error", value: { code: grpc.status.NOT_FOUND, message: "no such key" } });
  });

  it("turns a server error into HsmClientError with code, codeName and details", async () => {
    const err = await rejection(client().getKey({ keyId: "nope" }));
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.code).toBe(GrpcStatus.NOT_FOUND);
    expect(err.codeName).toBe("NOT_FOUND");
    expect(err.details).toBe("key nope not found");
    expect(err.message).toBe("[NOT_FOUND] key nope not found");
    expect(err.name).toBe("HsmClientError");
    expect(err.cause).toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it("fails a call past its deadline with DEADLINE_EXCEEDED (per call and by default)", async () => {
    const started = Date.now();
    const err = await rejection(client().generateRandom({ length: 16 }, { deadlineMs: 150 }));
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(err.codeName).toBe("DEADLINE_EXCEEDED");
    expect(Date.now() - started).toBeLessThan(5_000);

    const byDefault = await rejection(client(150).deleteKey({ keyId: "k" }));
    expect(byDefault.code).toBe(grpc.status.DEADLINE_EXCEEDED);
  });

  it("cancels a call when its AbortSignal aborts", async () => {
    const c = client();
    // Warm the connection so the call reaches the server before the abort.
    await c.getKey({ keyId: "warm" }).catch(() => undefined);
    const before = seen.cancelled;
    const controller = new AbortController();
    const pending = c.generateRandom({ length: 16 }, { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("user gave up")), 100);
    const err = await rejection(pending);
    expect(err.code).toBe(grpc.status.CANCELLED);
    expect(err.codeName).toBe("CANCELLED");
    expect((err.cause as Error).message).toBe("user gave up");
    await expect.poll(() => seen.cancelled).toBeGreaterThan(before);
  });

  it("rejects at once when the signal is already aborted, and maps AbortSignal.timeout to DEADLINE_EXCEEDED", async () => {
    const aborted = await rejection(client().getKey({ keyId: "k" }, { signal: AbortSignal.abort() }));
    expect(aborted.code).toBe(grpc.status.CANCELLED);
    const timedOut = await rejection(client().generateRandom({ length: 1 }, { signal: AbortSignal.timeout(100) }));
    expect(timedOut.code).toBe(grpc.status.DEADLINE_EXCEEDED);
  });

  it("pages through every key with listAllKeys", async () => {
    seen.pageTokens = [];
    const ids: string[] = [];
    for await (const key of client().listAllKeys({ labelPrefix: "app/", pageSize: 2 })) ids.push(key.id);
    expect(ids).toEqual(["k1", "k2", "k3", "k4", "k5"]);
    expect(seen.pageTokens).toEqual(["", "p2", "p3"]);
  });

  it("rejects bad call options and calls after close() with HsmClientError", async () => {
    const c = client();
    expect((await rejection(c.getKey({ keyId: "k" }, { deadlineMs: -1 }))).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await rejection(c.getKey({ keyId: "k" }, { metadata: { "x-bin": "a" } }))).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await rejection(c.getKey({ keyId: "k" }, { metadata: { "bad key": "a" } }))).code).toBe(grpc.status.INVALID_ARGUMENT);
    c.close();
    c.close();
    expect((await rejection(c.getKey({ keyId: "k" }))).code).toBe(grpc.status.FAILED_PRECONDITION);
  });
});

describe("HsmClient options", () => {
  it("reports every problem together as INVALID_ARGUMENT", () => {
    let caught: unknown;
    try {
      new HsmClient({ endpoint: "", defaultDeadlineMs: 0, tls: { cert: Buffer.from("x") } });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(HsmClientError);
    const err = caught as HsmClientError;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toContain("endpoint");
    expect(err.details).toContain("defaultDeadlineMs");
    expect(err.details).toContain("cert and key");
  });
});

describe("HsmClientError.from", () => {
  it("normalises anything thrown", () => {
    const same = new HsmClientError(grpc.status.INTERNAL, "x");
    expect(HsmClientError.from(same)).toBe(same);
    expect(HsmClientError.from(Object.assign(new Error("5 NOT_FOUND: gone"), { code: 5, details: "gone" }))).toMatchObject({
      code: grpc.status.NOT_FOUND,
      codeName: "NOT_FOUND",
      details: "gone",
    });
    // A CKR_* value in `code` (CKR_PIN_INCORRECT = 160) is not a gRPC status.
    expect(HsmClientError.from(Object.assign(new Error("CKR_PIN_INCORRECT"), { code: 160 }))).toMatchObject({
      code: grpc.status.UNKNOWN,
      codeName: "UNKNOWN",
      details: "CKR_PIN_INCORRECT",
    });
    expect(HsmClientError.from("boom")).toMatchObject({ code: grpc.status.UNKNOWN, details: "boom", cause: "boom" });
    const abort = new DOMException("stop", "AbortError");
    expect(HsmClientError.from(abort)).toMatchObject({ code: grpc.status.CANCELLED, cause: abort });
  });
});

describe("wrapForImport", () => {
  const { publicKey, privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 3072 });
  const spki = publicKey.export({ format: "der", type: "spki" });

  /** The server side of the format, with Node: RSA-OAEP-SHA256 the first modulus-length bytes, then AES-KWP. */
  function unwrap(blob: Buffer): Buffer {
    const k = crypto.privateDecrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, blob.subarray(0, 384));
    expect(k.length).toBe(32);
    const d = crypto.createDecipheriv("id-aes256-wrap-pad", k, Buffer.from("A65959A6", "hex"));
    return Buffer.concat([d.update(blob.subarray(384)), d.final()]);
  }

  it.each([
    ["AES-256 raw key", 32],
    ["HMAC key of odd length", 45],
    ["one byte", 1],
  ])("wraps %s as 384 bytes + AES-KWP and unwraps with Node", (_name, length) => {
    const material = crypto.randomBytes(length);
    const blob = wrapForImport(spki, material);
    // RFC 5649: the material padded to a multiple of 8, plus the 8-byte AIV block.
    expect(blob.length).toBe(384 + Math.ceil(length / 8) * 8 + 8);
    expect(unwrap(blob)).toEqual(material);
  });

  it("wraps a PKCS#8 private key", () => {
    const material = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "der", type: "pkcs8" });
    const blob = wrapForImport(spki, material);
    expect(blob.length).toBe(384 + Math.ceil(material.length / 8) * 8 + 8);
    expect(unwrap(blob)).toEqual(material);
    // A fresh ephemeral key each time.
    expect(wrapForImport(spki, material).equals(blob)).toBe(false);
  });

  it("refuses a non-RSA key, a non-SPKI blob and empty material", () => {
    const ec = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ format: "der", type: "spki" });
    expect(() => wrapForImport(ec, Buffer.alloc(32, 1))).toThrow(HsmClientError);
    expect(() => wrapForImport(Buffer.from("not der"), Buffer.alloc(32, 1))).toThrow(/SPKI/);
    expect(() => wrapForImport(spki, Buffer.alloc(0))).toThrow(/non-empty/);
  });
});
