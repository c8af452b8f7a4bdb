import type { Decision } from '../routing/decision.js';
import type { ConnInfo, Router, RouterHooks } from '../sandbox/router.js';
import type { RouterOp, RouterRef } from './protocol.js';

/** How a proxy process reaches its master's routers. */
export interface RouterCalls {
  /** One call of router `router`; resolves with the master's answer, rejects with a RouterError. */
  call(router: number, op: RouterOp, conn?: ConnInfo, text?: string): Promise<unknown>;
  /** No connection of this process uses router `router` any more. */
  release(router: number): void;
}

/**
 * A tenant's router as a proxy process sees it: the master runs it in the node's sandbox pool
 * and validates every decision there (the master is the process that trusts nothing from the
 * sandbox); what comes back is a Decision already.
 */
export class RemoteRouter implements Router {
  readonly #calls: RouterCalls;
  readonly #id: number;
  #hooks: RouterHooks | undefined;
  #warming: Promise<RouterHooks> | undefined;
  #disposed = false;

  constructor(calls: RouterCalls, ref: RouterRef) {
    this.#calls = calls;
    this.#id = ref.id;
    this.#hooks = ref.hooks;
  }

  get hooks(): RouterHooks | undefined {
    return this.#hooks;
  }

  warm(): Promise<RouterHooks> {
    if (this.#hooks !== undefined) return Promise.resolve(this.#hooks);
    this.#warming ??= (this.#calls.call(this.#id, 'warm') as Promise<RouterHooks>).then(
      (hooks) => (this.#hooks = hooks),
      (err: unknown) => {
        this.#warming = undefined;
        throw err;
      },
    );
    return this.#warming;
  }

  async accept(conn: ConnInfo): Promise<Decision | undefined> {
    return ((await this.#calls.call(this.#id, 'accept', conn)) ?? undefined) as Decision | undefined;
  }

  route(data: string, conn: ConnInfo): Promise<Decision> {
    return this.#calls.call(this.#id, 'route', conn, data) as Promise<Decision>;
  }

  async connectError(remote: string, conn: ConnInfo): Promise<void> {
    await this.#calls.call(this.#id, 'connect-error', conn, remote);
  }

  async inactivityError(remote: string, conn: ConnInfo): Promise<void> {
    await this.#calls.call(this.#id, 'inactivity-error', conn, remote);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#calls.release(this.#id);
  }
}
