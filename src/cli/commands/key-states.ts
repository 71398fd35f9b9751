/** `key disable|enable|schedule-deletion|cancel-deletion|describe|tag|untag` (issue 13 lane S): key states and metadata, owner only. */
import { UsageError } from "../errors";
import { keyText, keyView } from "../render";
import { requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const KEY_ID: OptionSpec = { type: "string", arg: "ID", required: true, description: "the key's id" };

/** `--tag K=V` values as a map (a value may be empty: `K=`). */
export function parseTags(values: string[] | undefined, flag = "--tag"): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of values ?? []) {
    const i = t.indexOf("=");
    if (i <= 0) throw new UsageError(`${flag}: expected KEY=VALUE, got ${JSON.stringify(t)}`);
    out[t.slice(0, i)] = t.slice(i + 1);
  }
  return out;
}

export const keyStateCommands: CommandSpec[] = [
  {
    words: ["key", "disable"],
    summary: "refuse every use of a key you own until it is enabled again (management still works)",
    options: { "key-id": KEY_ID },
    async run(ctx, values) {
      const key = await ctx.client().disableKey({ keyId: requireString(values, "key-id") });
      ctx.emit(keyView(key), `disabled ${key.id}`);
    },
  },
  {
    words: ["key", "enable"],
    summary: "make a disabled key you own usable again",
    options: { "key-id": KEY_ID },
    async run(ctx, values) {
      const key = await ctx.client().enableKey({ keyId: requireString(values, "key-id") });
      ctx.emit(keyView(key), `enabled ${key.id}`);
    },
  },
  {
    words: ["key", "schedule-deletion"],
    summary: "destroy a key you own everywhere after a waiting period, unless cancelled",
    details: `The key is refused for every use at once (PENDING_DELETION) and destroyed on every node when the
window ends. --days is within the daemon's lifecycle.deletionWindowDays (default 7 to 30); without it,
the longest window. key cancel-deletion undoes it until then.`,
    options: { "key-id": KEY_ID, days: { type: "string", arg: "N", description: "days until destruction (default: the longest window the daemon allows)" } },
    examples: ["hsmctl key schedule-deletion --key-id K --days 7"],
    async run(ctx, values) {
      const daysText = stringValue(values, "days");
      const days = daysText === undefined ? 0 : Number(daysText);
      if (daysText !== undefined && (!Number.isInteger(days) || days < 1)) throw new UsageError(`--days: expected a whole number of days, got ${JSON.stringify(daysText)}`);
      const key = await ctx.client().scheduleKeyDeletion({ keyId: requireString(values, "key-id"), pendingWindowDays: days });
      ctx.emit(keyView(key), `key ${key.id} will be destroyed at ${key.deletionDate} (cancel with: hsmctl key cancel-deletion --key-id ${key.id})`);
    },
  },
  {
    words: ["key", "cancel-deletion"],
    summary: "cancel a scheduled deletion: the key returns to the state it had",
    options: { "key-id": KEY_ID },
    async run(ctx, values) {
      const key = await ctx.client().cancelKeyDeletion({ keyId: requireString(values, "key-id") });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["key", "describe"],
    summary: "set the description of a key you own (an empty one removes it)",
    options: { "key-id": KEY_ID, description: { type: "string", arg: "TEXT", required: true, description: "at most 8192 characters" } },
    examples: ['hsmctl key describe --key-id K --description "signs the nightly release"'],
    async run(ctx, values) {
      const key = await ctx.client().updateKeyDescription({ keyId: requireString(values, "key-id"), description: stringValue(values, "description") ?? "" });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["key", "tag"],
    summary: "add or replace tags on a key you own",
    options: { "key-id": KEY_ID, tag: { type: "string", arg: "KEY=VALUE", multiple: true, required: true, description: "a tag; repeat for more (at most 50 per key)" } },
    examples: ["hsmctl key tag --key-id K --tag team=payments --tag env=prod"],
    async run(ctx, values) {
      const tags = parseTags(values.tag as string[] | undefined);
      if (Object.keys(tags).length === 0) throw new UsageError("--tag is required");
      const key = await ctx.client().tagKey({ keyId: requireString(values, "key-id"), tags });
      ctx.emit(keyView(key), keyText(key));
    },
  },
  {
    words: ["key", "untag"],
    summary: "remove tags from a key you own (unknown tag keys are ignored)",
    options: { "key-id": KEY_ID, "tag-key": { type: "string", arg: "KEY", multiple: true, required: true, description: "a tag key to remove; repeat for more" } },
    async run(ctx, values) {
      const tagKeys = (values["tag-key"] as string[] | undefined) ?? [];
      if (tagKeys.length === 0) throw new UsageError("--tag-key is required");
      const key = await ctx.client().untagKey({ keyId: requireString(values, "key-id"), tagKeys });
      ctx.emit(keyView(key), keyText(key));
    },
  },
];
