/**
 * A node's side of the cluster's change stream: it LISTENs for committed changes and applies
 * them in revision order, one at a time, each exactly once.
 *
 * The node's state reflects every change up to `applied`. On a notification (or every `pollMs`,
 * as a safety net and a liveness check) it reads the changes after `applied` and applies them in
 * order; `applied` moves past a change only once it has been applied, so a change that fails (the
 * store went away in the middle) is tried again, never skipped. A node that was disconnected
 * catches up on everything after `applied` when it reconnects: it LISTENs first and reads second,
 * so nothing committed in between is missed. A node so far behind that the changes it needs were
 * pruned reloads everything instead.
 *
 * While the store cannot be reached the feed is down; it reconnects with exponential backoff
 * (with jitter, so that nodes do not come back in lockstep).
 */
import type { Logger } from '../log.js';
import type { Change, ClusterStore, Subscription } from './store.js';

export interface ChangeFeedOptions {
  readonly store: ClusterStore;
  /** The revision the node's state reflects now (read before the state was loaded). */
  readonly from: number;
  /** Applies one change to the node. A rejection stops the catch-up; the change is tried again later. */
  readonly apply: (change: Change) => Promise<void>;
  /** Reloads the node's whole state; resolves the revision it reflects (read before reloading). */
  readonly reload: () => Promise<number>;
  readonly log: Logger;
  /** Reconnection backoff: the first wait and the longest (default 100 ms, 2 s). */
  readonly backoffMs?: readonly [number, number];
  /** How often changes are read without a notification (default 5 s). */
  readonly pollMs?: number;
  /** Changes read at once (default 500). */
  readonly batch?: number;
}

export const FeedState = { starting: 'starting', up: 'up', down: 'down', closed: 'closed' } as const;
export type FeedState = (typeof FeedState)[keyof typeof FeedState];

export class ChangeFeed {
  readonly #o: ChangeFeedOptions;
  readonly #log: Logger;
  #applied: number;
  #state: FeedState = FeedState.starting;
  #subscription: Subscription | undefined;
  /** Connection attempts so far: tells a stale loss from the current connection's. */
  #generation = 0;
  /** A catch-up is running; `#again` asks it for one more round. */
  #running: Promise<void> | undefined;
  #again = false;
  #failures = 0;
  #retry: NodeJS.Timeout | undefined;
  #poll: NodeJS.Timeout | undefined;
  /** Milliseconds spent applying changes (CPU and waits on the store), and changes applied. */
  #busyMs = 0;
  #count = 0;

  constructor(options: ChangeFeedOptions) {
    this.#o = options;
    this.#log = options.log.child({ component: 'changes' });
    this.#applied = options.from;
  }

  /** Connects (or starts retrying to) and catches up. Resolves once the first attempt has finished, whatever its outcome. */
  async start(): Promise<void> {
    await this.#connect();
    this.#poll = setInterval(() => {
      if (this.#state === FeedState.up) this.#kick();
    }, this.#o.pollMs ?? 5000).unref();
  }

  get state(): FeedState {
    return this.#state;
  }

  /** The last revision applied on this node. */
  get applied(): number {
    return this.#applied;
  }

  get figures(): { applied: number; changes: number; busyMs: number } {
    return { applied: this.#applied, changes: this.#count, busyMs: this.#busyMs };
  }

  async close(): Promise<void> {
    this.#state = FeedState.closed;
    clearTimeout(this.#retry);
    clearInterval(this.#poll);
    const s = this.#subscription;
    this.#subscription = undefined;
    await s?.close();
    await this.#running?.catch(() => undefined);
  }

  async #connect(): Promise<void> {
    if (this.#state === FeedState.closed) return;
    const generation = ++this.#generation;
    try {
      const subscription = await this.#o.store.subscribe(
        () => this.#kick(),
        (err) => this.#lost(generation, err),
      );
      if ((this.#state as FeedState) === FeedState.closed) {
        await subscription.close();
        return;
      }
      this.#subscription = subscription;
    } catch (err) {
      this.#down(err as Error);
      return;
    }
    const wasDown = this.#state === FeedState.down;
    this.#state = FeedState.up;
    this.#failures = 0;
    this.#log.info({ applied: this.#applied }, wasDown ? 'change stream reconnected; catching up' : 'change stream connected');
    this.#kick();
    await this.#running;
  }

  /** The LISTEN connection of attempt `generation` broke (a later attempt's loss is its own business). */
  #lost(generation: number, err: Error): void {
    if (generation !== this.#generation || this.#state === FeedState.down) return;
    this.#down(err);
  }

  /** The store is unreachable: note it and try again after the backoff. */
  #down(err: Error): void {
    if (this.#state === FeedState.closed) return;
    const wasUp = this.#state !== FeedState.down;
    this.#state = FeedState.down;
    const s = this.#subscription;
    this.#subscription = undefined;
    void s?.close();
    const [first, longest] = this.#o.backoffMs ?? [100, 2000];
    const waitMs = Math.min(longest, first * 2 ** this.#failures) * (0.5 + Math.random() / 2);
    this.#failures++;
    if (wasUp) this.#log.warn({ err: err.message, applied: this.#applied }, 'change stream down; routing on with the configuration in force');
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => void this.#connect(), waitMs).unref();
  }

  /** Runs a catch-up now, or one more after the running one. */
  #kick(): void {
    if (this.#running !== undefined) {
      this.#again = true;
      return;
    }
    this.#running = this.#catchUp().finally(() => {
      this.#running = undefined;
      if (this.#again && this.#state === FeedState.up) {
        this.#again = false;
        this.#kick();
      }
    });
  }

  async #catchUp(): Promise<void> {
    const batch = this.#o.batch ?? 500;
    try {
      for (;;) {
        this.#again = false;
        const { changes, complete } = await this.#o.store.changesAfter(this.#applied, batch);
        if (this.#state !== FeedState.up) return;
        if (!complete) {
          this.#log.warn({ applied: this.#applied }, 'changes needed were pruned; reloading every tenant');
          this.#applied = await this.#o.reload();
          continue;
        }
        for (const change of changes) {
          if (this.#state !== FeedState.up) return;
          const started = performance.now();
          await this.#o.apply(change);
          this.#busyMs += performance.now() - started;
          this.#count++;
          this.#applied = change.revision;
        }
        if (changes.length < batch) return;
      }
    } catch (err) {
      this.#down(err as Error);
    }
  }
}
