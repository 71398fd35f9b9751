import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { DEFAULT_CRYPTO_STREAM, HsmClient, HsmClientError } from "../../src/sdk";
import { compileHsmClientOptions } from "../../src/sdk/client-options";
import { client, newAuth, rejection, startNode, useFakeNodes } from "../helpers/fake-nodes";

// The `cryptoStream` option and which calls take the stream, against in-process fake daemons that
// do not serve it (test/helpers/fake-nodes.ts answers CryptoStream UNIMPLEMENTED, as a daemon from
// before the stream would): the stream is tried once per endpoint, then the unary calls carry on.
useFakeNodes();

describe("the cryptoStream option", () => {
  it("defaults to on with a window of 256 and a 10 s idle timeout; false turns it off; an object sizes it", () => {
    expect(compileHsmClientOptions({ endpoint: "127.0.0.1:1" }).cryptoStream).toEqual({ maxInFlight: 256, idleTimeoutMs: 10_000 });
    expect(DEFAULT_CRYPTO_STREAM).toEqual({ maxInFlight: 256, idleTimeoutMs: 10_000 });
    expect(compileHsmClientOptions({ endpoint: "127.0.0.1:1", cryptoStream: false }).cryptoStream).toBe(false);
    expect(compileHsmClientOptions({ endpoint: "127.0.0.1:1", cryptoStream: { maxInFlight: 8 } }).cryptoStream).toEqual({ maxInFlight: 8, idleTimeoutMs: 10_000 });
  });

  it("reports every bad setting together, as INVALID_ARGUMENT", () => {
    let err: unknown;
    try {
      new HsmClient({ endpoint: "127.0.0.1:1", cryptoStream: { maxInFlight: 0, idleTimeoutMs: -1 } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HsmClientError);
    expect((err as HsmClientError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((err as HsmClientError).details).toContain("cryptoStream.maxInFlight: must be an integer from 1 to 65536");
    expect((err as HsmClientError).details).toContain("cryptoStream.idleTimeoutMs: must be a finite number of milliseconds greater than 0");
    expect(() => new HsmClient({ endpoint: "127.0.0.1:1", cryptoStream: "yes" as never })).toThrow("cryptoStream: must be true, false or { maxInFlight, idleTimeoutMs }");
  });
});

describe("which calls take the stream", () => {
  it("tries the stream once per endpoint; a daemon without it gets unary calls, and no call fails", async () => {
    const a = await startNode("a", newAuth());
    const hsm = client({ endpoint: a.endpoint });
    for (let i = 0; i < 5; i++) await hsm.sign({ keyId: "k", message: Buffer.from("m") });
    await hsm.generateDataKey({ keyId: "k" });
    expect(a.seen.CryptoStream).toBe(1);
    expect(a.seen.Sign).toBe(5);
    expect(a.seen.GenerateDataKey).toBe(1);
    expect(hsm.streamStats).toEqual({ open: 0, answered: 0, fallbacks: 6 });
    expect(hsm.stats).toEqual({ calls: 6, retries: 0, failures: 0, relogins: 0 });
  });

  it("never opens a stream with cryptoStream: false, nor for a call with its own metadata, nor for batches", async () => {
    const a = await startNode("a", newAuth());
    const off = client({ endpoint: a.endpoint, cryptoStream: false });
    await off.sign({ keyId: "k" });
    await off.encrypt({ keyId: "k" });
    const on = client({ endpoint: a.endpoint });
    await on.sign({ keyId: "k" }, { metadata: { "x-request-id": "r-1" } });
    await on.batchSign({ items: [{ keyId: "k" }] });
    await on.wrapKey({ keyId: "k" });
    expect(a.seen.CryptoStream).toBeUndefined();
    expect(a.seen).toMatchObject({ Sign: 2, Encrypt: 1, BatchSign: 1, WrapKey: 1 });
    expect(on.streamStats).toEqual({ open: 0, answered: 0, fallbacks: 0 });
  });

  it("rejects a stream call on a closed client with FAILED_PRECONDITION, and a bad deadline with INVALID_ARGUMENT", async () => {
    const a = await startNode("a", newAuth());
    const hsm = client({ endpoint: a.endpoint });
    expect((await rejection(hsm.sign({ keyId: "k" }, { deadlineMs: -5 }))).details).toBe("deadlineMs: must be a finite number greater than 0");
    hsm.close();
    const err = await rejection(hsm.verify({ keyId: "k" }));
    expect({ code: err.code, details: err.details }).toEqual({ code: grpc.status.FAILED_PRECONDITION, details: "the HsmClient is closed" });
    expect(a.seen.CryptoStream).toBeUndefined();
  });
});
