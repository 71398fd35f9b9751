/**
 * Aliases (issue 13): rows in the state store (`aliases/<name>`, the source of truth), this node's
 * copy of them (loaded at start and kept current by a watch of `aliases/`, so that an alias made on
 * one node resolves on every node), and the rules of making, re-pointing, deleting, listing and
 * resolving them. Transport-free; the access pipeline resolves `alias/NAME` through
 * {@link KeyAliases.resolve} before it checks the key.
 */
import { Code, HsmError, invalid, notFound, precondition } from "../errors";
import { SortedKeys, type Op, type StateStore, type WatchEvent } from "../store";
import { ALIASES_PREFIX, aliasKey, aliasNameOf, aliasVisible, checkAliasName, decodeAlias, encodeAlias, repointRefusal, type AliasRecord } from "./alias-rules";
import type { KeyRecords } from "./key-records";
import { recordKey, type KeyRecord, type UserRef } from "./record";

/** Rows read per page at start. */
const LOAD_PAGE = 1000;
/** Aliases one ListAliases call examines at most (its cost is bounded by this, not by the alias count). */
export const ALIAS_SCAN_LIMIT = 10_000;
/** Compare-and-put attempts before a re-point or delete answers UNAVAILABLE. */
const ATTEMPTS = 20;

/** What {@link KeyAliases} needs. */
export interface KeyAliasesOptions {
  store: StateStore;
  records: KeyRecords;
  /** ListAliases' page_size at most (config limits.maxPageSize). @default 1000 */
  maxPageSize?: number;
  now?: () => Date;
}

/** One page of aliases. */
export interface AliasPage {
  aliases: AliasRecord[];
  nextPageToken: string;
}

interface Slot {
  alias: AliasRecord;
  revision: number;
}

/** The aliases of the cluster, as this node knows them, and their rules. */
export class KeyAliases {
  private readonly map = new Map<string, Slot>();
  private readonly names = new SortedKeys();
  private readonly byTarget = new Map<string, Set<string>>();
  /** Names this node deleted at a revision its watch has not delivered yet: older events must not bring them back. */
  private readonly deletedAt = new Map<string, number>();
  private unwatch: (() => void) | undefined;
  private readonly now: () => Date;

  constructor(private readonly opts: KeyAliasesOptions) {
    this.now = opts.now ?? (() => new Date());
  }

  get size(): number {
    return this.map.size;
  }

  /** Loads every alias row and follows `aliases/` from the revision read before the first page. */
  async start(): Promise<void> {
    const { store } = this.opts;
    const rev = store.revision();
    let after: string | undefined;
    for (;;) {
      const page = await store.list(ALIASES_PREFIX, { startAfter: after, limit: LOAD_PAGE });
      for (const e of page) this.take(aliasNameOf(e.key), decodeAlias(e.value), e.modRevision, true);
      if (page.length < LOAD_PAGE) break;
      after = page[page.length - 1]!.key;
    }
    this.unwatch = store.watch(ALIASES_PREFIX, rev, (ev: WatchEvent) => {
      this.take(aliasNameOf(ev.key), ev.type === "put" && ev.value ? decodeAlias(ev.value) : undefined, ev.revision, true);
    });
  }

  stop(): void {
    this.unwatch?.();
    this.unwatch = undefined;
  }

  /** This node's copy of an alias (no store read). */
  get(name: string): AliasRecord | undefined {
    return this.map.get(name)?.alias;
  }

  /** The names of the aliases that point at a key, sorted. */
  namesOf(keyId: string): string[] {
    return [...(this.byTarget.get(keyId) ?? [])].sort();
  }

  /**
   * The key id `name` points at, for `userId`. NOT_FOUND, the same as for an unknown key id, when
   * the alias does not exist or the caller may not see it; NOT_FOUND naming the key when the caller
   * may see the alias but its key no longer exists. A miss on this node's copy is decided again on
   * the store's (a fresh read), as keys are: an alias made on another node a moment ago counts.
   */
  async resolve(userId: string, name: string, field = "key_id"): Promise<string> {
    checkAliasName(name, field);
    let a = this.get(name);
    let target = a ? this.opts.records.get(a.targetKeyId) : undefined;
    if (!a || !target || !aliasVisible(a, target, userId)) {
      a = await this.fresh(name);
      // An unknown alias costs the same two fresh reads as one the caller may not see (its row,
      // then its key's record): the answer's timing does not tell which names exist. "aliases/"
      // itself is never a row.
      target = a ? await this.opts.records.fresh(a.targetKeyId) : void (await this.opts.store.getFresh?.(ALIASES_PREFIX));
    }
    if (!a || !aliasVisible(a, target, userId)) throw notFound(`${name} not found`);
    if (!target) throw notFound(`${name} points at key ${a.targetKeyId}, which no longer exists: re-point it (UpdateAlias) or delete it`);
    return a.targetKeyId;
  }

