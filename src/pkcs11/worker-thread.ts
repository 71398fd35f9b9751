import type { Worker } from "node:worker_threads";
import type { Entry } from "./worker-pool";
import type { FromWorker, ToWorker } from "./worker-protocol";

/** Where a session worker is in its life: its batch or control step in flight, or why it takes no batch. */
export type ThreadState = "starting" | "ready" | "busy" | "reopen" | "broken" | "dead";

/**
 * The main thread's handle on one session worker: its state, its session (the handle, so that the
 * main thread can close it after the worker died), the batch it runs, and its one control step in
 * flight (open, close, stop: the pool sends one at a time, never beside a batch). The worker is
 * referenced only while it owes an answer, so an idle worker never keeps the process alive.
 */
export class WorkerThread {
  state: ThreadState = "starting";
  session: Buffer | undefined;
  batch: { id: number; entries: Entry[] } | undefined;
  /** Ended on purpose (it failed to start): its exit starts no replacement. */
  retired = false;
  /** The thread has exited: nothing sent to it is answered. */
  exited = false;
  private ctl: ((m: FromWorker | undefined) => void) | undefined;
  private owed = 0;

  constructor(
    readonly worker: Worker,
    readonly slot: number,
  ) {
    worker.unref();
  }

  /** Sends a control message (or none: the first, "loaded", comes unasked) and resolves with the answer, or undefined if the worker exits first. */
  request(msg?: ToWorker): Promise<FromWorker | undefined> {
    if (this.exited) return Promise.resolve(undefined);
    this.hold();
    return new Promise((resolve) => {
      this.ctl = (m) => {
        this.ctl = undefined;
        this.letGo();
        resolve(m);
      };
      if (msg) this.worker.postMessage(msg);
    });
  }

  /** A control answer arrived (or, with undefined, the worker is gone). */
  answer(m: FromWorker | undefined): void {
    this.ctl?.(m);
  }

  /** The worker owes an answer: keep the process alive until it comes. */
  hold(): void {
    if (this.owed++ === 0) this.worker.ref();
  }

  letGo(): void {
    if (this.owed > 0 && --this.owed === 0) this.worker.unref();
  }
}
