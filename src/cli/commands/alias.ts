/** `alias …`: names for keys (issue 13). Every command that takes --key-id also takes alias/NAME. */
import type { Alias } from "../../sdk";
import { columns, fields } from "../render";
import { requireString, stringValue, type CommandSpec, type OptionSpec } from "../spec";

const NAME: OptionSpec = { type: "string", arg: "NAME", required: true, description: 'the alias: "alias/" then 1 to 250 of A-Z a-z 0-9 / _ - ("alias/hsmd/" is reserved)' };
const TARGET: OptionSpec = { type: "string", arg: "ID", required: true, description: "the key it names (its id, or another alias), one you own" };

const aliasView = (a: Alias) => ({ name: a.name, targetKeyId: a.targetKeyId, owner: a.owner, createdAt: a.createdAt, updatedAt: a.updatedAt });
const aliasText = (a: Alias) =>
  fields([
    ["name", a.name],
    ["key", a.targetKeyId],
    ["owner", a.owner],
    ["created", a.createdAt],
    ["updated", a.updatedAt],
  ]);

export const aliasCommands: CommandSpec[] = [
  {
    words: ["alias", "create"],
    summary: "name a key you own (alias/NAME works wherever a key id does)",
    options: { name: NAME, "key-id": TARGET },
    examples: ["hsmctl alias create --name alias/payments --key-id K", "hsmctl crypto encrypt --key-id alias/payments --in secret.txt --out secret.hce"],
    async run(ctx, values) {
      const a = await ctx.client().createAlias({ aliasName: requireString(values, "name"), targetKeyId: requireString(values, "key-id") });
      ctx.emit(aliasView(a), aliasText(a));
    },
  },
  {
    words: ["alias", "update"],
    summary: "re-point an alias you own to another key you own of the same type and usages",
    details: "Manual rotation: make a new key of the same spec and usages, then re-point the alias to it; callers that name the alias use the new key from then on.",
    options: { name: NAME, "key-id": { ...TARGET, description: "the key it names from now on (same type and usages as the current one)" } },
    examples: ["hsmctl alias update --name alias/payments --key-id K2"],
    async run(ctx, values) {
      const a = await ctx.client().updateAlias({ aliasName: requireString(values, "name"), targetKeyId: requireString(values, "key-id") });
      ctx.emit(aliasView(a), aliasText(a));
    },
  },
  {
    words: ["alias", "delete"],
    summary: "delete an alias you own (its key stays)",
    options: { name: NAME },
    async run(ctx, values) {
      const name = requireString(values, "name");
      await ctx.client().deleteAlias({ aliasName: name });
      ctx.emit({ name, deleted: true }, `deleted ${name}`);
    },
  },
  {
    words: ["alias", "list"],
    summary: "list the aliases you may see: yours and those of keys shared with you (every page)",
    options: { "key-id": { type: "string", arg: "ID", description: "only the aliases of this key (its id or an alias)" } },
    async run(ctx, values) {
      const out: Alias[] = [];
      for await (const a of ctx.client().listAllAliases({ keyId: stringValue(values, "key-id") ?? "" })) out.push(a);
      ctx.emit(
        { aliases: out.map(aliasView) },
        columns(
          ["NAME", "KEY", "OWNER", "UPDATED"],
          out.map((a) => [a.name, a.targetKeyId, a.owner, a.updatedAt]),
        ),
      );
    },
  },
];
