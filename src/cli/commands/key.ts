/** `key …`: generating, listing, sharing, exporting public keys and importing keys (crypto users). */
import { createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { KeySpec, PublicKeyFormat, wrapForImport, type Key } from "../../sdk";
import { UsageError } from "../errors";
import { deliverBytes, readInput, writeOutputFile, writeStdout } from "../io";
import { isSymmetric, keySpecs, keyUsages, parseUsages, SYMMETRIC_SPECS } from "../names";
import { keysText, keyText, keyView } from "../render";
import { choiceValue, intValue, requireString, stringValue, type CommandContext, type CommandSpec, type OptionSpec, type Values } from "../spec";

const KEY_ID: OptionSpec = { type: "string", arg: "ID", required: true, description: "the key's id" };
const LABEL: OptionSpec = { type: "string", arg: "LABEL", required: true, description: "a name for the key (not unique)" };
const USAGE: OptionSpec = {
  type: "string",
  arg: "USAGE",
  multiple: true,
  description: "what the key may do; repeat or give a comma list: encrypt, decrypt, sign, verify, wrap, unwrap, derive\n(default: AES encrypt,decrypt; HMAC and asymmetric sign,verify)",
};
const EXPORTABLE: OptionSpec = { type: "boolean", description: "let the owner wrap the key out under another key (crypto wrap)" };
const REQUEST_ID: OptionSpec = { type: "string", arg: "ID", description: "idempotency token: running again with the same id returns the same key" };
const QUORUM: OptionSpec = { type: "string", arg: "ID", description: "an approved quorum request for this very operation (when the daemon requires one)" };

const ASYMMETRIC_SPECS = keySpecs.names.filter((n) => !isSymmetric(keySpecs.parse(n, "")));

async function generate(ctx: CommandContext, values: Values, symmetric: boolean): Promise<void> {
  const spec = keySpecs.parse(requireString(values, "spec"), "--spec");
  if (isSymmetric(spec) !== symmetric) {
    throw new UsageError(`--spec ${keySpecs.name(spec)} is ${symmetric ? "asymmetric: use key generate-asymmetric-pair" : "a secret key: use key generate-symmetric"}`);
  }
  const key = await ctx.client().generateKey({
    spec,
    label: requireString(values, "label"),
    usages: parseUsages(values.usage as string[] | undefined),
    exportable: values.exportable === true,
    requestId: stringValue(values, "request-id") ?? "",
  });
  ctx.emit(keyView(key), keyText(key));
}

const EC_CURVES: Partial<Record<KeySpec, string>> = {
  [KeySpec.KEY_SPEC_EC_P256]: "prime256v1",
  [KeySpec.KEY_SPEC_EC_P384]: "secp384r1",
  [KeySpec.KEY_SPEC_EC_P521]: "secp521r1",
  [KeySpec.KEY_SPEC_EC_SECP256K1]: "secp256k1",
};
const RSA_BITS: Partial<Record<KeySpec, number>> = {
  [KeySpec.KEY_SPEC_RSA_2048]: 2048,
  [KeySpec.KEY_SPEC_RSA_3072]: 3072,
  [KeySpec.KEY_SPEC_RSA_4096]: 4096,
};

/** Why `key` is not a key of `spec`, or undefined when it is. */
function specMismatch(key: KeyObject, spec: KeySpec): string | undefined {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  const what = type === "ec" ? `an EC key on ${details.namedCurve}` : type === "rsa" ? `an RSA-${details.modulusLength} key` : `an ${type} key`;
  if (EC_CURVES[spec] !== undefined) return type === "ec" && details.namedCurve === EC_CURVES[spec] ? undefined : what;
  if (RSA_BITS[spec] !== undefined) return type === "rsa" && details.modulusLength === RSA_BITS[spec] ? undefined : what;
  if (spec === KeySpec.KEY_SPEC_ED25519) return type === "ed25519" ? undefined : what;
  return what;
}

/** A private key from a PEM file (any PEM private key form) or DER (PKCS#8, SEC1 or PKCS#1). */
function parsePrivateKey(data: Buffer, path: string): KeyObject {
  const text = data.toString("latin1");
  if (text.includes("-----BEGIN")) {
    if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text)) throw new UsageError(`--in: ${path} is an encrypted private key: decrypt it first (openssl pkey -in … -out …)`);
    if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text))
      throw new UsageError(`--in: ${path} is PEM but holds no private key (expected "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY" or "BEGIN RSA PRIVATE KEY")`);
    try {
      return createPrivateKey({ key: data, format: "pem" });
    } catch (err) {
      throw new UsageError(`--in: ${path}: cannot read the PEM private key: ${(err as Error).message}`);
    }
  }
  for (const type of ["pkcs8", "sec1", "pkcs1"] as const) {
    try {
      return createPrivateKey({ key: data, format: "der", type });
    } catch {
      // try the next form
    }
  }
  throw new UsageError(`--in: ${path} is neither a PEM private key nor a DER (PKCS#8, SEC1, PKCS#1) one`);
}

