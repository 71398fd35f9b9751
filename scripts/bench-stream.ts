/**
 * The stream side of `npm run bench`: one `CryptoService.CryptoStream` opened through the generated
 * client directly (no SDK layer between the benchmark and the wire), carrying many operations with
 * client-chosen ids; answers are matched by id, in any order. Plus the check of each row's first
 * result against Node's crypto, so a fast row is never a wrong one.
 */
import { constants, createDecipheriv, createHmac, verify as nodeVerify } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { CryptoServiceClient, type CryptoStreamRequest, type CryptoStreamResponse } from "../src/gen/hsm/v1/crypto";

/** One operation of a stream request (`{ $case: "sign", value: … }`). */
export type StreamOp = NonNullable<CryptoStreamRequest["op"]>;
/** One answer of a stream (`{ $case: "sign", value: … }` or `{ $case: "error", value: { code, message } }`). */
export type StreamResult = NonNullable<CryptoStreamResponse["result"]>;

/** One open crypto stream: `send` resolves with the answer carrying its id; `end` half-closes and waits for the server's end. */
export interface BenchStream {
  send(op: StreamOp): Promise<StreamResult>;
  end(): Promise<void>;
}

/** A client of the daemon's CryptoService, for {@link openStream}. */
export function streamClient(address: string): CryptoServiceClient {
  return new CryptoServiceClient(address, grpc.credentials.createInsecure());
}

/** Opens one stream authenticated by the session `token` (sent once, in the stream's metadata). */
export function openStream(client: CryptoServiceClient, token: string): BenchStream {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  const call = client.cryptoStream(md);
  const pending = new Map<number, { res: (r: StreamResult) => void; rej: (e: Error) => void }>();
  let next = 0;
  let broken: Error | undefined;
  const ended = new Promise<void>((res) => {
    call.on("end", res);
    call.on("error", (e: Error) => {
      broken = e;
      for (const p of pending.values()) p.rej(e);
      pending.clear();
      res();
    });
  });
  call.on("data", (m: CryptoStreamResponse) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    p?.res(m.result ?? { $case: "error", value: { code: grpc.status.INTERNAL, message: "answer without a result" } });
  });
  return {
    send: (op) =>
      new Promise<StreamResult>((res, rej) => {
        if (broken) return rej(broken);
        const id = next;
        next = (next + 1) >>> 0;
        pending.set(id, { res, rej });
        call.write({ id, op });
      }),
    end: async () => {
      call.end();
      await ended;
    },
  };
}

/** What the daemon's first answer of a row is checked with: the key's public half or its known secret. */
export type Check =
  | { kind: "ecdsa" | "rsa-pkcs1"; publicKeyPem: string; message: Buffer }
  | { kind: "aes-gcm"; key: Buffer; plaintext: Buffer }
  | { kind: "hmac-sha256"; key: Buffer; message: Buffer };

/**
 * Checks one stream answer against Node's crypto (signature verified with the public key, AES-GCM
 * decrypted and HMAC recomputed with the imported material).
 *
 * @throws Error naming the row when the answer is an error or does not match.
 */
export function checkResult(row: string, r: StreamResult, check: Check): void {
  if (r.$case === "error") throw new Error(`${row}: the stream answered ${grpc.status[r.value.code] ?? r.value.code}: ${r.value.message}`);
  let ok = false;
  if ((check.kind === "ecdsa" || check.kind === "rsa-pkcs1") && r.$case === "sign") {
    const key = check.kind === "rsa-pkcs1" ? { key: check.publicKeyPem, padding: constants.RSA_PKCS1_PADDING } : check.publicKeyPem;
    ok = nodeVerify("sha256", check.message, key, Buffer.from(r.value.signature));
  } else if (check.kind === "hmac-sha256" && r.$case === "sign") {
    ok = Buffer.from(r.value.signature).equals(createHmac("sha256", check.key).update(check.message).digest());
  } else if (check.kind === "aes-gcm" && r.$case === "encrypt") {
    const ct = Buffer.from(r.value.ciphertext);
    const d = createDecipheriv("aes-256-gcm", check.key, r.value.iv).setAuthTag(ct.subarray(-16));
    try {
      ok = Buffer.concat([d.update(ct.subarray(0, -16)), d.final()]).equals(check.plaintext);
    } catch {
      ok = false;
    }
  }
  if (!ok) throw new Error(`${row}: the stream's ${r.$case} answer does not match Node's crypto`);
}
