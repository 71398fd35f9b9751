import { createCipheriv, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { expect } from "vitest";
import { HsmClient, KeySpec, KeyUsage, WrapAlgorithm, wrapForImport } from "../../src/sdk";

/**
 * Wycheproof vectors (test/wycheproof/, Apache-2.0) run through the service: loading, planning
 * (which vectors run and which are skipped, and why), running in bounded concurrency, and an
 * aggregated tally whose mismatch list names every vector that did not behave, so one failing
 * assertion is enough to debug.
 */

export type WycheproofResult = "valid" | "invalid" | "acceptable";

export interface WycheproofTest {
  tcId: number;
  comment: string;
  flags: string[];
  result: WycheproofResult;
}

export interface WycheproofFile<G> {
  algorithm: string;
  numberOfTests: number;
  testGroups: Array<G & { tests: Array<WycheproofTest & Record<string, unknown>> }>;
}

export const VECTOR_DIR = join(__dirname, "..", "wycheproof");

/** Loads one vector file from test/wycheproof/ (never from outside the project). */
export function loadVectors<G, T extends WycheproofTest>(file: string): { file: string; algorithm: string; total: number; groups: Array<G & { tests: T[] }> } {
  const doc = JSON.parse(readFileSync(join(VECTOR_DIR, file), "utf8")) as { algorithm: string; numberOfTests: number; testGroups: Array<G & { tests: T[] }> };
  const total = doc.testGroups.reduce((n, g) => n + g.tests.length, 0);
  if (total !== doc.numberOfTests) throw new Error(`${file}: numberOfTests says ${doc.numberOfTests}, groups hold ${total}`);
  return { file, algorithm: doc.algorithm, total, groups: doc.testGroups };
}

export const hex = (s: unknown): Buffer => Buffer.from(typeof s === "string" ? s : "", "hex");

/** A vector of a group, and (when it is not run) why. */
export interface Planned<G, T> {
  group: G;
  test: T;
  skip?: string;
}

export interface Plan<G, T> {
  file: string;
  total: number;
  run: Array<Planned<G, T>>;
  skipped: Array<Planned<G, T>>;
  /** Skip reason → count. */
  skipReasons: Map<string, number>;
  /** "N checked, M skipped (reason: k; ...)" for a test name. */
  title: string;
}

/** Splits a file's vectors into those to run and those skipped; `skip` returns a reason or undefined. */
export function plan<G extends { tests: WycheproofTest[] }, T extends WycheproofTest = G["tests"][number]>(
  v: { file: string; total: number; groups: G[] },
  skip: (g: G, t: T) => string | undefined = () => undefined,
): Plan<G, T> {
  const run: Array<Planned<G, T>> = [];
  const skipped: Array<Planned<G, T>> = [];
  const skipReasons = new Map<string, number>();
  for (const group of v.groups) {
    for (const test of group.tests as T[]) {
      const why = skip(group, test);
      if (why) {
        skipped.push({ group, test, skip: why });
        skipReasons.set(why, (skipReasons.get(why) ?? 0) + 1);
      } else {
        run.push({ group, test });
      }
    }
  }
  const reasons = [...skipReasons].map(([r, n]) => `${r}: ${n}`).join("; ");
  const title = `${v.file}: ${run.length} of ${v.total} checked, ${skipped.length} skipped${reasons ? ` (${reasons})` : ""}`;
  return { file: v.file, total: v.total, run, skipped, skipReasons, title };
}

/** Vectors in flight at once (WYCHEPROOF_CONCURRENCY=1 runs them one by one, to tell a concurrency bug apart). */
export const CONCURRENCY = Math.max(1, Number(process.env.WYCHEPROOF_CONCURRENCY) || 32);

/** Runs `fn` over `items`, at most `size` at a time (chunks: the service's session pool is small). */
export async function inChunks<I, O>(items: readonly I[], size: number, fn: (item: I, index: number) => Promise<O>): Promise<O[]> {
  const out: O[] = [];
  for (let i = 0; i < items.length; i += size) {
    out.push(...(await Promise.all(items.slice(i, i + size).map((it, j) => fn(it, i + j)))));
  }
  return out;
}

/** Memoizes an async creation (a key import) by a string key, so each distinct key is imported once. */
export function once<A>(make: (k: string) => Promise<A>): (k: string) => Promise<A> {
  const cache = new Map<string, Promise<A>>();
  return (k) => {
    let p = cache.get(k);
    if (!p) {
      p = make(k);
      cache.set(k, p);
    }
    return p;
  };
}

/**
 * What the service did with one vector. `accepted` with `wrong` set means it accepted but produced
 * something other than the vector's expected output (a wrong plaintext, a key with other bytes).
 */
export type Verdict = { accepted: true; wrong?: string } | { accepted: false; how: string; message?: string };

/** The gRPC status name of an error from the SDK (or "THROWN: ..." for anything that is not one). */
export function errorCode(e: unknown): string {
  const err = e as { codeName?: unknown; code?: unknown; message?: unknown };
  if (typeof err?.codeName === "string") return err.codeName;
  if (typeof err?.code === "number" && GrpcStatus[err.code] !== undefined) return GrpcStatus[err.code] as string;
  return `THROWN: ${String(err?.message ?? e)}`;
}

/** Turns a call into a verdict: an error becomes a rejection named by its status code. */
export async function verdictOf(call: () => Promise<Verdict>): Promise<Verdict> {
  try {
    return await call();
  } catch (e) {
    return { accepted: false, how: errorCode(e), message: String((e as Error)?.message ?? e).slice(0, 200) };
  }
}

/** What a vector must do: by default what its `result` says. */
export type Expectation = "accept" | "reject" | "either";

interface Mismatch {
  tcId: number;
  line: string;
}

/**
 * The tally of one file: counts per expectation and outcome, rejection kinds, acceptable outcomes,
 * and every mismatch with tcId, result, flags and comment.
 */
export class Tally {
  checked = 0;
  readonly mismatches: Mismatch[] = [];
  /** "valid→accepted", "invalid→rejected:INVALID_ARGUMENT", "acceptable→accepted", ... → count. */
  readonly outcomes = new Map<string, number>();
  /** Vectors whose expectation was overridden (service limits), reason → count. */
  readonly overrides = new Map<string, number>();

  constructor(
    readonly file: string,
    /** The rejection kinds that count as a correct rejection, e.g. ["valid:false", "INVALID_ARGUMENT"]. */
    readonly rejections: readonly string[],
  ) {}

  /**
   * Records a vector's verdict. `override` replaces what the vector's result asks for (with the
   * reason, counted in the summary), e.g. a valid GCM vector whose IV is over the service's limit
   * must be refused with INVALID_ARGUMENT.
   */
  record(t: WycheproofTest, v: Verdict, override?: { expect: Expectation; rejections?: readonly string[]; reason: string }): void {
    this.checked++;
    const expect: Expectation = override?.expect ?? (t.result === "valid" ? "accept" : t.result === "invalid" ? "reject" : "either");
    const allowed = override?.rejections ?? this.rejections;
    if (override) this.overrides.set(override.reason, (this.overrides.get(override.reason) ?? 0) + 1);
    const got = v.accepted ? (v.wrong ? `accepted but ${v.wrong}` : "accepted") : `rejected:${v.how}`;
    const key = `${t.result}${override ? "(" + override.reason + ")" : ""}→${v.accepted ? (v.wrong ? "accepted-wrong" : "accepted") : "rejected:" + v.how}`;
    this.outcomes.set(key, (this.outcomes.get(key) ?? 0) + 1);
    let ok: boolean;
    if (expect === "accept") ok = v.accepted && !v.wrong;
    else if (expect === "reject") ok = !v.accepted && allowed.includes(v.how);
    else ok = v.accepted ? !v.wrong : allowed.includes(v.how);
    if (!ok) {
      const msg = !v.accepted && v.message ? ` (${v.message})` : "";
      const exp = expect === "accept" ? "accept" : expect === "reject" ? `reject as ${allowed.join(" or ")}` : `accept or reject as ${allowed.join(" or ")}`;
      this.mismatches.push({
        tcId: t.tcId,
        line: `tcId ${t.tcId} [${t.result}${override ? ", " + override.reason : ""}] flags=${t.flags.join(",") || "-"} comment="${t.comment}": expected ${exp}, got ${got}${msg}`,
      });
    }
  }

  /** The mismatch lines, by tcId (empty when every vector behaved). */
  report(): string[] {
    return [...this.mismatches].sort((a, b) => a.tcId - b.tcId).map((m) => m.line);
  }

  summary(p?: Plan<unknown, unknown>): string {
    const lines = [`[wycheproof] ${p?.title ?? this.file}: ${this.mismatches.length} mismatches`];
    for (const [k, n] of [...this.outcomes].sort()) lines.push(`    ${k}: ${n}`);
    for (const [k, n] of this.overrides) lines.push(`    expectation overridden (${k}): ${n}`);
    return lines.join("\n");
  }
}

/**
 * Prints the file's summary and asserts: no mismatches (each listed with tcId and comment), at least
 * one vector checked, and every vector either checked or skipped with a reason. `extraChecks`: how
 * many more records than vectors the test made on purpose (a vector also run a second way).
 */
export function assertTally(p: Plan<unknown, unknown>, tally: Tally, extraChecks = 0): void {
  console.log(tally.summary(p));
  expect(tally.report(), `${p.file}: vectors that did not behave`).toEqual([]);
  expect(tally.checked).toBeGreaterThan(0);
  expect(tally.checked).toBe(p.total - p.skipped.length + extraChecks);
}

/**
 * Puts keys with known bytes (the vectors') into the service. The way in is BYOK (ImportKey, in the
 * wrapping algorithm GetImportParameters names). Should BYOK be unusable on the device, it falls back
 * to another path through the service that ends in the same kind of key, and says so: an AES-256 KEK agreed with ECDH (DeriveKey, so both sides know it), then
 * UnwrapKey(AES_KWP) of the material under it. `mode` says which path was taken, and `byokError` why
 * BYOK was not.
 */
export class KeyLoader {
  mode: "byok" | "ecdh-kek+unwrap" = "byok";
  byokError: string | undefined;
  private kek: { id: string; bytes: Buffer } | undefined;

  constructor(private readonly c: HsmClient) {}

  async init(): Promise<this> {
    try {
      await this.byok(KeySpec.KEY_SPEC_AES_256, randomBytes(32), [KeyUsage.KEY_USAGE_ENCRYPT], undefined, false, "wycheproof-byok-probe");
      this.mode = "byok";
    } catch (e) {
      this.byokError = `${errorCode(e)}: ${String((e as Error)?.message ?? e)}`;
      this.mode = "ecdh-kek+unwrap";
      const ec = await this.c.generateKey({ spec: KeySpec.KEY_SPEC_EC_P256, label: "wycheproof-ecdh", usages: [KeyUsage.KEY_USAGE_DERIVE] });
      const peer = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const k = await this.c.deriveKey({
        privateKeyId: ec.id,
        peerPublicKeySpki: peer.publicKey.export({ type: "spki", format: "der" }),
        spec: KeySpec.KEY_SPEC_AES_256,
        label: "wycheproof-kek0",
        usages: [KeyUsage.KEY_USAGE_UNWRAP],
      });
      const bytes = diffieHellman({ privateKey: peer.privateKey, publicKey: createPublicKey({ key: Buffer.from(ec.publicKeySpki), format: "der", type: "spki" }) });
      this.kek = { id: k.id, bytes };
    }
    return this;
  }

  describe(): string {
    return this.mode === "byok" ? "keys loaded with BYOK ImportKey" : `keys loaded with DeriveKey(ECDH) + UnwrapKey(AES_KWP): BYOK ImportKey is unusable here (${this.byokError})`;
  }

  private async byok(spec: KeySpec, material: Buffer, usages: KeyUsage[], publicKeySpki: Buffer | undefined, exportable: boolean, label: string): Promise<string> {
    const ip = await this.c.getImportParameters({});
    const k = await this.c.importKey({
      spec,
      label,
      usages,
      exportable,
      importKeyId: ip.importKeyId,
      wrappedKeyMaterial: wrapForImport(Buffer.from(ip.publicKeySpki), material, ip.wrappingAlgorithm),
      publicKeySpki: publicKeySpki ?? Buffer.alloc(0),
    });
    return k.id;
  }

  /** A key with these bytes (raw secret, or PKCS#8 DER with its SPKI); returns its id. */
  async load(spec: KeySpec, material: Buffer, usages: KeyUsage[], opts: { publicKeySpki?: Buffer; exportable?: boolean; label?: string } = {}): Promise<string> {
    const label = opts.label ?? "wycheproof";
    if (this.mode === "byok") return this.byok(spec, material, usages, opts.publicKeySpki, opts.exportable ?? false, label);
    const w = createCipheriv("id-aes256-wrap-pad", this.kek!.bytes, Buffer.from("A65959A6", "hex"));
    const blob = Buffer.concat([w.update(material), w.final()]);
    const k = await this.c.unwrapKey({
      unwrappingKeyId: this.kek!.id,
      algorithm: WrapAlgorithm.WRAP_ALGORITHM_AES_KWP,
      wrappedKey: blob,
      spec,
      label,
      usages,
      exportable: opts.exportable ?? false,
      publicKeySpki: opts.publicKeySpki ?? Buffer.alloc(0),
    });
    return k.id;
  }
}