/** Reads a public key file as PEM, DER (SPKI) or JWK (checked locally, so that a wrong file is named clearly). */
export function checkPublicKey(data: Buffer, format: "pem" | "der" | "jwk", path: string, flag: string): KeyObject {
  const text = data.toString("utf8");
  try {
    if (format === "pem") {
      if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) throw new UsageError(`--${flag}: ${path} holds a private key; give the public key only`);
      if (!text.includes("-----BEGIN PUBLIC KEY-----")) throw new UsageError(`--${flag}: ${path} is not a PEM public key ("-----BEGIN PUBLIC KEY-----"; --format ${format})`);
      return createPublicKey({ key: text, format: "pem" });
    }
    if (format === "der") {
      if (text.includes("-----BEGIN")) throw new UsageError(`--${flag}: ${path} is PEM, not DER: use --format pem`);
      return createPublicKey({ key: data, format: "der", type: "spki" });
    }
    let jwk: unknown;
    try {
      jwk = JSON.parse(text);
    } catch {
      throw new UsageError(`--${flag}: ${path} is not JSON, so not a JWK (--format jwk)`);
    }
    if (typeof jwk !== "object" || jwk === null || typeof (jwk as { kty?: unknown }).kty !== "string") throw new UsageError(`--${flag}: ${path} is not a JWK (no "kty")`);
    if ("d" in jwk) throw new UsageError(`--${flag}: ${path} is a private JWK ("d"); give the public key only`);
    return createPublicKey({ key: jwk as import("node:crypto").JsonWebKey, format: "jwk" });
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`--${flag}: ${path} is not a valid ${format.toUpperCase()} public key: ${(err as Error).message}`);
  }
}

/** Guesses pem, jwk or der from the bytes. */
function sniffFormat(data: Buffer): "pem" | "der" | "jwk" {
  const head = data.subarray(0, 64).toString("latin1").trimStart();
  if (head.startsWith("-----BEGIN")) return "pem";
  if (head.startsWith("{")) return "jwk";
  return "der";
}

