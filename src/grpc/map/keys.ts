/**
 * hsm.v1 KeyService messages ↔ the key domain (src/keys): enum numbers ↔ names, requests in, keys
 * out. The one place the key domain meets the wire; an unknown or unspecified enum number answers
 * INVALID_ARGUMENT with the message the domain used to give.
 */
import { invalid } from "../../errors";
import {
  KeyOrigin,
  KeySpec,
  KeyState,
  KeyUsage,
  PublicKeyFormat,
  type GenerateKeyRequest,
  type GetImportParametersResponse,
  type GetPublicKeyResponse,
  type ImportKeyRequest,
  type ImportPublicKeyRequest,
  type Key as ProtoKey,
  type ListKeysRequest,
  type ListKeysResponse,
} from "../../gen/hsm/v1/keys";
import {
  KEY_SPEC_NAMES,
  type GenerateKeyInput,
  type ImportKeyInput,
  type ImportParameters,
  type ImportPublicKeyInput,
  type Key,
  type KeyOriginName,
  type KeyPage,
  type KeySpecName,
  type KeyStateName,
  type ListKeysQuery,
  type PublicKeyFormatName,
  type PublicKeyView,
  checkTagKey,
} from "../../keys";
import type { Usage } from "../../pkcs11";

const SPEC_TO_PROTO: Record<KeySpecName, KeySpec> = Object.fromEntries(KEY_SPEC_NAMES.map((n) => [n, KeySpec[`KEY_SPEC_${n}` as keyof typeof KeySpec]])) as Record<KeySpecName, KeySpec>;
const SPEC_FROM_PROTO = new Map<number, KeySpecName>(KEY_SPEC_NAMES.map((n) => [SPEC_TO_PROTO[n], n]));

/** A KeySpec number as a domain name; INVALID_ARGUMENT for UNSPECIFIED or one the API does not define. */
export function specFromProto(spec: KeySpec): KeySpecName {
  const n = SPEC_FROM_PROTO.get(spec);
  if (!n) throw invalid(`spec must be one of ${KEY_SPEC_NAMES.map((k) => `KEY_SPEC_${k}`).join(", ")}; got ${KeySpec[spec] ?? spec}`);
  return n;
}

/** A domain spec name as its KeySpec number. */
export const specToProto = (spec: KeySpecName): KeySpec => SPEC_TO_PROTO[spec];

const ORIGIN_TO_PROTO: Record<KeyOriginName, KeyOrigin> = {
  GENERATED: KeyOrigin.KEY_ORIGIN_GENERATED,
  IMPORTED: KeyOrigin.KEY_ORIGIN_IMPORTED,
  PUBLIC: KeyOrigin.KEY_ORIGIN_PUBLIC,
  UNWRAPPED: KeyOrigin.KEY_ORIGIN_UNWRAPPED,
  DERIVED: KeyOrigin.KEY_ORIGIN_DERIVED,
};
/** A domain origin name as its KeyOrigin number. */
export const originToProto = (o: KeyOriginName): KeyOrigin => ORIGIN_TO_PROTO[o];

const USAGE_NAME: Record<number, Usage> = {
  [KeyUsage.KEY_USAGE_ENCRYPT]: "encrypt",
  [KeyUsage.KEY_USAGE_DECRYPT]: "decrypt",
  [KeyUsage.KEY_USAGE_SIGN]: "sign",
  [KeyUsage.KEY_USAGE_VERIFY]: "verify",
  [KeyUsage.KEY_USAGE_WRAP]: "wrap",
  [KeyUsage.KEY_USAGE_UNWRAP]: "unwrap",
  [KeyUsage.KEY_USAGE_DERIVE]: "derive",
};
const USAGE_ENUM = Object.fromEntries(Object.entries(USAGE_NAME).map(([k, v]) => [v, Number(k) as KeyUsage])) as Record<Usage, KeyUsage>;

/** Requested usages as names; INVALID_ARGUMENT for an unknown number (UNSPECIFIED included). */
export function usagesFromProto(usages: readonly KeyUsage[]): Usage[] {
  return usages.map((r) => {
    const u = USAGE_NAME[r];
    if (!u) throw invalid(`usages: unknown usage ${r}`);
    return u;
  });
}

/** Usage names as KeyUsage numbers. */
export const usagesToProto = (u: readonly Usage[]): KeyUsage[] => u.map((x) => USAGE_ENUM[x]);

/** A domain key as hsm.v1.Key; `heldBy`: the nodes holding it (GetKey in a cluster). */
export function keyToProto(k: Key, heldBy: string[] = []): ProtoKey {
  return {
    id: k.id,
    label: k.label,
    spec: specToProto(k.spec),
    usages: usagesToProto(k.usages),
    state: stateToProto(k.state),
    origin: originToProto(k.origin),
    createdAt: k.createdAt,
    publicKeySpki: k.publicKeySpki,
    publicOnly: k.publicOnly,
    exportable: k.exportable,
    version: k.version,
    owner: k.owner,
    heldBy,
    sharedWith: k.sharedWith,
    description: k.description,
    tags: { ...k.tags },
    deletionDate: k.deletionDate,
    minDecryptionVersion: k.minDecryptionVersion,
    rotationPeriodDays: k.rotationPeriodDays,
    nextRotationAt: k.nextRotationAt,
    validTo: k.validTo,
    aliases: [...k.aliases],
    versionCount: k.versionCount,
  };
}

