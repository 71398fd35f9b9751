/** `key rotate|versions|rotation-policy|min-decryption-version|trim`: a key's versions (issue 13; the owner's). */
import type { Key, ListKeyVersionsResponse } from "../../sdk";
import { columns, fields, keyText, keyView } from "../render";
import { intValue, requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const KEY_ID: OptionSpec = { type: "string", arg: "ID", required: true, description: "the key's id" };

/** A key with its version fields (what these commands change). */
function versionedView(k: Key): Record<string, unknown> {
  return { ...keyView(k), versionCount: k.versionCount, minDecryptionVersion: k.minDecryptionVersion, rotationPeriodDays: k.rotationPeriodDays, nextRotationAt: k.nextRotationAt };
}

function versionedText(k: Key): string {
  const extra = fields([
    ["versions", `${k.versionCount} (min decryption version ${k.minDecryptionVersion})`],
    ["automatic rotation", k.rotationPeriodDays ? `every ${k.rotationPeriodDays} days, next ${k.nextRotationAt}` : "off"],
  ]);
  return `${keyText(k)}\n${extra}`;
}

function versionsView(l: ListKeyVersionsResponse): Record<string, unknown> {
  return {
    keyId: l.keyId,
    primaryVersion: l.primaryVersion,
    minDecryptionVersion: l.minDecryptionVersion,
    versions: l.versions.map((v) => ({
      version: v.version,
      createdAt: v.createdAt,
      primary: v.primary,
      decryptable: v.decryptable,
      ...(v.publicKeySpki.length ? { publicKeySpki: Buffer.from(v.publicKeySpki).toString("base64") } : {}),
    })),
  };
}

export const keyVersionCommands: CommandSpec[] = [
  {
    words: ["key", "rotate"],
    summary: "make a new primary version of a key you own (old versions keep verifying and decrypting)",
    details: "Only keys the HSM generated rotate (imported, public, unwrapped and derived keys cannot). New signatures and encryptions use the new version.",
    options: { "key-id": KEY_ID, "request-id": { type: "string", arg: "ID", description: "idempotency token: running again with the same id makes no second version" } },
    examples: ["hsmctl key rotate --key-id K", "hsmctl key rotate --key-id K --request-id rotate-2025-q1 -o json"],
    async run(ctx, values) {
      const key = await ctx.client().rotateKey({ keyId: requireString(values, "key-id"), requestId: stringValue(values, "request-id") ?? "" });
      ctx.emit(versionedView(key), versionedText(key));
    },
  },
  {
    words: ["key", "versions"],
    summary: "list a key's versions, oldest first (the primary, and which still decrypt and verify)",
    options: { "key-id": KEY_ID },
    async run(ctx, values) {
      const l = await ctx.client().listKeyVersions({ keyId: requireString(values, "key-id") });
      const text = columns(
        ["VERSION", "PRIMARY", "DECRYPTABLE", "CREATED"],
        l.versions.map((v) => [String(v.version), v.primary ? "yes" : "", v.decryptable ? "yes" : "no", v.createdAt]),
      );
      ctx.emit(versionsView(l), text);
    },
  },
  {
    words: ["key", "rotation-policy"],
    summary: "rotate a key you own automatically every N days (0 turns it off)",
    options: {
      "key-id": KEY_ID,
      days: { type: "string", arg: "N", required: true, description: "the period in days (90 to 2560 by default, the daemon's lifecycle.rotationPeriodDays), or 0 for off" },
    },
    examples: ["hsmctl key rotation-policy --key-id K --days 365", "hsmctl key rotation-policy --key-id K --days 0"],
    async run(ctx, values) {
      const key = await ctx.client().updateRotationPolicy({ keyId: requireString(values, "key-id"), rotationPeriodDays: intValue(values, "days", 0, 0, 3650) });
      ctx.emit(versionedView(key), versionedText(key));
    },
  },
  {
    words: ["key", "min-decryption-version"],
    summary: "set the version below which a key you own no longer decrypts or verifies",
    options: { "key-id": KEY_ID, "min-version": { type: "string", arg: "N", required: true, description: "1 to the primary version" } },
    async run(ctx, values) {
      const key = await ctx.client().setMinDecryptionVersion({ keyId: requireString(values, "key-id"), minDecryptionVersion: intValue(values, "min-version", 0, 1, 2 ** 31) });
      ctx.emit(versionedView(key), versionedText(key));
    },
  },
  {
    words: ["key", "trim"],
    summary: "destroy, on every node, the versions of a key you own below its min decryption version (may need a quorum)",
    options: { "key-id": KEY_ID, "quorum-request-id": { type: "string", arg: "ID", description: "an approved quorum request for this very operation (when the daemon requires one)" } },
    examples: ["hsmctl key min-decryption-version --key-id K --min-version 3 && hsmctl key trim --key-id K"],
    async run(ctx, values) {
      const key = await ctx.client().trimKeyVersions({ keyId: requireString(values, "key-id"), quorumRequestId: stringValue(values, "quorum-request-id") ?? "" });
      ctx.emit(versionedView(key), versionedText(key));
    },
  },
];