export const keyCommands: CommandSpec[] = [
  {
    words: ["key", "generate-symmetric"],
    summary: "generate a secret key (AES or HMAC) inside the HSM",
    options: {
      spec: { type: "string", arg: "SPEC", required: true, description: SYMMETRIC_SPECS.map((s) => keySpecs.name(s)).join(", ") },
      label: LABEL,
      usage: USAGE,
      exportable: EXPORTABLE,
      "request-id": REQUEST_ID,
    },
    examples: ["hsmctl key generate-symmetric --spec aes-256 --label records", "hsmctl key generate-symmetric --spec hmac-sha256 --label webhooks --request-id create-webhooks-1 -o json"],
    run: (ctx, values) => generate(ctx, values, true),
  },
  {
    words: ["key", "generate-asymmetric-pair"],
    summary: "generate a key pair (RSA, EC or Ed25519) inside the HSM",
    options: {
      spec: { type: "string", arg: "SPEC", required: true, description: ASYMMETRIC_SPECS.join(", ") },
      label: LABEL,
      usage: USAGE,
      exportable: EXPORTABLE,
      "request-id": REQUEST_ID,
    },
    examples: ["hsmctl key generate-asymmetric-pair --spec ec-p256 --label payments-signing"],
    run: (ctx, values) => generate(ctx, values, false),
  },
  {
    words: ["key", "list"],
    summary: "list the keys you own or that are shared with you (every page)",
    options: {
      "label-prefix": { type: "string", arg: "PREFIX", description: "only keys whose label starts with this" },
      spec: { type: "string", arg: "SPEC", description: "only keys of this spec" },
      usage: { type: "string", arg: "USAGE", description: "only keys with this usage" },
    },
    async run(ctx, values) {
      const specText = stringValue(values, "spec");
      const usageText = stringValue(values, "usage");
      const filter = {
        labelPrefix: stringValue(values, "label-prefix") ?? "",
        ...(specText !== undefined ? { spec: keySpecs.parse(specText, "--spec") } : {}),
        ...(usageText !== undefined ? { usage: keyUsages.parse(usageText, "--usage") } : {}),
      };
      const keys: Key[] = [];
      for await (const k of ctx.client().listAllKeys(filter)) keys.push(k);
      ctx.emit({ keys: keys.map(keyView) }, keysText(keys));
    },
  },
  {
    words: ["key", "get"],
    summary: "show a key's metadata",
    options: { "key-id": KEY_ID },
    async run(ctx, values) {
      const key = await ctx.client().getKey({ keyId: requireString(values, "key-id") });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["key", "delete"],
    summary: "delete a key you own and destroy its HSM objects (may need a quorum)",
    options: { "key-id": KEY_ID, "quorum-request-id": QUORUM },
    async run(ctx, values) {
      const keyId = requireString(values, "key-id");
      await ctx.client().deleteKey({ keyId, quorumRequestId: stringValue(values, "quorum-request-id") ?? "" });
      ctx.emit({ keyId, deleted: true }, `deleted key ${keyId}`);
    },
  },
  {
    words: ["key", "share"],
    summary: "let another crypto user use a key you own (may need a quorum)",
    options: { "key-id": KEY_ID, username: { type: "string", arg: "NAME", required: true, description: "the crypto user to share with" }, "quorum-request-id": QUORUM },
    async run(ctx, values) {
      const key = await ctx.client().shareKey({
        keyId: requireString(values, "key-id"),
        username: requireString(values, "username"),
        quorumRequestId: stringValue(values, "quorum-request-id") ?? "",
      });
      ctx.emit(keyView(key), `shared ${key.id} with ${requireString(values, "username")} (now shared with: ${key.sharedWith.join(", ") || "nobody"})`);
    },
  },
  {
    words: ["key", "unshare"],
    summary: "stop sharing a key you own with a crypto user",
    options: { "key-id": KEY_ID, username: { type: "string", arg: "NAME", required: true, description: "the crypto user" } },
    async run(ctx, values) {
      const key = await ctx.client().unshareKey({ keyId: requireString(values, "key-id"), username: requireString(values, "username") });
      ctx.emit(keyView(key), `unshared ${key.id} from ${requireString(values, "username")} (now shared with: ${key.sharedWith.join(", ") || "nobody"})`);
    },
  },
  {
    words: ["key", "public-key"],
    summary: "export an asymmetric key's public key as PEM, DER (SPKI) or JWK",
    details: `PEM and JWK are text and go to stdout without --out; DER is binary (the rules of --out apply).
With --output json and no --out the answer is {"keyId", "format", and "pem", "jwk" (an object) or
"der" (base64)}.`,
    options: {
      "key-id": KEY_ID,
      format: { type: "string", arg: "FORMAT", description: "pem (default), der or jwk" },
      out: { type: "string", arg: "FILE", description: "write it to FILE (- for stdout)" },
      "key-version": { type: "string", arg: "N", description: "that version's public key (default: the primary version; see key versions)" },
    },
    examples: ["hsmctl key public-key --key-id K --out pub.pem && openssl pkey -pubin -in pub.pem -noout -text"],
    async run(ctx, values) {
      const keyId = requireString(values, "key-id");
      const format = choiceValue(values, "format", ["pem", "der", "jwk"] as const, "pem");
      const out = stringValue(values, "out");
      const pub = await ctx.client().getPublicKey({ keyId, version: intValue(values, "key-version", 0, 1, 2 ** 31) });
      if (format === "der") {
        await deliverBytes(ctx, values, "der", Buffer.from(pub.spkiDer), { keyId, format }, "public key (DER)");
        return;
      }
      const text = format === "pem" ? pub.pem : `${JSON.stringify(JSON.parse(pub.jwk), null, 2)}\n`;
      if (out !== undefined && out !== "-") {
        await writeOutputFile(out, text);
        ctx.emit({ keyId, format, out, bytes: Buffer.byteLength(text) }, `public key (${format.toUpperCase()}) of ${keyId} written to ${out}`);
      } else if (out === undefined && ctx.output === "json") {
        ctx.emit({ keyId, format, [format]: format === "jwk" ? JSON.parse(pub.jwk) : pub.pem }, "");
      } else {
        await writeStdout(ctx.io, text.endsWith("\n") ? text : `${text}\n`);
      }
    },
  },
  {
    words: ["key", "import-public"],
    summary: "import a public key only (PEM, DER SPKI or JWK), for verify, encrypt or wrap",
    options: {
      in: { type: "string", arg: "FILE", required: true, description: "the public key file (- for stdin)" },
      format: { type: "string", arg: "FORMAT", description: "pem, der or jwk (default: guessed from the file)" },
      label: LABEL,
      usage: { ...USAGE, description: "verify (default), encrypt, wrap; repeat or give a comma list" },
      "request-id": REQUEST_ID,
    },
    examples: ["openssl pkey -in key.pem -pubout -out pub.pem && hsmctl key import-public --in pub.pem --format pem --label partner-verify"],
    async run(ctx, values) {
      const path = requireString(values, "in");
      const label = requireString(values, "label");
      const formatText = stringValue(values, "format");
      const data = await readInput(ctx.io, path, "in");
      if (data.length === 0) throw new UsageError(`--in: ${path} is empty`);
      const format = formatText === undefined ? sniffFormat(data) : choiceValue(values, "format", ["pem", "der", "jwk"] as const);
      checkPublicKey(data, format, path, "in");
      const key = await ctx.client().importPublicKey({
        format: { pem: PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM, der: PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER, jwk: PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK }[format],
        publicKey: data,
        label,
        usages: parseUsages(values.usage as string[] | undefined),
        requestId: stringValue(values, "request-id") ?? "",
      });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["key", "import"],
    summary: "import your own secret or private key (BYOK), wrapped on this machine before it is sent",
    details: `Reads the key material, fetches the daemon's import key (GetImportParameters) and wraps the material
here with it (RSA-OAEP of a fresh AES-256 key, then AES-KWP of the material; docs/IMPORT.md), so the
key never crosses the network in the clear. The daemon unwraps it inside the HSM.
  AES and HMAC (--spec aes-128, aes-256, hmac-*): --in holds the raw key bytes (16 or 32 for AES).
  RSA and EC (--spec rsa-*, ec-*): --in holds the private key as PEM (PKCS#8 "PRIVATE KEY", SEC1
  "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY") or DER; it is sent as PKCS#8 with its public key,
  and the daemon proves the two match. The key's type and size must match --spec.`,
    options: {
      spec: { type: "string", arg: "SPEC", required: true, description: "the key's kind and size (aes-256, ec-p256, rsa-2048, …)" },
      in: { type: "string", arg: "FILE", required: true, description: "the key material (- for stdin)" },
      label: LABEL,
      usage: USAGE,
      exportable: EXPORTABLE,
      "request-id": REQUEST_ID,
    },
    examples: [
      "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem && hsmctl key import --spec ec-p256 --in ec.pem --label imported-signer",
      "openssl rand 32 > aes.key && hsmctl key import --spec aes-256 --in aes.key --label imported-aes && shred -u aes.key",
    ],
    async run(ctx, values) {
      const spec = keySpecs.parse(requireString(values, "spec"), "--spec");
      const path = requireString(values, "in");
      const label = requireString(values, "label");
      const usages = parseUsages(values.usage as string[] | undefined);
      const data = await readInput(ctx.io, path, "in");
      let material: Buffer;
      let publicKeySpki: Buffer = Buffer.alloc(0);
      try {
        if (data.length === 0) throw new UsageError(`--in: ${path} is empty`);
        if (isSymmetric(spec)) {
          if (data.subarray(0, 64).toString("latin1").includes("-----BEGIN")) {
            throw new UsageError(`--in: ${path} is PEM; --spec ${keySpecs.name(spec)} takes the raw key bytes`);
          }
          const want = spec === KeySpec.KEY_SPEC_AES_128 ? 16 : spec === KeySpec.KEY_SPEC_AES_256 ? 32 : undefined;
          if (want !== undefined && data.length !== want) {
            throw new UsageError(`--in: ${path} holds ${data.length} bytes; --spec ${keySpecs.name(spec)} needs exactly ${want} raw bytes`);
          }
          material = data;
        } else {
          const privateKey = parsePrivateKey(data, path);
          const mismatch = specMismatch(privateKey, spec);
          if (mismatch) throw new UsageError(`--in: ${path} holds ${mismatch}, which is not --spec ${keySpecs.name(spec)}`);
          material = privateKey.export({ format: "der", type: "pkcs8" });
          publicKeySpki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
        }
      } catch (err) {
        data.fill(0);
        throw err;
      }
      try {
        const client = ctx.client();
        const params = await client.getImportParameters();
        const wrapped = wrapForImport(Buffer.from(params.publicKeySpki), material, params.wrappingAlgorithm || undefined);
        const key = await client.importKey({
          spec,
          label,
          usages,
          exportable: values.exportable === true,
          importKeyId: params.importKeyId,
          wrappedKeyMaterial: wrapped,
          publicKeySpki,
          requestId: stringValue(values, "request-id") ?? "",
        });
        ctx.emit(keyView(key), keyText(key));
      } finally {
        material.fill(0);
        data.fill(0);
      }
    },
  },
];