const STATE_ENUM: Readonly<Record<KeyStateName, KeyState>> = {
  ENABLED: KeyState.KEY_STATE_ENABLED,
  DISABLED: KeyState.KEY_STATE_DISABLED,
  PENDING_DELETION: KeyState.KEY_STATE_PENDING_DELETION,
  PENDING_IMPORT: KeyState.KEY_STATE_PENDING_IMPORT,
};
/** A state name as KeyState. */
export const stateToProto = (s: KeyStateName): KeyState => STATE_ENUM[s];
/** A KeyState as its name (undefined for UNSPECIFIED or an unknown number). */
export const stateFromProto = (s: KeyState): KeyStateName | undefined => Object.entries(STATE_ENUM).find(([, v]) => v === s)?.[0] as KeyStateName | undefined;

/** GenerateKeyRequest → domain. */
export function generateKeyFromProto(r: GenerateKeyRequest): GenerateKeyInput {
  return {
    spec: specFromProto(r.spec),
    label: r.label,
    usages: usagesFromProto(r.usages),
    exportable: r.exportable,
    requestId: r.requestId,
    description: r.description,
    tags: { ...r.tags },
    rotationPeriodDays: r.rotationPeriodDays,
  };
}

const FORMAT_NAME: Partial<Record<PublicKeyFormat, PublicKeyFormatName>> = {
  [PublicKeyFormat.PUBLIC_KEY_FORMAT_SPKI_DER]: "SPKI_DER",
  [PublicKeyFormat.PUBLIC_KEY_FORMAT_PEM]: "PEM",
  [PublicKeyFormat.PUBLIC_KEY_FORMAT_JWK]: "JWK",
};

/** ImportPublicKeyRequest → domain; INVALID_ARGUMENT for a format other than SPKI_DER, PEM or JWK. */
export function importPublicKeyFromProto(r: ImportPublicKeyRequest): ImportPublicKeyInput {
  const format = FORMAT_NAME[r.format];
  if (!format) throw invalid("format must be SPKI_DER, PEM or JWK");
  return { format, publicKey: r.publicKey, label: r.label, usages: usagesFromProto(r.usages), requestId: r.requestId };
}

/** ImportKeyRequest → domain. */
export function importKeyFromProto(r: ImportKeyRequest): ImportKeyInput {
  return {
    spec: specFromProto(r.spec),
    label: r.label,
    usages: usagesFromProto(r.usages),
    exportable: r.exportable,
    importKeyId: r.importKeyId,
    wrappedKeyMaterial: r.wrappedKeyMaterial,
    publicKeySpki: r.publicKeySpki,
    requestId: r.requestId,
    validTo: r.validTo,
    keyId: r.keyId,
    description: r.description,
    tags: { ...r.tags },
  };
}

/**
 * ListKeysRequest → domain: spec 0 is no filter, a number the API does not define matches no key
 * (as before); usage 0 is no filter, an unknown one INVALID_ARGUMENT.
 */
export function listKeysFromProto(r: ListKeysRequest): ListKeysQuery {
  let usage: Usage | undefined;
  if (r.usage) {
    usage = USAGE_NAME[r.usage];
    if (!usage) throw invalid(`usage filter ${r.usage} is not a KeyUsage`);
  }
  const spec = r.spec ? (SPEC_FROM_PROTO.get(r.spec) ?? null) : undefined;
  // Issue 13 (lane S): state (UNSPECIFIED: any) and tag filters.
  const state = r.state ? stateFromProto(r.state) : undefined;
  if (r.state && !state) throw invalid(`state filter ${r.state} is not a KeyState`);
  if (r.tagValue && !r.tagKey) throw invalid("tag_value needs tag_key: name the tag whose value to match");
  if (r.tagKey) checkTagKey(r.tagKey, "tag_key");
  return { pageSize: r.pageSize, pageToken: r.pageToken, labelPrefix: r.labelPrefix, spec, usage, state, tagKey: r.tagKey, tagValue: r.tagValue };
}

/** A page of domain keys as ListKeysResponse. */
export const keyPageToProto = (p: KeyPage): ListKeysResponse => ({ keys: p.keys.map((k) => keyToProto(k)), nextPageToken: p.nextPageToken });

/** GetPublicKey's domain answer as the response (the same fields). */
export const publicKeyToProto = (p: PublicKeyView): GetPublicKeyResponse => ({ keyId: p.keyId, spkiDer: p.spkiDer, pem: p.pem, jwk: p.jwk, version: p.version });

/** GetImportParameters' domain answer as the response (the same fields). */
export const importParametersToProto = (p: ImportParameters): GetImportParametersResponse => ({ ...p });
