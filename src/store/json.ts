/** Typed JSON records over the byte-valued store. */
import { Code, HsmError } from "../errors";
import type { StateStore, StoreEntry } from "./types";

export interface Codec<T> {
  encode(value: T): Buffer;
  decode(bytes: Buffer, key?: string): T;
}

/** UTF-8 JSON. decode throws INTERNAL (a stored record that does not parse is a bug or damage). */
export function jsonCodec<T>(): Codec<T> {
  return {
    encode: (value: T) => Buffer.from(JSON.stringify(value), "utf8"),
    decode: (bytes: Buffer, key?: string) => {
      try {
        return JSON.parse(bytes.toString("utf8")) as T;
      } catch (err) {
        throw new HsmError(Code.Internal, `stored record ${key ?? ""} is not valid JSON`, { cause: err });
      }
    },
  };
}

export interface JsonEntry<T> extends Omit<StoreEntry, "value"> {
  value: T;
}

function decoded<T>(e: StoreEntry | undefined, key: string): JsonEntry<T> | undefined {
  return e ? { ...e, value: jsonCodec<T>().decode(e.value, key) } : undefined;
}

export async function getJson<T>(store: StateStore, key: string): Promise<JsonEntry<T> | undefined> {
  return decoded<T>(await store.get(key), key);
}

export function putJson<T>(store: StateStore, key: string, value: T): Promise<number> {
  return store.put(key, jsonCodec<T>().encode(value));
}

/**
 * Like {@link getJson}, but on a miss reads straight from the replicated store where the store has
 * fresh reads (StateStore.getFresh): a record another node committed a moment ago.
 */
export async function getJsonFresh<T>(store: StateStore, key: string): Promise<JsonEntry<T> | undefined> {
  const cur = await getJson<T>(store, key);
  if (cur || !store.getFresh) return cur;
  return decoded<T>(await store.getFresh(key), key);
}

/**
 * The record as the replicated store holds it now (StateStore.getFresh, always, where the store has
 * it): for decisions that must not act on a mirror that lags another writer, such as approving or
 * rejecting a join request. On the embedded store, the same as {@link getJson}.
 */
export async function getJsonLatest<T>(store: StateStore, key: string): Promise<JsonEntry<T> | undefined> {
  if (!store.getFresh) return getJson<T>(store, key);
  return decoded<T>(await store.getFresh(key), key);
}
