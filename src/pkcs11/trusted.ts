/**
 * The security-officer steps: placing a joiner's transport public key in this token as a trusted
 * object (CKA_TRUSTED), which only the token's security officer (SO) may do, and proving an operator
 * holds the SO PIN (offline recovery). PKCS#11 logs in
 * per application, and the daemon is logged in as the user, so the SO login runs in a short-lived
 * child process: it logs in as SO with the PIN the operator gave for this ceremony, creates the
 * object, logs out and exits. The PIN reaches it on stdin, never in argv or the environment, and is
 * not kept.
 */
import { spawn } from "node:child_process";
import { createPublicKey } from "node:crypto";
import { Code, HsmError, invalid, precondition } from "../errors";
import { trustedTransportKeyTemplate } from "./templates";

export interface TrustedKeyOptions {
  module: string;
  tokenLabel?: string;
  slot?: number;
  soPin: string;
  /** CKA_ID of the object to create */
  id: string;
  /** RSA public key, SPKI DER */
  spki: Buffer;
}

/** Runs in the child (plain JavaScript, so it works from sources and from dist alike). */
const CHILD = String.raw`
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  const o = JSON.parse(input);
  const pk = require(o.pkcs11js);
  const p = new pk.PKCS11();
  let code = 0;
  try {
    p.load(o.module);
    p.C_Initialize({ flags: pk.CKF_OS_LOCKING_OK });
    const slots = p.C_GetSlotList(true);
    const slot = o.tokenLabel !== undefined ? slots.find((s) => p.C_GetTokenInfo(s).label.trim() === o.tokenLabel) : slots[o.slot ?? 0];
    if (!slot) throw Object.assign(new Error("token not found"), { ckr: "TOKEN_NOT_FOUND" });
    const s = p.C_OpenSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
    p.C_Login(s, pk.CKU_SO, o.soPin);
    try {
      // The template comes from templates.ts (trustedTransportKeyTemplate), Buffers as JSON.
      if (o.op === "create") p.C_CreateObject(s, o.template.map((a) => ({ type: a.type, value: a.value && a.value.type === "Buffer" ? Buffer.from(a.value.data) : a.value })));
    } finally {
      try { p.C_Logout(s); } catch {}
      try { p.C_CloseSession(s); } catch {}
    }
  } catch (e) {
    process.stdout.write(JSON.stringify({ error: String((e && e.message) || e) }));
    code = 1;
  }
  try { p.C_Finalize(); } catch {}
  process.exit(code);
});
`;

/** Creates the trusted transport public key as the token's SO (see the module comment). */
export async function createTrustedPublicKey(opts: TrustedKeyOptions): Promise<void> {
  if (!opts.soPin) throw invalid("so_pin is required: approving a join marks the joiner's transport key trusted, which takes the token's security officer");
  let jwk: { n?: string; e?: string; kty?: string };
  try {
    jwk = createPublicKey({ key: opts.spki, format: "der", type: "spki" }).export({ format: "jwk" });
  } catch {
    throw invalid("the transport key is not a valid SPKI public key");
  }
  if (jwk.kty !== "RSA" || !jwk.n || !jwk.e) throw invalid("the transport key must be an RSA public key");
  const template = trustedTransportKeyTemplate(opts.id, jwk.n, jwk.e);
  await runAsSecurityOfficer({ op: "create", module: opts.module, tokenLabel: opts.tokenLabel, slot: opts.slot, soPin: opts.soPin, template }, "could not mark the transport key trusted");
}

/** Which token, and the SO PIN the operator gave for this step. */
export interface SoLoginOptions {
  module: string;
  tokenLabel?: string;
  slot?: number;
  soPin: string;
}

/**
 * Proves that `soPin` is the token's security-officer PIN by really logging in as SO (CKU_SO) in a
 * short-lived child process, then logging out. PERMISSION_DENIED for a wrong PIN (CKR_PIN_INCORRECT),
 * FAILED_PRECONDITION for a locked one (CKR_PIN_LOCKED). Offline recovery steps (`hsmd officer
 * unlock`) take it as the operator's proof of authority over the token.
 */
export async function checkSoPin(opts: SoLoginOptions): Promise<void> {
  if (!opts.soPin) throw invalid("the security officer PIN is required");
  await runAsSecurityOfficer({ op: "check", module: opts.module, tokenLabel: opts.tokenLabel, slot: opts.slot, soPin: opts.soPin }, "could not log in as the token's security officer");
}

/** Runs {@link CHILD} with `o` on its stdin (the PIN never in argv or the environment); maps its failure. */
async function runAsSecurityOfficer(o: Record<string, unknown>, failure: string): Promise<void> {
  const input = JSON.stringify({ pkcs11js: require.resolve("pkcs11js"), ...o });
  const out = await new Promise<{ code: number | null; stdout: string }>((resolve, reject) => {
    const child = spawn(process.execPath, ["-e", CHILD], { stdio: ["pipe", "pipe", "ignore"], env: process.env });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, stdout }));
    child.stdin.end(input);
  });
  if (out.code === 0) return;
  let message = "unknown error";
  try {
    message = (JSON.parse(out.stdout) as { error: string }).error;
  } catch {
    /* the child died before answering */
  }
  if (/PIN_INCORRECT/.test(message)) throw new HsmError(Code.PermissionDenied, "the security officer PIN of this node's token is incorrect");
  if (/PIN_LOCKED/.test(message)) throw precondition("the security officer PIN of this node's token is locked");
  if (/ALREADY_LOGGED_IN/.test(message)) throw new HsmError(Code.Unavailable, "another security officer session is open on this token; retry", { transient: true });
  if (/TOKEN_NOT_FOUND|token not found/.test(message)) throw precondition("the token was not found: check device.tokenLabel or device.slot");
  throw new HsmError(Code.Internal, failure, { cause: new Error(message) });
}
