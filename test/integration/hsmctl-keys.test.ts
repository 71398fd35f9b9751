/**
 * hsmctl end to end, keys: the BUILT CLI (`node dist/src/cli/main.js`, compiled in beforeAll) as a
 * child process against a real daemon on a SoftHSM2 token. Results are checked with openssl and Node's
 * crypto; every stdout and stderr is kept and searched after the tests for passwords and session
 * tokens. Crypto and the bad-input messages: hsmctl-crypto.test.ts. Help, sessions, users, cluster,
 * audit and the terminal: hsmctl.test.ts. The daemon, the users and the hsmctl runner: test/helpers/hsmctl.ts.
 */
import { createDecipheriv, createPublicKey, generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { file, hsmctl, json, ok, opensslOk, useHsmctlDaemon } from "../helpers/hsmctl";

useHsmctlDaemon();

describe("keys", () => {
  const ids: Record<string, string> = {};

  it("generate-symmetric and generate-asymmetric-pair, text and JSON; a repeated --request-id gives the same key", async () => {
    const aes = await ok(["key", "generate-symmetric", "--spec", "aes-256", "--label", "cli-aes", "--usage", "encrypt,decrypt", "--usage", "wrap", "--usage", "unwrap"]);
    expect(aes.stdout).toMatch(/^id:\s+\S+\nlabel:\s+cli-aes\nspec:\s+aes-256\nusages:\s+encrypt, decrypt, wrap, unwrap/);
    ids.aes = /^id:\s+(\S+)/.exec(aes.stdout)![1]!;
    const [hmac, ec, rsa, ed, exp] = await Promise.all([
      json<{ id: string; spec: string; usages: string[] }>(["key", "generate-symmetric", "--spec", "hmac-sha256", "--label", "cli-hmac"]),
      json<{ id: string; spec: string; publicKeySpki: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-ec", "--request-id", "cli-ec-1"]),
      json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "rsa-2048", "--label", "cli-rsa", "--usage", "sign,verify,encrypt,decrypt"]),
      json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ed25519", "--label", "cli-ed"]),
      json<{ id: string; exportable: boolean }>(["key", "generate-symmetric", "--spec", "aes-128", "--label", "cli-exportable", "--exportable"]),
    ]);
    expect(hmac).toMatchObject({ spec: "hmac-sha256", usages: ["sign", "verify"] });
    expect(ec.spec).toBe("ec-p256");
    expect(createPublicKey({ key: Buffer.from(ec.publicKeySpki, "base64"), format: "der", type: "spki" }).asymmetricKeyType).toBe("ec");
    expect(exp.exportable).toBe(true);
    Object.assign(ids, { hmac: hmac.id, ec: ec.id, rsa: rsa.id, ed: ed.id, exp: exp.id });
    const retried = await json<{ id: string }>(["key", "generate-asymmetric-pair", "--spec", "ec-p256", "--label", "cli-ec", "--request-id", "cli-ec-1"]);
    expect(retried.id).toBe(ec.id);

    const wrongKind = await hsmctl(["key", "generate-symmetric", "--spec", "ec-p256", "--label", "x"]);
    expect(wrongKind.code).toBe(2);
    expect(wrongKind.stderr).toContain("use key generate-asymmetric-pair");
    const badSpec = await hsmctl(["key", "generate-symmetric", "--spec", "aes-512", "--label", "x"]);
    expect(badSpec.code).toBe(2);
    expect(badSpec.stderr).toContain('--spec: unknown value "aes-512"');
    expect(badSpec.stderr).toContain("usage: hsmctl key generate-symmetric");
  });

  it("list with filters (every page), get, in text and JSON", async () => {
    const all = await ok(["key", "list"]);
    expect(all.stdout).toMatch(/^ID\s+LABEL\s+SPEC/);
    for (const label of ["cli-aes", "cli-hmac", "cli-ec", "cli-rsa", "cli-ed"]) expect(all.stdout).toContain(label);
    const ecOnly = await json<{ keys: { id: string; spec: string }[] }>(["key", "list", "--spec", "ec-p256"]);
    expect(ecOnly.keys.map((k) => k.id)).toEqual([ids.ec]);
    const prefix = await json<{ keys: { label: string }[] }>(["key", "list", "--label-prefix", "cli-e"]);
    expect(prefix.keys.map((k) => k.label).sort()).toEqual(["cli-ec", "cli-ed", "cli-exportable"]);
    const wrap = await json<{ keys: { id: string }[] }>(["key", "list", "--usage", "wrap"]);
    expect(wrap.keys.map((k) => k.id)).toEqual([ids.aes]);
    expect((await ok(["key", "get", "--key-id", ids.rsa!])).stdout).toMatch(/spec:\s+rsa-2048/);
    expect(await json(["key", "get", "--key-id", ids.ec!])).toMatchObject({ id: ids.ec, owner: "alice", origin: "generated" });
  });

  it("public-key as PEM, DER and JWK, read by openssl pkey -pubin", async () => {
    await ok(["key", "public-key", "--key-id", ids.ec!, "--format", "pem", "--out", "ec-pub.pem"]);
    expect(opensslOk(["pkey", "-pubin", "-in", "ec-pub.pem", "-noout", "-text"])).toContain("prime256v1");
    await ok(["key", "public-key", "--key-id", ids.rsa!, "--format", "der", "--out", "rsa-pub.der"]);
    expect(opensslOk(["pkey", "-pubin", "-inform", "DER", "-in", "rsa-pub.der", "-noout", "-text"])).toContain("2048 bit");
    const pemStdout = await ok(["key", "public-key", "--key-id", ids.ed!]);
    expect(pemStdout.stdout).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    writeFileSync(file("ed-pub.pem"), pemStdout.stdout);
    expect(opensslOk(["pkey", "-pubin", "-in", "ed-pub.pem", "-noout", "-text"])).toContain("ED25519");
    const jwk = await json<{ keyId: string; format: string; jwk: { kty: string; crv: string } }>(["key", "public-key", "--key-id", ids.ec!, "--format", "jwk"]);
    expect(jwk).toMatchObject({ keyId: ids.ec, format: "jwk", jwk: { kty: "EC", crv: "P-256" } });
    const derJson = await json<{ der: string }>(["key", "public-key", "--key-id", ids.ec!, "--format", "der"]);
    expect(Buffer.from(derJson.der, "base64")).toEqual(createPublicKey(readFileSync(file("ec-pub.pem"))).export({ format: "der", type: "spki" }));
    const secret = await hsmctl(["key", "public-key", "--key-id", ids.aes!]);
    expect(secret.code).toBe(1);
    expect(secret.stderr).toMatch(/^error: [A-Z_]+: /);
  });

  it("share and unshare with another crypto user", async () => {
    const shared = await ok(["key", "share", "--key-id", ids.ec!, "--username", "bob"]);
    expect(shared.stdout).toContain("now shared with: bob");
    const bobSigns = await ok(["crypto", "sign", "--key-id", ids.ec!, "--in", "-", "--out", "bob-sig.der"], { as: "bob", input: "from bob" });
    expect(bobSigns.stdout).toContain("bytes written to bob-sig.der");
    expect(await json(["key", "unshare", "--key-id", ids.ec!, "--username", "bob"])).toMatchObject({ id: ids.ec, sharedWith: [] });
    const refused = await hsmctl(["crypto", "sign", "--key-id", ids.ec!, "--in", "-"], { as: "bob", input: "from bob" });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: (NOT_FOUND|PERMISSION_DENIED): /);
  });

  it("import-public (PEM, DER, JWK) verifies what openssl signed; wrong formats are refused before the server", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    writeFileSync(file("partner.pem"), publicKey.export({ format: "pem", type: "spki" }));
    writeFileSync(file("partner.der"), publicKey.export({ format: "der", type: "spki" }));
    writeFileSync(file("partner.jwk"), JSON.stringify(publicKey.export({ format: "jwk" })));
    writeFileSync(file("partner-key.pem"), privateKey.export({ format: "pem", type: "pkcs8" }));
    writeFileSync(file("partner-msg"), "signed by the partner");
    opensslOk(["dgst", "-sha256", "-sign", "partner-key.pem", "-out", "partner-sig.der", "partner-msg"]);
    const [pem, der, jwk] = await Promise.all([
      json<{ id: string; publicOnly: boolean; origin: string }>(["key", "import-public", "--in", "partner.pem", "--format", "pem", "--label", "partner-pem"]),
      json<{ id: string }>(["key", "import-public", "--in", "partner.der", "--format", "der", "--label", "partner-der"]),
      json<{ id: string }>(["key", "import-public", "--in", "partner.jwk", "--label", "partner-jwk"]),
    ]);
    expect(pem).toMatchObject({ publicOnly: true, origin: "public" });
    const verified = await Promise.all([pem.id, der.id, jwk.id].map((id) => ok(["crypto", "verify", "--key-id", id, "--in", "partner-msg", "--signature", "partner-sig.der"])));
    for (const v of verified) expect(v.stdout).toContain("signature valid");
    const [pemAsDer, priv, notJwk, badFormat] = await Promise.all([
      hsmctl(["key", "import-public", "--in", "partner.pem", "--format", "der", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner-key.pem", "--format", "pem", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner.der", "--format", "jwk", "--label", "x"]),
      hsmctl(["key", "import-public", "--in", "partner.pem", "--format", "x509", "--label", "x"]),
    ]);
    for (const r of [pemAsDer, priv, notJwk, badFormat]) expect(r.code).toBe(2);
    expect(pemAsDer.stderr).toContain("is PEM, not DER");
    expect(priv.stderr).toContain("holds a private key");
    expect(notJwk.stderr).toContain("not a JWK");
    expect(badFormat.stderr).toContain("--format: must be one of pem, der, jwk");
  });

  it("key import (BYOK) of an openssl-generated EC key: signs in the HSM, openssl verifies with its own public key", async () => {
    opensslOk(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "byok-ec.pem"]);
    opensslOk(["pkey", "-in", "byok-ec.pem", "-pubout", "-out", "byok-ec.pub"]);
    const key = await json<{ id: string; origin: string; spec: string }>(["key", "import", "--spec", "ec-p256", "--in", "byok-ec.pem", "--label", "byok-ec"]);
    expect(key).toMatchObject({ origin: "imported", spec: "ec-p256" });
    writeFileSync(file("byok-msg"), "imported key, signed in the HSM");
    await ok(["crypto", "sign", "--key-id", key.id, "--in", "byok-msg", "--out", "byok-sig.der"]);
    expect(opensslOk(["dgst", "-sha256", "-verify", "byok-ec.pub", "-signature", "byok-sig.der", "byok-msg"])).toContain("Verified OK");

    // SEC1 ("EC PRIVATE KEY") works too; a key of another curve is refused before anything is sent.
    opensslOk(["ec", "-in", "byok-ec.pem", "-out", "byok-ec-sec1.pem"]);
    expect((await ok(["key", "import", "--spec", "ec-p256", "--in", "byok-ec-sec1.pem", "--label", "byok-sec1"])).stdout).toMatch(/origin:\s+imported/);
    const wrongCurve = await hsmctl(["key", "import", "--spec", "ec-p384", "--in", "byok-ec.pem", "--label", "x"]);
    expect(wrongCurve.code).toBe(2);
    expect(wrongCurve.stderr).toContain("holds an EC key on prime256v1, which is not --spec ec-p384");
  });

  it("key import of a raw AES key: what the HSM encrypts, Node decrypts with the same bytes", async () => {
    const raw = Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 7 + 3) & 0xff));
    writeFileSync(file("byok-aes.key"), raw);
    const key = await json<{ id: string }>(["key", "import", "--spec", "aes-256", "--in", "byok-aes.key", "--label", "byok-aes"]);
    const enc = await json<{ iv: string; ciphertext: string }>(["crypto", "encrypt", "--key-id", key.id, "--in", "-", "--aad", "ctx"], { input: "raw import" });
    const ct = Buffer.from(enc.ciphertext, "base64");
    const d = createDecipheriv("aes-256-gcm", raw, Buffer.from(enc.iv, "base64"));
    d.setAAD(Buffer.from("ctx"));
    d.setAuthTag(ct.subarray(ct.length - 16));
    expect(Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString()).toBe("raw import");
    const short = await hsmctl(["key", "import", "--spec", "aes-128", "--in", "byok-aes.key", "--label", "x"]);
    expect(short.code).toBe(2);
    expect(short.stderr).toContain("needs exactly 16 raw bytes");
    const pemForAes = await hsmctl(["key", "import", "--spec", "aes-256", "--in", "byok-ec.pem", "--label", "x"]);
    expect(pemForAes.code).toBe(2);
    expect(pemForAes.stderr).toContain("takes the raw key bytes");
    const notAKey = await hsmctl(["key", "import", "--spec", "rsa-2048", "--in", "byok-msg", "--label", "x"]);
    expect(notAKey.code).toBe(2);
    expect(notAKey.stderr).toContain("is neither a PEM private key nor a DER");
  });

  it("key delete: the key is gone afterwards", async () => {
    const k = await json<{ id: string }>(["key", "generate-symmetric", "--spec", "aes-128", "--label", "to-delete"]);
    expect((await ok(["key", "delete", "--key-id", k.id])).stdout).toBe(`deleted key ${k.id}\n`);
    const gone = await hsmctl(["key", "get", "--key-id", k.id]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^error: NOT_FOUND: /);
  });
});