  /** Makes an alias of `target` (a key `owner` owns: the access layer checked). */
  async create(owner: UserRef, name: string, target: KeyRecord): Promise<AliasRecord> {
    checkAliasName(name, "alias_name", true);
    const exists = () => precondition(`${name} already exists: UpdateAlias re-points it`);
    if (this.get(name)) throw exists();
    const at = this.now().toISOString();
    const a: AliasRecord = { name, targetKeyId: target.id, owner: { user: owner.user, userId: owner.userId }, createdAt: at, updatedAt: at };
    const { store } = this.opts;
    const res = await store.txn(
      [
        { key: aliasKey(name), op: "absent" },
        { key: recordKey(target.id), op: "present" },
      ],
      [{ type: "put", key: aliasKey(name), value: encodeAlias(a) }],
    );
    if (!res.succeeded) {
      if (await store.get(aliasKey(name))) throw exists();
      throw notFound(`key ${target.id} not found`);
    }
    this.take(name, a, res.revision, false);
    return a;
  }

  /**
   * Re-points an alias (its owner only) to `target`, a key the caller owns of the same type and
   * usages as the alias's key now (a dangling alias may move to any key). A compare-and-put on the
   * alias row, which also requires the new key's record: never a half-made change.
   */
  async update(caller: UserRef, name: string, target: KeyRecord): Promise<AliasRecord> {
    checkAliasName(name, "alias_name");
    const { store, records } = this.opts;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const { a, modRevision } = await this.ownedRow(caller, name, "re-point");
      const current = records.get(a.targetKeyId) ?? (await records.fresh(a.targetKeyId));
      if (a.targetKeyId === target.id) return a;
      const why = current ? repointRefusal(current, target) : undefined;
      if (why) throw precondition(`${name} cannot move from key ${current!.id} to key ${target.id}: ${why}`);
      const next: AliasRecord = { ...a, targetKeyId: target.id, updatedAt: this.now().toISOString() };
      const res = await store.txn(
        [
          { key: aliasKey(name), op: "modRevision", equals: modRevision },
          { key: recordKey(target.id), op: "present" },
        ],
        [{ type: "put", key: aliasKey(name), value: encodeAlias(next) }],
      );
      if (res.succeeded) {
        this.take(name, next, res.revision, false);
        return next;
      }
      if (!(await store.get(recordKey(target.id)))) throw notFound(`key ${target.id} not found`);
    }
    throw new HsmError(Code.Unavailable, `${name}: too many concurrent updates, retry`, { transient: true });
  }

  /** Deletes an alias (its owner only); its key is untouched. */
  async delete(caller: UserRef, name: string): Promise<void> {
    checkAliasName(name, "alias_name");
    const { store } = this.opts;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const { modRevision } = await this.ownedRow(caller, name, "delete");
      const res = await store.txn([{ key: aliasKey(name), op: "modRevision", equals: modRevision }], [{ type: "delete", key: aliasKey(name) }]);
      if (res.succeeded) {
        this.take(name, undefined, res.revision, false);
        return;
      }
    }
    throw new HsmError(Code.Unavailable, `${name}: too many concurrent updates, retry`, { transient: true });
  }

  /**
   * One page of the aliases `userId` may see, by name; `keyId`: only those of that key (the caller
   * checked it may use it). One call examines at most {@link ALIAS_SCAN_LIMIT} aliases (and at least
   * a full page): a short page with a next page token goes on from where it stopped.
   */
  list(userId: string, q: { keyId?: string; pageSize: number; pageToken: string }): AliasPage {
    const maxPageSize = this.opts.maxPageSize ?? 1000;
    const size = q.pageSize === 0 ? Math.min(100, maxPageSize) : q.pageSize;
    if (size > maxPageSize) throw invalid(`page_size must be at most ${maxPageSize}`);
    let cursor = "";
    if (q.pageToken) {
      const after = Buffer.from(q.pageToken, "base64url").toString("utf8");
      if (!after.startsWith("a:alias/")) throw invalid("page_token is not one this service issued");
      cursor = after.slice(2);
    }
    const token = (name: string) => Buffer.from(`a:${name}`).toString("base64url");
    const candidates = q.keyId !== undefined ? this.namesOf(q.keyId).filter((n) => n > cursor) : this.names.from(cursor, true);
    const out: AliasRecord[] = [];
    let budget = Math.max(ALIAS_SCAN_LIMIT, size + 1);
    for (const name of candidates) {
      if (budget-- <= 0) return { aliases: out, nextPageToken: token(cursor) };
      const a = this.get(name);
      if (a && aliasVisible(a, this.opts.records.get(a.targetKeyId), userId)) {
        if (out.length === size) return { aliases: out, nextPageToken: token(out[out.length - 1]!.name) };
        out.push(a);
      }
      cursor = name;
    }
    return { aliases: out, nextPageToken: "" };
  }

  /** The store ops that delete a key's aliases, for the txn that deletes the key (DeleteKey, destruction). */
  deleteOpsFor(keyId: string): Op[] {
    return this.namesOf(keyId).map((n) => ({ type: "delete" as const, key: aliasKey(n) }));
  }

  /** Forgets the aliases a committed txn at `revision` deleted with their key (see {@link deleteOpsFor}). */
  deletedWithKey(names: readonly string[], revision: number): void {
    for (const n of names) this.take(n, undefined, revision, false);
  }

  /** The alias row as the store holds it, checked: visible to the caller (else NOT_FOUND) and owned by it (else PERMISSION_DENIED). */
  private async ownedRow(caller: UserRef, name: string, verb: string): Promise<{ a: AliasRecord; modRevision: number }> {
    const { store, records } = this.opts;
    const e = (await store.getFresh?.(aliasKey(name))) ?? (await store.get(aliasKey(name)));
    const a = e ? decodeAlias(e.value) : undefined;
    if (!e || !a || !aliasVisible(a, records.get(a.targetKeyId) ?? (await records.fresh(a.targetKeyId)), caller.userId)) throw notFound(`${name} not found`);
    if (a.owner.userId !== caller.userId) throw new HsmError(Code.PermissionDenied, `${name} belongs to ${a.owner.user}: only its owner may ${verb} it`);
    return { a, modRevision: e.modRevision };
  }

  /** The alias as the replicated store holds it now (one fresh read where the store has them), applied here. */
  private async fresh(name: string): Promise<AliasRecord | undefined> {
    const { store } = this.opts;
    if (!store.getFresh) return this.get(name);
    const e = await store.getFresh(aliasKey(name));
    if (!e) return undefined;
    const a = decodeAlias(e.value);
    this.take(name, a, e.modRevision, false);
    return a;
  }

  /**
   * Applies an alias row at `revision` (undefined: deleted), unless this node knows a newer state
   * (a write of its own that the watch has not delivered yet). `watched`: from the watch or the
   * load, which deliver in order, so a deletion this node remembered is settled by them.
   */
  private take(name: string, a: AliasRecord | undefined, revision: number, watched: boolean): void {
    const cur = this.map.get(name);
    const gone = this.deletedAt.get(name);
    if (watched && gone !== undefined && gone <= revision) this.deletedAt.delete(name);
    if ((cur && cur.revision >= revision) || (gone !== undefined && gone >= revision)) return;
    if (cur) this.unindex(cur.alias);
    if (a) {
      this.map.set(name, { alias: a, revision });
      this.names.insert(name);
      let s = this.byTarget.get(a.targetKeyId);
      if (!s) this.byTarget.set(a.targetKeyId, (s = new Set()));
      s.add(name);
    } else {
      this.map.delete(name);
      this.names.delete(name);
      if (!watched) this.deletedAt.set(name, revision);
    }
  }

  private unindex(a: AliasRecord): void {
    const s = this.byTarget.get(a.targetKeyId);
    s?.delete(a.name);
    if (s?.size === 0) this.byTarget.delete(a.targetKeyId);
  }
}
