import type { Decision } from '../routing/decision.js';

/** What a router sees of a client connection (CONTRACT §2: the `conn` argument). */
export interface ConnInfo {
  readonly tenant: string;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
}

/** Which optional hooks a router script registered. */
export interface RouterHooks {
  readonly accept: boolean;
  readonly connectError: boolean;
  readonly inactivityError: boolean;
}

/**
 * The seam between the socket core and the sandbox. The core only ever asks through this
 * asynchronous interface, so where the router runs (an isolate in this process, a worker
 * process) is the sandbox's business. Every method either resolves with a validated value
 * or rejects with a RouterError that says why.
 */
export interface Router {
  /** Which hooks the script registered; undefined until a cold router is first warmed. */
  readonly hooks: RouterHooks | undefined;
  /** Builds the router's isolate if it is cold; resolves with its hooks. Rejects with RouterError. */
  warm(): Promise<RouterHooks>;
  /** proxyAccept: a decision before any byte, or undefined to wait for data. */
  accept(conn: ConnInfo): Promise<Decision | undefined>;
  /** proxy: the decision for everything received so far (latin1, one character per byte). */
  route(data: string, conn: ConnInfo): Promise<Decision>;
  /** proxyConnectError: every candidate failed; `remote` is the last one tried. */
  connectError(remote: string, conn: ConnInfo): Promise<void>;
  /** proxyInactivityError: the relay was idle past its timeout. */
  inactivityError(remote: string, conn: ConnInfo): Promise<void>;
  /** Releases the isolate; calls after this reject. */
  dispose(): void;
}
