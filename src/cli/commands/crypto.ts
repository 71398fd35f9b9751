/** `crypto …`: sign, verify, encrypt, decrypt, wrap, unwrap and random, in the HSM, over files or stdin/stdout. */
import { EncryptionAlgorithm, MessageType, SignatureFormat, type HsmClient, type KeySpec } from "../../sdk";
import { CliFailure, UsageError } from "../errors";
import { deliverBytes, ENCODING_OPTION, OUT_OPTION, readInput, writeOutputFile } from "../io";
import { defaultEncryptionAlgorithm, defaultSigningAlgorithm, defaultWrapAlgorithm, encryptionAlgorithms, isEcdsa, keySpecs, parseUsages, signingAlgorithms, wrapAlgorithms } from "../names";
import { DEFAULT_MAX_MESSAGE_BYTES, digestHashOf, hashInput, readBoundedInput } from "../message-input";
import { keyText, keyView } from "../render";
import { choiceValue, intValue, requireString, stringValue, type CommandContext, type CommandSpec, type OptionSpec, type Values } from "../spec";
import { checkPublicKey } from "./key";
import { envelopeCommands } from "./envelope";
import { reEncryptCommands, textOrFile } from "./re-encrypt";

const KEY_ID: OptionSpec = { type: "string", arg: "ID", required: true, description: "the key's id, or alias/NAME" };
const IN: OptionSpec = { type: "string", arg: "FILE", required: true, description: "the input (- for stdin)" };

/** Magic of hsmctl's ciphertext file (see `crypto encrypt --help`). */
const CIPHERTEXT_MAGIC = Buffer.from("HCE1", "ascii");

/** `HCE1 | algorithm (1 byte) | IV length (1 byte) | IV | ciphertext`. */
export function packCiphertext(algorithm: EncryptionAlgorithm, iv: Buffer, ciphertext: Buffer): Buffer {
  return Buffer.concat([CIPHERTEXT_MAGIC, Buffer.from([algorithm, iv.length]), iv, ciphertext]);
}

/** The parts of an `HCE1` file, or undefined when `data` is not one. */
export function unpackCiphertext(data: Buffer): { algorithm: EncryptionAlgorithm; iv: Buffer; ciphertext: Buffer } | undefined {
  if (data.length < 6 || !data.subarray(0, 4).equals(CIPHERTEXT_MAGIC)) return undefined;
  const algorithm = data[4]! as EncryptionAlgorithm;
  const ivLength = data[5]!;
  if (data.length < 6 + ivLength) return undefined;
  return { algorithm, iv: data.subarray(6, 6 + ivLength), ciphertext: data.subarray(6 + ivLength) };
}

async function specOf(client: HsmClient, keyId: string): Promise<KeySpec> {
  return (await client.getKey({ keyId })).spec;
}

/** --aad TEXT or --aad-file FILE (AES-GCM's additional authenticated data). */
const aadOf = (ctx: CommandContext, values: Values) => textOrFile(ctx, values, "aad");
const oaepLabelOf = (ctx: CommandContext, values: Values) => textOrFile(ctx, values, "oaep-label");

const AAD_OPTIONS: Record<string, OptionSpec> = {
  aad: { type: "string", arg: "TEXT", description: "AES-GCM additional authenticated data, as UTF-8 text (must be given again to decrypt)" },
  "aad-file": { type: "string", arg: "FILE", description: "the same, read from a file" },
};

const OAEP_LABEL_OPTIONS: Record<string, OptionSpec> = {
  "oaep-label": { type: "string", arg: "TEXT", description: "RSA-OAEP label (PKCS#1 v2.2 section 7.1), as UTF-8 text (must be given again to decrypt); default empty" },
  "oaep-label-file": { type: "string", arg: "FILE", description: "the same, read from a file" },
};

interface SignInputs {
  keyId: string;
  algorithm: number;
  message: Buffer;
  messageType: MessageType;
  signatureFormat: SignatureFormat;
  /** HMAC only: the tag's length in bytes; 0 for the full tag. */
  macLength: number;
}

