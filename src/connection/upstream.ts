import { channel } from 'node:diagnostics_channel';
import { connect, getDefaultAutoSelectFamily, getDefaultAutoSelectFamilyAttemptTimeout, isIP, type Socket } from 'node:net';
import { ConnectError } from '../errors.js';
import { type Endpoint, formatEndpoint } from '../routing/endpoint.js';
import { type LookupFunction, systemLookup } from '../routing/resolver.js';

export interface ConnectPlan {
  /** Candidates in failover order. */
  readonly remotes: readonly Endpoint[];
  /** Attempts on one candidate before the next (ProxyMachine: 10). */
  readonly tries: number;
  /** Pause between two attempts on the same candidate (ProxyMachine: 100 ms). */
  readonly retryDelayMs: number;
  /** Time one attempt may take. */
  readonly timeoutMs: number;
}

/** What `attemptChannel` publishes once per connect attempt. */
export interface AttemptMessage {
  readonly endpoint: Endpoint;
  /** Absent when the attempt connected. */
  readonly error?: Error & { code?: string };
}

/**
 * Every connect attempt's outcome, for observers (diagnostics_channel): whichever relay made
 * it, a net.Socket or the native one. Publishing costs nothing while nobody subscribes.
 */
export const attemptChannel = channel('switchyard:upstream-attempt');

/** One connect attempt: resolves with the connected upstream, rejects on failure or cancel. */
export type Dial<T> = (endpoint: Endpoint, timeoutMs: number, cancel: ConnectCancel) => Promise<T>;

/** What a dial connected, and the candidate it connected to. */
export interface Connected<T> {
  readonly upstream: T;
  readonly endpoint: Endpoint;
}

/** A connect attempt that took longer than its timeout. */
export class ConnectTimeoutError extends Error {
  constructor(ms: number) {
    super(`connect timed out after ${ms} ms`);
  }
}

/**
 * Stops a connect in progress when the client goes away: one waiter at a time, which is all a
 * connect needs (an AbortController and its EventTarget cost about 5 µs per connection).
 */
export class ConnectCancel {
  #reason: Error | undefined;
  #waiter: ((reason: Error) => void) | undefined;

  get reason(): Error | undefined {
    return this.#reason;
  }

  cancel(reason: Error): void {
    if (this.#reason !== undefined) return;
    this.#reason = reason;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.(reason);
  }

  throwIfCancelled(): void {
    if (this.#reason !== undefined) throw this.#reason;
  }

  /** `onCancel` runs if the connect is cancelled before `release()` (at once if it already was). */
  hold(onCancel: (reason: Error) => void): void {
    if (this.#reason !== undefined) onCancel(this.#reason);
    else this.#waiter = onCancel;
  }

  release(): void {
    this.#waiter = undefined;
  }
}

/**
 * Connects to the first candidate that accepts, retrying each as ProxyMachine did. Rejects
 * with ConnectError naming the last candidate tried, or with the cancel's reason when the
 * client went away meanwhile.
 */
export async function connectUpstream<T>(plan: ConnectPlan, cancel: ConnectCancel, dial: Dial<T>): Promise<Connected<T>> {
  let last: Error | undefined;
  for (const endpoint of plan.remotes) {
    for (let attempt = 1; attempt <= plan.tries; attempt++) {
      cancel.throwIfCancelled();
      try {
        const upstream = await dial(endpoint, plan.timeoutMs, cancel);
        if (attemptChannel.hasSubscribers) attemptChannel.publish({ endpoint } satisfies AttemptMessage);
        return { upstream, endpoint };
      } catch (err) {
        if (attemptChannel.hasSubscribers) attemptChannel.publish({ endpoint, error: err as Error } satisfies AttemptMessage);
        cancel.throwIfCancelled();
        last = err as Error;
      }
      if (attempt < plan.tries) await pause(plan.retryDelayMs, cancel);
    }
  }
  const backend = formatEndpoint(plan.remotes[plan.remotes.length - 1]!);
  throw new ConnectError(backend, `could not connect to ${backend}: ${last?.message ?? 'no candidates'}`, { cause: last });
}

/** The pause between two attempts; cut short (rejecting) by a cancel. */
function pause(ms: number, cancel: ConnectCancel): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cancel.release();
      resolve();
    }, ms);
    cancel.hold((reason) => {
      clearTimeout(timer);
      reject(reason);
    });
  });
}

/** A connect attempt with a net.Socket. */
export const dialSocket: Dial<Socket> = (endpoint, timeoutMs, cancel) => {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true, noDelay: true });
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error): void => fail(err);
    const timer = setTimeout(() => fail(new ConnectTimeoutError(timeoutMs)), timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('error', onError);
      cancel.release();
    };
    socket.once('error', onError);
    cancel.hold(fail);
    socket.once('connect', () => {
      cleanup();
      resolve(socket);
    });
  });
};

/**
 * A dial of IP addresses made to take host names too, for a data path that connects to
 * addresses only. A name is resolved first (`lookup`: the system resolver, every address in its
 * order) and its addresses are tried in turn, as Node's net.connect does (autoSelectFamily):
 * each but the last for at most autoSelectFamilyAttemptTimeout (250 ms), all of it — the
 * lookup too — within the attempt's timeout. An IP address is dialed as it is.
 */
export function resolving<T>(dialAddress: Dial<T>, lookup: LookupFunction = systemLookup): Dial<T> {
  return async (endpoint, timeoutMs, cancel) => {
    if (isIP(endpoint.host) !== 0) return dialAddress(endpoint, timeoutMs, cancel);
    const deadline = performance.now() + timeoutMs;
    const resolved = await within(lookup(endpoint.host), timeoutMs, cancel);
    const addresses = getDefaultAutoSelectFamily() ? resolved : resolved.slice(0, 1);
    let last: unknown = addresses.length > 0 ? new ConnectTimeoutError(timeoutMs) : new Error(`${endpoint.host} has no address`);
    for (const [i, host] of addresses.entries()) {
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) break;
      const ms = i < addresses.length - 1 ? Math.min(left, getDefaultAutoSelectFamilyAttemptTimeout()) : left;
      try {
        return await dialAddress({ host, port: endpoint.port }, ms, cancel);
      } catch (err) {
        cancel.throwIfCancelled();
        // The attempt's own time ran out, not just this address's: say so as one dial would.
        last = err instanceof ConnectTimeoutError && ms === left ? new ConnectTimeoutError(timeoutMs) : err;
      }
    }
    throw last;
  };
}

/** A lookup, bounded by the attempt's timeout; a cancel stops the wait (the lookup finishes unheard). */
function within<T>(work: Promise<T>, ms: number, cancel: ConnectCancel): Promise<T> {
  return new Promise((resolve, reject) => {
    let settled = false;
    /** The first outcome settles it; the cancel is released once (it may be held by the next step since). */
    const settle = (outcome: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      cancel.release();
      outcome();
    };
    const timer = setTimeout(() => settle(() => reject(new ConnectTimeoutError(ms))), ms);
    cancel.hold((reason) => settle(() => reject(reason)));
    work.then(
      (value) => settle(() => resolve(value)),
      (err: unknown) => settle(() => reject(err as Error)),
    );
  });
}
