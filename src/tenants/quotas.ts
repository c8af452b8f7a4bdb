/**
 * What one tenant token can make the service do, bounded: how often a tenant may push
 * (each push writes to disk and checks a script in a throwaway process), and how many script
 * checks run or wait at once across every tenant.
 */
import { ServiceRefusal } from '../errors.js';

export interface Quotas {
  readonly pushesPerMinute: number;
  readonly pushBurst: number;
  readonly checksRunning: number;
  readonly checksQueued: number;
  readonly routerVersions: number;
}

export const quotaDefaults: Quotas = Object.freeze({
  /** Router and table pushes per tenant: this many a minute on average… */
  pushesPerMinute: 30,
  /** …and this many at once after a quiet spell. */
  pushBurst: 10,
  /** Script checks (throwaway sandbox processes) running at once, service-wide. */
  checksRunning: 2,
  /** Checks waiting for one of those; past it a push is answered "busy". */
  checksQueued: 16,
  /** Router versions kept per tenant (the live one among them); rollback reaches back within them. */
  routerVersions: 20,
});

/** A token bucket per tenant. */
export class PushQuota {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  readonly #perMs: number;
  readonly #burst: number;
  readonly #now: () => number;

  constructor(perMinute: number, burst: number, now: () => number = () => performance.now()) {
    this.#perMs = perMinute / 60_000;
    this.#burst = burst;
    this.#now = now;
  }

  /** Takes one push for `tenant`, or refuses with `too_many` and when the next is possible. */
  take(tenant: string): void {
    const now = this.#now();
    const b = this.#buckets.get(tenant) ?? { tokens: this.#burst, at: now };
    b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#perMs);
    b.at = now;
    this.#buckets.set(tenant, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return;
    }
    const waitS = (1 - b.tokens) / this.#perMs / 1000;
    throw new ServiceRefusal('too_many', 'ERR_PUSH_RATE', `too many pushes: at most ${this.#burst} at once and ${this.#perMs * 60_000} a minute; try again in ${Math.ceil(waitS)} s`, { retryAfterS: waitS });
  }

  /** Forgets a deleted tenant. */
  forget(tenant: string): void {
    this.#buckets.delete(tenant);
  }
}

/** At most `running` tasks at once, at most `queued` waiting; past that a task is refused with `busy`. */
export class CheckGate {
  #running = 0;
  readonly #waiting: (() => void)[] = [];
  readonly #max: number;
  readonly #maxQueued: number;

  constructor(running: number, queued: number) {
    this.#max = running;
    this.#maxQueued = queued;
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#max) {
      if (this.#waiting.length >= this.#maxQueued) {
        throw new ServiceRefusal('busy', 'ERR_CHECKS_BUSY', `script checks are busy (${this.#max} running, ${this.#maxQueued} waiting); try again shortly`, { retryAfterS: 1 });
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else this.#running++;
    try {
      return await task();
    } finally {
      const next = this.#waiting.shift();
      if (next !== undefined) next();
      else this.#running--;
    }
  }

  get running(): number {
    return this.#running;
  }

  get queued(): number {
    return this.#waiting.length;
  }
}
