import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConnectError } from '../errors.js';
import { type Endpoint, formatEndpoint } from '../routing/endpoint.js';

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

export interface Upstream {
  readonly socket: Socket;
  readonly endpoint: Endpoint;
}

/**
 * Connects to the first candidate that accepts, retrying each as ProxyMachine did. Rejects
 * with ConnectError naming the last candidate tried, or with the signal's reason when the
 * client went away meanwhile.
 */
export async function connectUpstream(plan: ConnectPlan, signal: AbortSignal): Promise<Upstream> {
  let last: Error | undefined;
  for (const endpoint of plan.remotes) {
    for (let attempt = 1; attempt <= plan.tries; attempt++) {
      signal.throwIfAborted();
      try {
        return { socket: await attemptOnce(endpoint, plan.timeoutMs, signal), endpoint };
      } catch (err) {
        signal.throwIfAborted();
        last = err as Error;
      }
      if (attempt < plan.tries) await sleep(plan.retryDelayMs, undefined, { signal });
    }
  }
  const backend = formatEndpoint(plan.remotes[plan.remotes.length - 1]!);
  throw new ConnectError(backend, `could not connect to ${backend}: ${last?.message ?? 'no candidates'}`, { cause: last });
}

function attemptOnce(endpoint: Endpoint, timeoutMs: number, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: endpoint.host, port: endpoint.port, allowHalfOpen: true, noDelay: true });
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error): void => fail(err);
    const onAbort = (): void => fail(signal.reason as Error);
    const timer = setTimeout(() => fail(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('error', onError);
      signal.removeEventListener('abort', onAbort);
    };
    socket.once('error', onError);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      cleanup();
      resolve(socket);
    });
  });
}
