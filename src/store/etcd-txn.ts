/**
 * A store txn as an etcd txn: `absent` is create revision = 0, `present` create revision > 0,
 * `modRevision` mod revision equal; puts ask for the previous key-value (for the own-write overlay's
 * create revision and version). And whether a committed etcd txn changed anything.
 */
import { CompareResult, CompareTarget, type ICompare, type IRequestOp, type ITxnResponse } from "etcd3";
import type { Compare, Op } from "./types";

/** The etcd compares and success ops of a checked store txn; `etcdKey` prepends the cluster prefix. */
export function toEtcdTxn(etcdKey: (key: string) => Buffer, compares: Compare[], owned: Op[]): { compare: ICompare[]; success: IRequestOp[] } {
  const etcdCompares: ICompare[] = compares.map((c) => {
    const key = etcdKey(c.key);
    switch (c.op) {
      case "absent":
        return { key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 };
      case "present":
        return { key, target: CompareTarget.Create, result: CompareResult.Greater, create_revision: 0 };
      case "modRevision":
        return { key, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: c.equals };
    }
  });
  const success: IRequestOp[] = owned.map((op) => (op.type === "put" ? { request_put: { key: etcdKey(op.key), value: op.value, prev_kv: true } } : { request_delete_range: { key: etcdKey(op.key) } }));
  return { compare: etcdCompares, success };
}

/** Did the committed txn change a key (a put, or a delete of a key that existed)? If not, no new revision. */
export function txnChanged(owned: Op[], res: ITxnResponse): boolean {
  let changed = false;
  owned.forEach((op, i) => {
    if (op.type === "put") changed = true;
    else if (Number(res.responses[i]?.response_delete_range?.deleted ?? 0) > 0) changed = true;
  });
  return changed;
}
