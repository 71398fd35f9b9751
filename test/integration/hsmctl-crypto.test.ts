/**
 * hsmctl end to end, crypto: the BUILT CLI (`node dist/src/cli/main.js`, compiled in beforeAll) as a
 * child process against a real daemon on a SoftHSM2 token; sign, verify, encrypt, decrypt, wrap,
 * random and envelope encryption, checked with openssl and Node's crypto, and the bad-input messages.
 * Moved verbatim from hsmctl-keys.test.ts (names kept under "keys"), which keeps key management; the
 * keys used here are made in beforeAll by generateCliKeys. Every stdout and stderr is searched after
 * the tests for passwords and session tokens. The daemon, the users and the runner: test/helpers/hsmctl.ts.
 */
import { constants as cryptoConstants, createHash, createPublicKey, publicEncrypt, verify as nodeVerify } from "node:crypto";
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { dir, file, generateCliKeys, hsmctl, json, ok, opensslOk, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

describe("keys", () => {
  const ids: Record<string, string> = {};
  beforeAll(async () => {
    Object.assign(ids, await generateCliKeys());
  }, 120_000);

  describe("crypto", () => {
    it("sign: ECDSA (DER and raw), RSA and Ed25519 signatures verified by openssl; stdin and stdout", async () => {
      writeFileSync(file("msg"), "the message to sign\n");
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--out", "ec-sig.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "ec-sig.der", "msg"])).toContain("Verified OK");

      await ok(["key", "public-key", "--key-id", ids.rsa!, "--out", "rsa-pub.pem"]);
      const rsaSig = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--in", "-", "--out", "-"], { input: readFileSync(file("msg")) });
      writeFileSync(file("rsa-sig.bin"), rsaSig.out);
      expect(rsaSig.out.length).toBe(256);
      expect(opensslOk(["dgst", "-sha256", "-verify", "rsa-pub.pem", "-signature", "rsa-sig.bin", "msg"])).toContain("Verified OK");
      const pss = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--algorithm", "rsa-pss-sha256", "--in", "msg"]);
      writeFileSync(file("rsa-pss.bin"), pss.out);
      expect(opensslOk(["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-verify", "rsa-pub.pem", "-signature", "rsa-pss.bin", "msg"])).toContain("Verified OK");

      await ok(["crypto", "sign", "--key-id", ids.ed!, "--in", "msg", "--out", "ed-sig.bin"]);
      expect(opensslOk(["pkeyutl", "-verify", "-pubin", "-inkey", "ed-pub.pem", "-rawin", "-in", "msg", "-sigfile", "ed-sig.bin"])).toContain("Signature Verified Successfully");

      const raw = await json<{ signature: string; algorithm: string }>(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--format", "raw"]);
      expect(raw.algorithm).toBe("ecdsa-sha256");
      const rs = Buffer.from(raw.signature, "base64");
      expect(rs.length).toBe(64);
      expect(nodeVerify("sha256", readFileSync(file("msg")), { key: createPublicKey(readFileSync(file("ec-pub.pem"))), dsaEncoding: "ieee-p1363" }, rs)).toBe(true);
      writeFileSync(file("ec-sig.raw"), rs);
      await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "ec-sig.raw", "--format", "raw"]);

      const digest = createHash("sha256")
        .update(readFileSync(file("msg")))
        .digest();
      writeFileSync(file("msg.sha256"), digest);
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg.sha256", "--digest", "--out", "ec-digest-sig.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "ec-digest-sig.der", "msg"])).toContain("Verified OK");

      const hex = await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--encoding", "hex"]);
      expect(hex.stdout).toMatch(/^[0-9a-f]{64}\n$/);
      const rawForRsa = await hsmctl(["crypto", "sign", "--key-id", ids.rsa!, "--in", "msg", "--format", "raw"]);
      expect(rawForRsa.code).toBe(2);
      expect(rawForRsa.stderr).toContain("--format raw is for ECDSA");
    });

    it("verify: exit 0 for a valid signature, 1 for an invalid one (text and JSON)", async () => {
      const good = await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "ec-sig.der"]);
      expect(good.stdout).toBe(`signature valid (key ${ids.ec}, ecdsa-sha256)\n`);
      writeFileSync(file("msg-tampered"), "the message to sign!\n");
      const bad = await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg-tampered", "--signature", "ec-sig.der"]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain("error: signature INVALID");
      const badJson = await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "msg-tampered", "--signature", "ec-sig.der", "-o", "json"]);
      expect(badJson.code).toBe(1);
      expect(JSON.parse(badJson.stdout)).toMatchObject({ valid: false });
      const hmacSig = await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--out", "hmac.bin"]);
      expect(hmacSig.stdout).toContain("32 bytes");
      expect(await json(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac.bin"])).toMatchObject({ valid: true, algorithm: "hmac-sha256" });
      // --mac-length: the leftmost bytes of the full tag, verified as such; a changed byte is invalid.
      await ok(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--mac-length", "16", "--out", "hmac16.bin"]);
      expect(readFileSync(file("hmac16.bin"))).toEqual(readFileSync(file("hmac.bin")).subarray(0, 16));
      expect(await json(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac16.bin", "--mac-length", "16"])).toMatchObject({ valid: true });
      const flipped = readFileSync(file("hmac16.bin"));
      flipped[15]! ^= 1;
      writeFileSync(file("hmac16-bad.bin"), flipped);
      expect((await hsmctl(["crypto", "verify", "--key-id", ids.hmac!, "--in", "msg", "--signature", "hmac16-bad.bin", "--mac-length", "16"])).code).toBe(1);
      // Under the floor, or on a key that is not HMAC: the daemon's INVALID_ARGUMENT, named.
      const short = await hsmctl(["crypto", "sign", "--key-id", ids.hmac!, "--in", "msg", "--mac-length", "8"]);
      expect(short.code).not.toBe(0);
      expect(short.stderr).toMatch(/INVALID_ARGUMENT.*mac_length/);
      const onEc = await hsmctl(["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--mac-length", "16"]);
      expect(onEc.code).not.toBe(0);
      expect(onEc.stderr).toMatch(/INVALID_ARGUMENT.*mac_length/);
    });

    it("sign and verify a 1 MiB file (over the 64 KiB message limit): hashed locally, checked by openssl; Ed25519 and HMAC refused before sending", async () => {
      const big = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
      writeFileSync(file("big.bin"), big);
      await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "big.bin", "--out", "big-ec.der"]);
      expect(opensslOk(["dgst", "-sha256", "-verify", "ec-pub.pem", "-signature", "big-ec.der", "big.bin"])).toContain("Verified OK");
      const valid = await ok(["crypto", "verify", "--key-id", ids.ec!, "--in", "big.bin", "--signature", "big-ec.der"]);
      expect(valid.stdout).toBe(`signature valid (key ${ids.ec}, ecdsa-sha256)\n`);
      const flipped = Buffer.from(big);
      flipped[big.length - 1]! ^= 1;
      writeFileSync(file("big-flipped.bin"), flipped);
      expect((await hsmctl(["crypto", "verify", "--key-id", ids.ec!, "--in", "big-flipped.bin", "--signature", "big-ec.der"])).code).toBe(1);
      // From stdin too, RSA-PSS: the same streaming hash.
      const pss = await ok(["crypto", "sign", "--key-id", ids.rsa!, "--algorithm", "rsa-pss-sha256", "--in", "-", "--out", "-"], { input: big });
      writeFileSync(file("big-pss.bin"), pss.out);
      expect(opensslOk(["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32", "-verify", "rsa-pub.pem", "-signature", "big-pss.bin", "big.bin"])).toContain(
        "Verified OK",
      );

      // Ed25519 (PureEdDSA) and HMAC sign the message itself: over the limit, refused here (exit 2) with why.
      for (const [id, name] of [
        [ids.ed!, "ed25519"],
        [ids.hmac!, "hmac-sha256"],
      ] as const) {
        const r = await hsmctl(["crypto", "sign", "--key-id", id, "--in", "big.bin"]);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain(`--in: big.bin holds 1048576 bytes (1.0 MiB); ${name} is computed over the whole message in the HSM`);
        expect(r.stderr).toContain("at most 65536 bytes (64.0 KiB) per message (its limits.maxPayloadBytes; if yours allows more, give --max-message-bytes)");
      }
      const piped = await hsmctl(["crypto", "verify", "--key-id", ids.hmac!, "--in", "-", "--signature", "hmac.bin"], { input: big });
      expect(piped.code).toBe(2);
      expect(piped.stderr).toContain("--in: - holds more than 65536 bytes; hmac-sha256 is computed over the whole message");
      // Lifting the client's check sends it: the daemon itself answers RESOURCE_EXHAUSTED (its limit is intact).
      const sent = await hsmctl(["crypto", "sign", "--key-id", ids.ed!, "--in", "big.bin", "--max-message-bytes", String(big.length)]);
      expect(sent.code).toBe(1);
      expect(sent.stderr).toContain("error: RESOURCE_EXHAUSTED: message is 1048576 bytes; the limit is 65536 (limits.maxPayloadBytes)");
      // At the limit it is sent whole, and openssl checks the Ed25519 signature over it.
      writeFileSync(file("limit.bin"), big.subarray(0, 65536));
      await ok(["crypto", "sign", "--key-id", ids.ed!, "--in", "limit.bin", "--out", "limit-ed.bin"]);
      expect(opensslOk(["pkeyutl", "-verify", "-pubin", "-inkey", "ed-pub.pem", "-rawin", "-in", "limit.bin", "-sigfile", "limit-ed.bin"])).toContain("Signature Verified Successfully");
    });

    it("encrypt and decrypt: AES-GCM with AAD in the HCE1 file, CBC with --iv-out, RSA-OAEP; a wrong AAD writes nothing", async () => {
      const plaintext = Buffer.from(Array.from({ length: 5000 }, (_, i) => i & 0xff));
      writeFileSync(file("plain.bin"), plaintext);
      expect((await ok(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "plain.bin", "--out", "plain.hce", "--aad", "record-42"])).stdout).toContain("written to plain.hce");
      const hce = readFileSync(file("plain.hce"));
      expect(hce.subarray(0, 4).toString()).toBe("HCE1");
      expect(hce[4]).toBe(1); // aes-gcm
      expect(hce[5]).toBe(12); // IV length
      await ok(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "plain.hce", "--out", "plain.out", "--aad", "record-42"]);
      expect(readFileSync(file("plain.out"))).toEqual(plaintext);
      const wrongAad = await hsmctl(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "plain.hce", "--out", "plain.bad", "--aad", "record-43"]);
      expect(wrongAad.code).toBe(1);
      expect(wrongAad.stderr).toMatch(/^error: INVALID_ARGUMENT: /);
      expect(existsSync(file("plain.bad"))).toBe(false);

      await ok(["crypto", "encrypt", "--key-id", ids.aes!, "--algorithm", "aes-cbc-pad", "--in", "plain.bin", "--iv-out", "cbc.iv", "--out", "cbc.bin"]);
      expect(readFileSync(file("cbc.iv")).length).toBe(16);
      expect(readFileSync(file("cbc.bin")).length).toBe(5008);
      const cbc = await ok(["crypto", "decrypt", "--key-id", ids.aes!, "--algorithm", "aes-cbc-pad", "--in", "cbc.bin", "--iv", "cbc.iv", "--out", "-"]);
      expect(cbc.out).toEqual(plaintext);
      const noIv = await hsmctl(["crypto", "decrypt", "--key-id", ids.aes!, "--in", "cbc.bin", "--out", "x"]);
      expect(noIv.code).toBe(2);
      expect(noIv.stderr).toContain('is not an hsmctl ciphertext file (no "HCE1" header)');

      const rsa = await ok(["crypto", "encrypt", "--key-id", ids.rsa!, "--in", "-", "--out", "rsa.hce"], { input: "to rsa" });
      expect(rsa.stdout).toContain("ciphertext:");
      const back = await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--in", "rsa.hce"]);
      expect(back.stdout).toBe("to rsa");
      // An OAEP label: Node's crypto encrypts under the public key with it; hsmctl decrypts only with it.
      const pub = createPublicKey(readFileSync(file("rsa-pub.pem")));
      writeFileSync(
        file("labelled.bin"),
        publicEncrypt({ key: pub, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256", oaepLabel: Buffer.from("invoice-7") }, Buffer.from("labelled")),
      );
      const withLabel = await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--algorithm", "rsa-oaep-sha256", "--in", "labelled.bin", "--oaep-label", "invoice-7"]);
      expect(withLabel.stdout).toBe("labelled");
      const noLabel = await hsmctl(["crypto", "decrypt", "--key-id", ids.rsa!, "--algorithm", "rsa-oaep-sha256", "--in", "labelled.bin"]);
      expect(noLabel.code).not.toBe(0);
      expect(noLabel.stdout).toBe("");
      await ok(["crypto", "encrypt", "--key-id", ids.rsa!, "--in", "-", "--out", "rsa-label.hce", "--oaep-label", "invoice-7"], { input: "round trip" });
      expect((await ok(["crypto", "decrypt", "--key-id", ids.rsa!, "--in", "rsa-label.hce", "--oaep-label", "invoice-7"])).stdout).toBe("round trip");
      const onAes = await hsmctl(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "-", "--oaep-label", "x"], { input: "x" });
      expect(onAes.code).not.toBe(0);
      expect(onAes.stderr).toMatch(/INVALID_ARGUMENT.*oaep_label/);
      const viaJson = await json<{ algorithm: string; iv: string; ciphertext: string }>(["crypto", "encrypt", "--key-id", ids.aes!, "--in", "-"], { input: "json" });
      expect(viaJson.algorithm).toBe("aes-gcm");
      expect(Buffer.from(viaJson.iv, "base64").length).toBe(12);
      expect(Buffer.from(viaJson.ciphertext, "base64").length).toBe(4 + 16);
    });

    it("wrap and unwrap: an exportable key wrapped out and back decrypts what the original encrypted", async () => {
      await ok(["crypto", "wrap", "--wrapping-key-id", ids.aes!, "--key-id", ids.exp!, "--out", "exp.wrapped"]);
      expect(readFileSync(file("exp.wrapped")).length).toBe(24);
      const unwrapped = await json<{ id: string; origin: string; spec: string }>([
        "crypto",
        "unwrap",
        "--unwrapping-key-id",
        ids.aes!,
        "--in",
        "exp.wrapped",
        "--spec",
        "aes-128",
        "--label",
        "cli-unwrapped",
      ]);
      expect(unwrapped).toMatchObject({ origin: "unwrapped", spec: "aes-128" });
      await ok(["crypto", "encrypt", "--key-id", ids.exp!, "--in", "-", "--out", "exp.hce"], { input: "same key" });
      expect((await ok(["crypto", "decrypt", "--key-id", unwrapped.id, "--in", "exp.hce"])).stdout).toBe("same key");
      const notExportable = await hsmctl(["crypto", "wrap", "--wrapping-key-id", ids.aes!, "--key-id", ids.hmac!, "--out", "x.wrapped"]);
      expect(notExportable.code).toBe(1);
      expect(notExportable.stderr).toMatch(/^error: [A-Z_]+: /);
    });

    it("random: hex, base64 JSON and a file", async () => {
      expect((await ok(["crypto", "random", "--length", "32", "--encoding", "hex"])).stdout).toMatch(/^[0-9a-f]{64}\n$/);
      const j = await json<{ random: string; length: number }>(["crypto", "random", "--length", "16"]);
      expect(Buffer.from(j.random, "base64").length).toBe(16);
      await ok(["crypto", "random", "--length", "48", "--out", "random.bin"]);
      expect(readFileSync(file("random.bin")).length).toBe(48);
      expect(statSync(file("random.bin")).mode & 0o777).toBe(0o600);
      const zero = await hsmctl(["crypto", "random", "--length", "0"]);
      expect(zero.code).toBe(2);
      expect(zero.stderr).toContain("--length: must be from 1");
    });

    it("envelope-encrypt and envelope-decrypt: a file across many frames round trips; damage, truncation and a wrong context write nothing", async () => {
      const data = Buffer.alloc(300_000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 8)) & 0xff;
      writeFileSync(file("big.bin"), data);
      const enc = await json<{ bytesIn: number; bytesOut: number; keyId: string }>([
        "crypto",
        "envelope-encrypt",
        "--in",
        "big.bin",
        "--out",
        "big.hsme",
        "--key-id",
        ids.aes!,
        "--context",
        "purpose=test",
        "--context",
        "owner=alice",
      ]);
      expect(enc).toMatchObject({ bytesIn: data.length, keyId: ids.aes });
      expect(enc.bytesOut).toBe(statSync(file("big.hsme")).size);
      const dec = await ok(["crypto", "envelope-decrypt", "--in", "big.hsme", "--out", "big.out", "--context", "purpose=test"]);
      expect(dec.stdout).toContain(`with key ${ids.aes}, context `);
      expect(readFileSync(file("big.out")).equals(data)).toBe(true);

      const piped = await ok(["crypto", "envelope-encrypt", "--in", "-", "--out", "-", "--key-id", ids.aes!], { input: "small, through pipes" });
      const back = await ok(["crypto", "envelope-decrypt", "--in", "-", "--out", "-"], { input: piped.out });
      expect(back.stdout).toBe("small, through pipes");
      await ok(["crypto", "envelope-encrypt", "--in", "-", "--out", "empty.hsme", "--key-id", ids.aes!], { input: "" });
      await ok(["crypto", "envelope-decrypt", "--in", "empty.hsme", "--out", "empty.out"]);
      expect(readFileSync(file("empty.out")).length).toBe(0);

      const msg = readFileSync(file("big.hsme"));
      const flipped = Buffer.from(msg);
      flipped[200_000] ^= 0x01;
      writeFileSync(file("big.flipped"), flipped);
      writeFileSync(file("big.truncated"), msg.subarray(0, msg.length - 100));
      const results = await Promise.all([
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.flipped", "--out", "out.flipped"]),
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.truncated", "--out", "out.truncated"]),
        hsmctl(["crypto", "envelope-decrypt", "--in", "big.hsme", "--out", "out.context", "--context", "purpose=other"]),
      ]);
      for (const [r, out] of [
        [results[0]!, "out.flipped"],
        [results[1]!, "out.truncated"],
        [results[2]!, "out.context"],
      ] as const) {
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toMatch(/^error: INVALID_ARGUMENT: envelope: /);
        expect(r.stderr).toContain(`nothing written to ${out}`);
        expect(existsSync(file(out))).toBe(false);
      }
      expect(readdirSync(dir).filter((f) => f.endsWith(".partial"))).toEqual([]);
      const missing = await hsmctl(["crypto", "envelope-encrypt", "--in", "no-such-file", "--out", "x.hsme", "--key-id", ids.aes!]);
      expect(missing.code).toBe(2);
      expect(missing.stderr).toContain("--in: cannot read no-such-file: no such file or directory");
      const badContext = await hsmctl(["crypto", "envelope-encrypt", "--in", "big.bin", "--out", "x.hsme", "--key-id", ids.aes!, "--context", "novalue"]);
      expect(badContext.code).toBe(2);
      expect(badContext.stderr).toContain("--context: expected KEY=VALUE");
    });

    // issue 13 lane E: self-describing ciphertexts, ReEncrypt and envelope rewrap from the command line.
    it("encrypt --blob, re-encrypt to another key and decrypt by header; envelope-rewrap keeps the frames", async () => {
      const other = await json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-aes-2"]);
      writeFileSync(file("re.txt"), "re-encrypt me");
      const enc = await json<{ keyVersion: number }>(["crypto", "encrypt", "--key-id", ids.aes!, "--blob", "--in", "re.txt", "--out", "re.ct", "--aad", "r1"]);
      expect(enc.keyVersion).toBe(1);
      expect(readFileSync(file("re.ct")).subarray(0, 4).toString()).toBe("hsm1");
      const re = await json<{ sourceKeyId: string; keyId: string; keyVersion: number }>([
        "crypto",
        "re-encrypt",
        "--in",
        "re.ct",
        "--to",
        other.id,
        "--aad",
        "r1",
        "--new-aad",
        "r2",
        "--out",
        "re2.ct",
      ]);
      expect(re).toMatchObject({ sourceKeyId: ids.aes, keyId: other.id, keyVersion: 1 });
      expect((await ok(["crypto", "decrypt", "--key-id", other.id, "--in", "re2.ct", "--aad", "r2"])).stdout).toBe("re-encrypt me");
      const wrongAad = await hsmctl(["crypto", "re-encrypt", "--in", "re.ct", "--to", other.id, "--aad", "nope", "--out", "re3.ct"]);
      expect(wrongAad.code).toBe(1);
      expect(wrongAad.stderr).toMatch(/^error: INVALID_ARGUMENT: /);

      await ok(["crypto", "envelope-encrypt", "--in", "big.bin", "--out", "big.hsme", "--key-id", ids.aes!, "--context", "purpose=test"]);
      const rw = await json<{ keyId: string; previousKeyId: string }>(["crypto", "envelope-rewrap", "--in", "big.hsme", "--out", "big2.hsme", "--to", other.id]);
      expect(rw).toMatchObject({ keyId: other.id, previousKeyId: ids.aes });
      const [a, b] = [readFileSync(file("big.hsme")), readFileSync(file("big2.hsme"))];
      const tail = 300_000 - 65_536; // the frames after the first are byte for byte the same
      expect(b.subarray(b.length - tail).equals(a.subarray(a.length - tail))).toBe(true);
      await ok(["crypto", "envelope-decrypt", "--in", "big2.hsme", "--out", "big2.out", "--context", "purpose=test"]);
      expect(readFileSync(file("big2.out")).equals(readFileSync(file("big.bin")))).toBe(true);
    });
  });

  it("bad input: missing files, unknown keys, wrong formats, each with a clear message and a non-zero exit", async () => {
    const cases: [string[], number, RegExp][] = [
      [["crypto", "sign", "--key-id", ids.ec!, "--in", "does-not-exist"], 2, /--in: cannot read does-not-exist: no such file or directory/],
      [["crypto", "verify", "--key-id", ids.ec!, "--in", "msg", "--signature", "nope.sig"], 2, /--signature: cannot read nope.sig: no such file/],
      [["key", "get", "--key-id", "no-such-key"], 1, /^error: NOT_FOUND: /],
      [["crypto", "sign", "--key-id", "no-such-key", "--in", "msg"], 1, /^error: NOT_FOUND: /],
      [["key", "delete", "--key-id", "no-such-key"], 1, /^error: NOT_FOUND: /],
      [["key", "import-public", "--in", "msg", "--format", "pem", "--label", "x"], 2, /is not a PEM public key/],
      [["key", "import", "--spec", "ec-p256", "--in", "nowhere.pem", "--label", "x"], 2, /--in: cannot read nowhere.pem/],
      [["crypto", "encrypt", "--key-id", ids.ec!, "--in", "msg"], 2, /cannot encrypt/],
      [["crypto", "decrypt", "--key-id", ids.aes!, "--in", "msg", "--algorithm", "aes-gcm"], 2, /not an hsmctl ciphertext file/],
      [["crypto", "sign", "--key-id", ids.ec!, "--in", "msg", "--algorithm", "md5"], 2, /--algorithm: unknown value "md5"/],
      [["key", "list", "--output", "yaml"], 2, /--output: must be text or json/],
      [["audit", "verify", "--file", "no-audit.log"], 2, /--file: cannot verify no-audit.log/],
    ];
    const runs = await Promise.all(cases.map(([args]) => hsmctl(args)));
    runs.forEach((r, i) => {
      const [args, code, pattern] = cases[i]!;
      expect(r.code, `hsmctl ${args.join(" ")}: ${r.stderr}`).toBe(code);
      expect(r.stderr).toMatch(pattern);
      if (code === 2) expect(r.stderr).toContain(`usage: hsmctl ${args[0]} ${args[1]}`);
      expect(r.stdout).toBe("");
    });
  });
});