async function signInputs(ctx: CommandContext, values: Values): Promise<SignInputs> {
  const keyId = requireString(values, "key-id");
  const path = requireString(values, "in");
  const algorithmText = stringValue(values, "algorithm");
  let algorithm = algorithmText === undefined ? undefined : signingAlgorithms.parse(algorithmText, "--algorithm");
  const format = choiceValue(values, "format", ["der", "raw"] as const, "der");
  const maxMessage = intValue(values, "max-message-bytes", DEFAULT_MAX_MESSAGE_BYTES, 1, 16 * 1024 * 1024);
  // The daemon checks the algorithm and the range (16 up to the hash length): one place decides.
  const macLength = intValue(values, "mac-length", 0, 1, 64);
  if (algorithm === undefined) {
    const spec = await specOf(ctx.client(), keyId);
    algorithm = defaultSigningAlgorithm(spec);
    if (algorithm === undefined) throw new UsageError(`key ${keyId} is ${keySpecs.name(spec)}: it cannot sign (give --algorithm to insist)`);
  }
  if (format === "raw" && !isEcdsa(algorithm)) {
    throw new UsageError(`--format raw is for ECDSA signatures; ${signingAlgorithms.name(algorithm)} has one format`);
  }
  // The message is hashed here and its digest sent, so any size works; what has no digest form is sent whole.
  const hash = digestHashOf(algorithm);
  let message: Buffer;
  let digest = values.digest === true;
  if (digest) message = await readInput(ctx.io, path, "in");
  else if (hash !== undefined) {
    message = await hashInput(ctx.io, path, "in", hash);
    digest = true;
  } else message = await readBoundedInput(ctx.io, path, "in", maxMessage, signingAlgorithms.name(algorithm));
  return {
    keyId,
    algorithm,
    message,
    messageType: digest ? MessageType.MESSAGE_TYPE_DIGEST : MessageType.MESSAGE_TYPE_RAW,
    signatureFormat: format === "raw" ? SignatureFormat.SIGNATURE_FORMAT_RAW : SignatureFormat.SIGNATURE_FORMAT_DER,
    macLength,
  };
}

const SIGN_OPTIONS: Record<string, OptionSpec> = {
  "key-id": KEY_ID,
  in: { ...IN, description: "the message (- for stdin), any size: hashed here and its digest sent (ed25519, HMAC and AES-CMAC: sent whole); with --digest, its digest" },
  algorithm: {
    type: "string",
    arg: "ALG",
    description: `default from the key: ecdsa-sha256/384/512 by curve, rsa-pkcs1-sha256, ed25519, hmac-sha*.
One of: ${signingAlgorithms.names.join(", ")}`,
  },
  digest: { type: "boolean", description: "--in holds the digest of the algorithm's hash, not the message (not for ed25519, HMAC or AES-CMAC)" },
  format: { type: "string", arg: "FORMAT", description: "ECDSA signature encoding: der (ASN.1, as OpenSSL; default) or raw (r||s, as JOSE/WebCrypto)" },
  "mac-length": {
    type: "string",
    arg: "N",
    description: "HMAC only: a tag truncated to its leftmost N bytes (16 up to the hash length, as RFC 2104 section 5 and KMS allow); verify compares that many. Default: the full tag",
  },
  "max-message-bytes": {
    type: "string",
    arg: "N",
    description: `ed25519, HMAC and AES-CMAC only (sent whole): refuse a larger --in before sending. Default ${DEFAULT_MAX_MESSAGE_BYTES}, the daemon's default limits.maxPayloadBytes`,
  },
};

