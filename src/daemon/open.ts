import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config";
import { freeFds } from "../grpc";
import type { Metrics } from "../metrics";
import { Device } from "../pkcs11";
import { DirLock, openEmbeddedStore, openEtcdStore, type StateStore } from "../store";

/**
 * Opens the state store (etcd in a cluster, else the embedded file store) under the node data
 * directory's lock; on failure the lock is released before the error goes up.
 */
export async function openStore(config: Config, log: (msg: string) => void): Promise<{ store: StateStore; nodeLock: DirLock | undefined }> {
  const cluster = config.cluster;
  mkdirSync(config.node.dataDir, { recursive: true, mode: 0o700 });
  // One process per node data directory (its audit log has one writer): the embedded store locks its
  // own directory; on etcd the data directory is locked (offline commands such as `hsmd officer
  // unlock` take the same lock).
  const nodeLock = cluster ? DirLock.acquire(config.node.dataDir, "node data directory") : undefined;
  const tStore = Date.now();
  let store: StateStore;
  try {
    store = cluster
      ? await openEtcdStore({ endpoints: [...cluster.endpoints], prefix: `hsmd/${cluster.name}/`, tls: cluster.tls ?? undefined, log, unmirrored: ["keys/", "requests/"] })
      : await openEmbeddedStore(join(config.node.dataDir, "store"));
  } catch (e) {
    nodeLock?.release();
    throw e;
  }
  log(`state store (${cluster ? "etcd" : "embedded"}) open at revision ${store.revision()} in ${Date.now() - tStore} ms`);
  return { store, nodeLock };
}

/** Opens the PKCS#11 device from the config's device profile, its operations observed by the metrics. */
export async function openDevice(config: Config, metrics: Metrics, log: (msg: string) => void): Promise<Device> {
  return Device.open({
    module: config.device.module,
    tokenLabel: config.device.tokenLabel ?? undefined,
    slot: config.device.slot ?? undefined,
    pin: config.device.pin,
    poolSize: config.device.poolSize,
    workers: config.device.workers,
    disabledMechanisms: config.device.disabledMechanisms,
    // In a cluster, keys live in their records (wrapped) and every node materializes them: as
    // session objects, which SoftHSM2 creates ~50x faster than token objects (each of those is a
    // file it rescans); a restart materializes them again from the records.
    tokenObjects: !config.device.quirks.sessionObjectsOnly && !config.cluster,
    sessionCopies: config.device.quirks.sessionCopiesForCrypto,
    observer: (m, s, ok) => metrics.observeDevice(m, s, ok),
    log,
    freeFds,
  });
}
