import { CloseReason, RouterError } from '../errors.js';
import type { RouterOutcomes } from '../metrics/stats.js';
import type { Decision } from '../routing/decision.js';
import type { ConnInfo, Router, RouterHooks } from '../sandbox/router.js';

/**
 * One stored version of a tenant's router, as hosting mode serves it: the router, its version
 * number and source (for the errors' code frames), and the counters of what its calls came to
 * (the per-version metrics a gradual rollout is judged by). Calls pass through unchanged.
 */
export class VersionedRouter implements Router {
  readonly inner: Router;
  readonly version: number;
  readonly source: string;
  readonly #outcomes: RouterOutcomes;

  constructor(inner: Router, version: number, source: string, outcomes: RouterOutcomes) {
    this.inner = inner;
    this.version = version;
    this.source = source;
    this.#outcomes = outcomes;
  }

  get hooks(): RouterHooks | undefined {
    return this.inner.hooks;
  }

  warm(): Promise<RouterHooks> {
    return this.inner.warm();
  }

  route(data: string, conn: ConnInfo): Promise<Decision> {
    return this.#count(this.inner.route(data, conn));
  }

  accept(conn: ConnInfo): Promise<Decision | undefined> {
    return this.#count(this.inner.accept(conn));
  }

  connectError(remote: string, conn: ConnInfo): Promise<void> {
    return this.inner.connectError(remote, conn);
  }

  inactivityError(remote: string, conn: ConnInfo): Promise<void> {
    return this.inner.inactivityError(remote, conn);
  }

  dispose(): void {
    this.inner.dispose();
  }

  /** Counts a decision or a failure as the connection counts it in the tenant's stats. */
  async #count<D extends Decision | undefined>(call: Promise<D>): Promise<D> {
    try {
      const decision = await call;
      if (decision !== undefined) this.#outcomes.decided(decision.kind);
      return decision;
    } catch (err) {
      this.#outcomes.routerFailed(err instanceof RouterError ? err.reason : CloseReason.routerUnavailable);
      throw err;
    }
  }
}