const SIGN_DETAILS = `For ECDSA, RSA PKCS#1 v1.5 and RSA-PSS the message is hashed here with the algorithm's hash, read in
chunks, and only the digest is sent (message type DIGEST, as openssl dgst does): a file of any size
signs, and the signature is the one over the whole message (openssl dgst -verify checks it against
the file). Ed25519 (PureEdDSA), HMAC and AES-CMAC have no digest form: the message is sent whole, and one over
the daemon's message limit (limits.maxPayloadBytes, 64 KiB by default) is refused before sending.`;

const cryptoCore: CommandSpec[] = [
  {
    words: ["crypto", "sign"],
    summary: "sign a message (or digest) with a private key, or compute an HMAC",
    details: SIGN_DETAILS,
    options: { ...SIGN_OPTIONS, out: OUT_OPTION, encoding: ENCODING_OPTION },
    examples: [
      "hsmctl crypto sign --key-id K --in msg --out sig.der && openssl dgst -sha256 -verify pub.pem -signature sig.der msg",
      "printf hello | hsmctl crypto sign --key-id K --in - --format raw --encoding base64",
    ],
    async run(ctx, values) {
      const req = await signInputs(ctx, values);
      const { signature } = await ctx.client().sign(req);
      await deliverBytes(ctx, values, "signature", Buffer.from(signature), { keyId: req.keyId, algorithm: signingAlgorithms.name(req.algorithm) }, "signature");
    },
  },
  {
    words: ["crypto", "verify"],
    summary: "verify a signature or HMAC in the HSM (exit 0 valid, 1 invalid)",
    details: SIGN_DETAILS,
    options: { ...SIGN_OPTIONS, signature: { type: "string", arg: "FILE", required: true, description: "the signature, raw bytes (as crypto sign --out writes it)" } },
    async run(ctx, values) {
      const sigPath = requireString(values, "signature");
      const req = await signInputs(ctx, values);
      const signature = await readInput(ctx.io, sigPath, "signature");
      const { valid } = await ctx.client().verify({ ...req, signature });
      const algorithm = signingAlgorithms.name(req.algorithm);
      if (!valid) {
        if (ctx.output === "json") ctx.emit({ keyId: req.keyId, algorithm, valid }, "");
        throw new CliFailure(undefined, `signature INVALID (key ${req.keyId}, ${algorithm})`);
      }
      ctx.emit({ keyId: req.keyId, algorithm, valid }, `signature valid (key ${req.keyId}, ${algorithm})`);
    },
  },
  {
    words: ["crypto", "encrypt"],
    summary: "encrypt with a key in the HSM (AES-GCM, AES-CBC-PAD, AES-CTR, RSA-OAEP)",
    details: `The output is an hsmctl ciphertext file that carries the algorithm and IV:
  "HCE1" (4 bytes) | algorithm (1 byte: 1 aes-gcm, 2 aes-cbc-pad, 3 aes-ctr, 4-7 rsa-oaep-sha256,
  -sha384, -sha512, -sha1) | IV length L (1 byte; 0 for RSA) | IV (L bytes) | ciphertext
  (for AES-GCM the ciphertext is followed by its 16-byte tag).
crypto decrypt reads it as it is. With --iv-out FILE the IV goes to FILE and the output is the bare
ciphertext (decrypt it with --iv FILE). With --output json and no --out the answer holds "iv" and
"ciphertext" in base64. AES-GCM IVs are always chosen by the service.`,
    options: {
      "key-id": KEY_ID,
      in: { ...IN, description: "the plaintext (- for stdin)" },
      algorithm: { type: "string", arg: "ALG", description: `default: aes-gcm for AES keys, rsa-oaep-sha256 for RSA. One of: ${encryptionAlgorithms.names.join(", ")}` },
      ...AAD_OPTIONS,
      ...OAEP_LABEL_OPTIONS,
      "iv-out": { type: "string", arg: "FILE", description: "write the IV to FILE and the bare ciphertext to --out" },
      blob: { type: "boolean", description: "AES: write the self-describing ciphertext (names key, version, IV; docs/CIPHERTEXT.md) instead of HCE1" },
      out: OUT_OPTION,
      encoding: ENCODING_OPTION,
    },
    examples: ["hsmctl crypto encrypt --key-id K --in secret.txt --out secret.hce --aad record-42", "hsmctl crypto decrypt --key-id K --in secret.hce --out secret.txt --aad record-42"],
    async run(ctx, values) {
      const keyId = requireString(values, "key-id");
      const path = requireString(values, "in");
      const algorithmText = stringValue(values, "algorithm");
      const ivOut = stringValue(values, "iv-out");
      const aad = await aadOf(ctx, values);
      const oaepLabel = await oaepLabelOf(ctx, values);
      const plaintext = await readInput(ctx.io, path, "in");
      const client = ctx.client();
      let algorithm = algorithmText === undefined ? undefined : encryptionAlgorithms.parse(algorithmText, "--algorithm");
      if (algorithm === undefined) {
        const spec = await specOf(client, keyId);
        algorithm = defaultEncryptionAlgorithm(spec);
        if (algorithm === undefined) throw new UsageError(`key ${keyId} is ${keySpecs.name(spec)}: it cannot encrypt`);
      }
      if (aad.length > 0 && algorithm !== EncryptionAlgorithm.ENCRYPTION_ALGORITHM_AES_GCM) throw new UsageError("--aad and --aad-file are for aes-gcm only");
      const res = await client.encrypt({ keyId, algorithm, plaintext, aad, oaepLabel });
      if (values["blob"] === true) {
        if (res.ciphertextBlob.length === 0) throw new UsageError("--blob is for AES keys (RSA-OAEP ciphertexts have no self-describing form)");
        return void (await deliverBytes(
          ctx,
          values,
          "ciphertext",
          Buffer.from(res.ciphertextBlob),
          { keyId, algorithm: encryptionAlgorithms.name(algorithm), keyVersion: res.keyVersion },
          "ciphertext",
        ));
      }
      const iv = Buffer.from(res.iv);
      const ciphertext = Buffer.from(res.ciphertext);
      const name = encryptionAlgorithms.name(algorithm);
      if (ivOut !== undefined) {
        await writeOutputFile(ivOut, iv, "iv-out");
        await deliverBytes(ctx, values, "ciphertext", ciphertext, { keyId, algorithm: name, ivOut }, "ciphertext");
      } else if (stringValue(values, "out") === undefined && ctx.output === "json") {
        ctx.emit({ keyId, algorithm: name, iv: iv.toString("base64"), ciphertext: ciphertext.toString("base64") }, "");
      } else {
        await deliverBytes(ctx, values, "ciphertext", packCiphertext(algorithm, iv, ciphertext), { keyId, algorithm: name }, "ciphertext");
      }
    },
  },
  {
    words: ["crypto", "decrypt"],
    summary: "decrypt with a key in the HSM (an hsmctl ciphertext file, or a bare ciphertext with --iv)",
    details: `--in is the file crypto encrypt wrote (its header names the algorithm and IV; with --blob the key
version too), or with --iv FILE a
bare ciphertext (for AES-GCM followed by its tag). RSA-OAEP ciphertexts need no IV. A ciphertext, tag
or AAD that does not match fails with the server's error and writes nothing.`,
    options: {
      "key-id": KEY_ID,
      in: { ...IN, description: "the ciphertext (- for stdin)" },
      algorithm: { type: "string", arg: "ALG", description: "default: the file's, else by key (aes-gcm, rsa-oaep-sha256)" },
      iv: { type: "string", arg: "FILE", description: "the IV, raw bytes (for a bare AES ciphertext)" },
      ...AAD_OPTIONS,
      ...OAEP_LABEL_OPTIONS,
      out: OUT_OPTION,
      encoding: ENCODING_OPTION,
    },
    async run(ctx, values) {
      const keyId = requireString(values, "key-id");
      const path = requireString(values, "in");
      const algorithmText = stringValue(values, "algorithm");
      const ivPath = stringValue(values, "iv");
      let algorithm = algorithmText === undefined ? undefined : encryptionAlgorithms.parse(algorithmText, "--algorithm");
      const aad = await aadOf(ctx, values);
      const oaepLabel = await oaepLabelOf(ctx, values);
      const data = await readInput(ctx.io, path, "in");
      if (ivPath === undefined && algorithm === undefined && data.subarray(0, 4).toString("latin1") === "hsm1") {
        // A self-describing ciphertext (crypto encrypt --blob): its header names key version, algorithm and IV.
        const { plaintext, keyVersion } = await ctx.client().decrypt({ keyId, ciphertextBlob: data, aad });
        return void (await deliverBytes(ctx, values, "plaintext", Buffer.from(plaintext), { keyId, keyVersion }, "plaintext"));
      }
      let iv: Buffer;
      let ciphertext: Buffer;
      const packed = ivPath === undefined ? unpackCiphertext(data) : undefined;
      if (packed) {
        if (algorithm !== undefined && algorithm !== packed.algorithm) {
          throw new UsageError(`--algorithm ${encryptionAlgorithms.name(algorithm)} but ${path} was encrypted with ${encryptionAlgorithms.name(packed.algorithm)}`);
        }
        ({ algorithm, iv, ciphertext } = packed);
      } else {
        iv = ivPath === undefined ? Buffer.alloc(0) : await readInput(ctx.io, ivPath, "iv");
        ciphertext = data;
      }
      const client = ctx.client();
      if (algorithm === undefined) {
        const spec = await specOf(client, keyId);
        algorithm = defaultEncryptionAlgorithm(spec);
        if (algorithm === undefined) throw new UsageError(`key ${keyId} is ${keySpecs.name(spec)}: it cannot decrypt`);
      }
      const isRsa = encryptionAlgorithms.name(algorithm).startsWith("rsa-");
      if (!packed && !isRsa && ivPath === undefined) {
        throw new UsageError(`--in: ${path} is not an hsmctl ciphertext file (no "HCE1" header): give --iv FILE for a bare ${encryptionAlgorithms.name(algorithm)} ciphertext`);
      }
      if (ciphertext.length === 0) throw new UsageError(`--in: ${path} holds no ciphertext`);
      const { plaintext } = await client.decrypt({ keyId, algorithm, ciphertext, iv, aad, oaepLabel });
      await deliverBytes(ctx, values, "plaintext", Buffer.from(plaintext), { keyId, algorithm: encryptionAlgorithms.name(algorithm) }, "plaintext");
    },
  },
  {
    words: ["crypto", "wrap"],
    summary: "wrap an exportable key you own under another key (its owner only)",
    options: {
      "wrapping-key-id": { type: "string", arg: "ID", required: true, description: "the key to wrap under (AES with wrap usage, or an RSA public key)" },
      "key-id": { ...KEY_ID, description: "the key to wrap out (must be exportable)" },
      algorithm: { type: "string", arg: "ALG", description: `default: aes-kwp under AES, rsa-oaep-sha256 under RSA. One of: ${wrapAlgorithms.names.join(", ")}` },
      out: OUT_OPTION,
      encoding: ENCODING_OPTION,
    },
    async run(ctx, values) {
      const wrappingKeyId = requireString(values, "wrapping-key-id");
      const keyId = requireString(values, "key-id");
      const algorithmText = stringValue(values, "algorithm");
      const client = ctx.client();
      let algorithm = algorithmText === undefined ? undefined : wrapAlgorithms.parse(algorithmText, "--algorithm");
      if (algorithm === undefined) {
        const spec = await specOf(client, wrappingKeyId);
        algorithm = defaultWrapAlgorithm(spec);
        if (algorithm === undefined) throw new UsageError(`key ${wrappingKeyId} is ${keySpecs.name(spec)}: it cannot wrap`);
      }
      const { wrappedKey } = await client.wrapKey({ wrappingKeyId, keyId, algorithm });
      await deliverBytes(ctx, values, "wrappedKey", Buffer.from(wrappedKey), { wrappingKeyId, keyId, algorithm: wrapAlgorithms.name(algorithm) }, "wrapped key");
    },
  },
  {
    words: ["crypto", "unwrap"],
    summary: "unwrap a wrapped key blob into a new key",
    options: {
      "unwrapping-key-id": { type: "string", arg: "ID", required: true, description: "the key to unwrap with (AES with unwrap usage, or an RSA private key)" },
      in: { ...IN, description: "the wrapped key (- for stdin)" },
      algorithm: { type: "string", arg: "ALG", description: `default: aes-kwp under AES, rsa-oaep-sha256 under RSA. One of: ${wrapAlgorithms.names.join(", ")}` },
      spec: { type: "string", arg: "SPEC", required: true, description: "the kind of the key inside the blob" },
      label: { type: "string", arg: "LABEL", required: true, description: "a name for the new key" },
      usage: { type: "string", arg: "USAGE", multiple: true, description: "the new key's usages (repeat or comma list; default: the kind's)" },
      exportable: { type: "boolean", description: "make the new key exportable" },
      "public-key": { type: "string", arg: "FILE", description: "for a private key: its public key (PEM or DER SPKI); the service proves they match" },
      "request-id": { type: "string", arg: "ID", description: "idempotency token" },
    },
    async run(ctx, values) {
      const unwrappingKeyId = requireString(values, "unwrapping-key-id");
      const path = requireString(values, "in");
      const spec = keySpecs.parse(requireString(values, "spec"), "--spec");
      const label = requireString(values, "label");
      const usages = parseUsages(values.usage as string[] | undefined);
      const algorithmText = stringValue(values, "algorithm");
      const pubPath = stringValue(values, "public-key");
      const wrappedKey = await readInput(ctx.io, path, "in");
      if (wrappedKey.length === 0) throw new UsageError(`--in: ${path} is empty`);
      let publicKeySpki = Buffer.alloc(0);
      if (pubPath !== undefined) {
        const pub = await readInput(ctx.io, pubPath, "public-key");
        const format = pub.subarray(0, 64).toString("latin1").includes("-----BEGIN") ? "pem" : "der";
        publicKeySpki = checkPublicKey(pub, format, pubPath, "public-key").export({ format: "der", type: "spki" });
      }
      const client = ctx.client();
      let algorithm = algorithmText === undefined ? undefined : wrapAlgorithms.parse(algorithmText, "--algorithm");
      if (algorithm === undefined) {
        const ks = await specOf(client, unwrappingKeyId);
        algorithm = defaultWrapAlgorithm(ks);
        if (algorithm === undefined) throw new UsageError(`key ${unwrappingKeyId} is ${keySpecs.name(ks)}: it cannot unwrap`);
      }
      const key = await client.unwrapKey({
        unwrappingKeyId,
        algorithm,
        wrappedKey,
        spec,
        label,
        usages,
        exportable: values.exportable === true,
        publicKeySpki,
        requestId: stringValue(values, "request-id") ?? "",
      });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["crypto", "random"],
    summary: "random bytes from the HSM's generator",
    options: {
      length: { type: "string", arg: "N", required: true, description: "how many bytes (1 to 1048576; the daemon may allow fewer)" },
      out: OUT_OPTION,
      encoding: ENCODING_OPTION,
    },
    examples: ["hsmctl crypto random --length 32 --encoding hex", "hsmctl crypto random --length 32 --out seed.bin"],
    async run(ctx, values) {
      if (values.length === undefined) throw new UsageError("--length is required");
      const length = intValue(values, "length", 0, 1, 1_048_576);
      const { random } = await ctx.client().generateRandom({ length });
      await deliverBytes(ctx, values, "random", Buffer.from(random), { length }, "random bytes");
    },
  },
];

export const cryptoCommands: CommandSpec[] = [...cryptoCore, ...envelopeCommands, ...reEncryptCommands];
