/**
 * The small pieces of one client call: request metadata, the closed-client error, abort signals turned
 * into CANCELLED / DEADLINE_EXCEEDED, and waits that give up with the call.
 */
import * as grpc from "@grpc/grpc-js";
import { HsmClientError } from "./client-error";

/** grpc-js metadata from plain text headers; grpc-js validates the keys and throws on bad ones. */
export function metadataOf(headers: Record<string, string> | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (headers === undefined) return metadata;
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase().endsWith("-bin")) {
      throw new HsmClientError(grpc.status.INVALID_ARGUMENT, `metadata ${key}: binary (-bin) headers are not supported`);
    }
    metadata.set(key, value);
  }
  return metadata;
}

/** FAILED_PRECONDITION for a call on a closed client. */
export function closedError(): HsmClientError {
  return new HsmClientError(grpc.status.FAILED_PRECONDITION, "the HsmClient is closed");
}

/** Waits `ms` milliseconds, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortErrorOf(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortErrorOf(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `work`, unless `deadline` passes (DEADLINE_EXCEEDED) or `signal` aborts first; `work` itself runs on. */
export function within<T>(work: Promise<T>, deadline: Date, signal: AbortSignal | undefined): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    const onAbort = (): void => {
      cleanup();
      reject(abortErrorOf(signal!));
    };
    const timer = setTimeout(
      () => {
        cleanup();
        reject(new HsmClientError(grpc.status.DEADLINE_EXCEEDED, "the deadline passed while logging in again"));
      },
      Math.max(0, deadline.getTime() - Date.now()),
    );
    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        cleanup();
        resolve(value);
      },
      (err: unknown) => {
        cleanup();
        reject(HsmClientError.from(err));
      },
    );
  });
}

/** CANCELLED for an aborted signal, DEADLINE_EXCEEDED when its reason is a TimeoutError. */
export function abortErrorOf(signal: AbortSignal): HsmClientError {
  const reason: unknown = signal.reason;
  const timedOut = typeof reason === "object" && reason !== null && (reason as { name?: unknown }).name === "TimeoutError";
  return new HsmClientError(timedOut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED, timedOut ? "the call's abort signal timed out" : "the call was aborted", { cause: reason });
}
