import { createPublicKey } from "node:crypto";
import { HsmError, invalid } from "../errors";
import type { PublicKeyFormatName } from "./types";

/** Parses an imported public key in any of the accepted formats into SPKI DER. */
export function parsePublicKey(format: PublicKeyFormatName, data: Buffer): Buffer {
  try {
    switch (format) {
      case "SPKI_DER":
        return createPublicKey({ key: data, format: "der", type: "spki" }).export({ type: "spki", format: "der" });
      case "PEM": {
        const text = data.toString("utf8");
        if (!text.includes("-----BEGIN PUBLIC KEY-----")) throw new Error("not a PEM public key");
        return createPublicKey({ key: text, format: "pem" }).export({ type: "spki", format: "der" });
      }
      case "JWK": {
        const jwk = JSON.parse(data.toString("utf8"));
        if (!jwk || typeof jwk !== "object") throw new Error("not a JWK");
        if ("d" in jwk) throw invalid('public_key is a private JWK (it has "d"): send only the public members (drop "d" and the other private ones)');
        return createPublicKey({ key: jwk, format: "jwk" }).export({ type: "spki", format: "der" });
      }
      default:
        throw invalid("format must be SPKI_DER, PEM or JWK");
    }
  } catch (e) {
    if (e instanceof HsmError) throw e;
    throw invalid(`public_key is not a valid PUBLIC_KEY_FORMAT_${format} public key`);
  }
}
