import { promises as dns } from 'node:dns';
import { isIP } from 'node:net';
import { LRUCache } from 'lru-cache';

/** Asks the system for every address of a name; rejects when it has none. */
export type LookupFunction = (name: string) => Promise<readonly string[]>;

/**
 * The system resolver, in the system's order (getaddrinfo: /etc/nsswitch.conf, normally the
 * hosts file first, then DNS). It runs on a libuv threadpool thread and cannot be cancelled.
 */
export const systemLookup: LookupFunction = async (name) => (await dns.lookup(name, { all: true })).map((r) => r.address);

/** Node's threadpool size, as libuv reads it at start. */
const threadpoolSize = Number(process.env.UV_THREADPOOL_SIZE) > 0 ? Number(process.env.UV_THREADPOOL_SIZE) : 4;

export const resolverDefaults = {
  /** Names kept, positive and negative, service-wide. */
  max: 10_000,
  /** How long an answer is kept: getaddrinfo gives no TTL. */
  ttlMs: 30_000,
  /** How long "no such name" (or a failed lookup) is kept. */
  negativeTtlMs: 10_000,
  /** A lookup that has not answered by then fails that connection; its thread finishes in the background. */
  timeoutMs: 2000,
  /** Lookups running at once, service-wide: half the threadpool, so slow DNS never takes every thread file I/O needs. */
  concurrency: Math.max(1, Math.floor(threadpoolSize / 2)),
  /** Lookups waiting for a thread, service-wide; past it a lookup fails at once. */
  queue: 64,
  /** Distinct uncached names a tenant may have looked up per minute (a token bucket: this many at once, refilled over a minute). */
  budgetPerMinute: 120,
  lookup: systemLookup,
  now: (): number => performance.now(),
};

export type ResolverOptions = Partial<typeof resolverDefaults>;

/** Why a name has no addresses; the message is the reason the log, the rejection and the dry run show. */
export class UnresolvedError extends Error {
  readonly kind: 'not-found' | 'timeout' | 'budget' | 'busy';
  constructor(kind: UnresolvedError['kind'], message: string) {
    super(message);
    this.kind = kind;
  }
}

/** A lookup in flight (or waiting for a thread), shared by everyone who asks for the name meanwhile. */
interface Flight {
  readonly promise: Promise<readonly string[]>;
  /** Callers still waiting for it; a queued lookup nobody waits for any more is dropped. */
  waiters: number;
}

type Answer = { readonly addresses: readonly string[] } | { readonly error: string };

/** What every tenant's view shares: the cache, the lookups in flight, the thread bound, the budgets. */
class ResolverCore {
  readonly o: typeof resolverDefaults;
  readonly cache: LRUCache<string, Answer>;
  readonly flights = new Map<string, Flight>();
  readonly waiting: (() => void)[] = [];
  running = 0;
  readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(options: ResolverOptions) {
    this.o = { ...resolverDefaults, ...options };
    this.cache = new LRUCache({ max: this.o.max, ttlAutopurge: false, ttlResolution: 0, perf: { now: this.o.now } });
  }

  /** Takes one lookup from the tenant's budget; false when it is spent. */
  spend(tenant: string): boolean {
    const now = this.o.now();
    const capacity = this.o.budgetPerMinute;
    const b = this.buckets.get(tenant) ?? { tokens: capacity, at: now };
    b.tokens = Math.min(capacity, b.tokens + ((now - b.at) * capacity) / 60_000);
    b.at = now;
    this.buckets.set(tenant, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Starts (or queues) the lookup of `key` for one waiter; its answer goes to the cache when it settles. */
  fly(key: string): Flight {
    let settle!: (addresses: readonly string[]) => void;
    let fail!: (err: unknown) => void;
    // Its first waiter is the caller who starts it.
    const flight: Flight = { promise: new Promise((res, rej) => ((settle = res), (fail = rej))), waiters: 1 };
    // Callers race it against their own deadline; it must never be an unhandled rejection.
    flight.promise.catch(() => undefined);
    const run = (): void => {
      if (flight.waiters === 0) {
        this.flights.delete(key);
        fail(new UnresolvedError('timeout', `the lookup of ${key} was dropped: nobody waits for it`));
        this.next();
        return;
      }
      this.running++;
      this.o
        .lookup(key)
        .then(
          (addresses) => {
            if (addresses.length === 0) throw new Error('no addresses');
            const answer = Object.freeze([...addresses]);
            this.cache.set(key, { addresses: answer }, { ttl: this.o.ttlMs });
            settle(answer);
          },
          (err: unknown) => {
            const code = (err as { code?: unknown }).code;
            const error = `${key} did not resolve${typeof code === 'string' ? ` (${code})` : ''}`;
            this.cache.set(key, { error }, { ttl: this.o.negativeTtlMs });
            fail(new UnresolvedError('not-found', error));
          },
        )
        .catch((err: unknown) => {
          this.cache.set(key, { error: `${key} did not resolve` }, { ttl: this.o.negativeTtlMs });
          fail(new UnresolvedError('not-found', `${key} did not resolve (${String(err)})`));
        })
        .finally(() => {
          this.flights.delete(key);
          this.running--;
          this.next();
        });
    };
    if (this.running < this.o.concurrency) run();
    else if (this.waiting.length < this.o.queue) this.waiting.push(run);
    else {
      fail(new UnresolvedError('busy', `${key} not looked up: ${this.o.queue} lookups are already waiting for a thread`));
      return flight;
    }
    this.flights.set(key, flight);
    return flight;
  }

  next(): void {
    while (this.running < this.o.concurrency) {
      const run = this.waiting.shift();
      if (run === undefined) return;
      run();
    }
  }
}

/**
 * Host names to addresses, for the backend policy: the policy checks what a name resolves to,
 * and the proxy connects to that checked address, never to the name again. Lookups go through
 * the system resolver (hosts file first), a bounded number at once service-wide, each within
 * a deadline, answers and failures cached for a fixed time, and each tenant's uncached
 * lookups within a budget. `forTenant` gives a tenant's view; the cache and bounds are shared.
 */
export class CachingResolver {
  readonly #core: ResolverCore;
  readonly #tenant: string;

  /** A new resolver; `core` and `tenant` are forTenant's, for a view of an existing one. */
  constructor(options: ResolverOptions = {}, core?: ResolverCore, tenant = '') {
    this.#core = core ?? new ResolverCore(options);
    this.#tenant = tenant;
  }

  /** The same resolver, charging uncached lookups to `tenant`'s budget. */
  forTenant(tenant: string): CachingResolver {
    return new CachingResolver({}, this.#core, tenant);
  }

  /** Lookups running now (their threads busy), and waiting for a thread. */
  get load(): { running: number; waiting: number } {
    return { running: this.#core.running, waiting: this.#core.waiting.length };
  }

  /** The addresses of `host` (an IP literal resolves to itself); rejects with an UnresolvedError when it has none. */
  async resolve(host: string): Promise<readonly string[]> {
    if (isIP(host) !== 0) return [host];
    const core = this.#core;
    const key = host.toLowerCase().replace(/\.$/, '');
    const cached = core.cache.get(key);
    if (cached !== undefined) {
      if ('error' in cached) throw new UnresolvedError('not-found', cached.error);
      return cached.addresses;
    }
    let flight = core.flights.get(key);
    if (flight === undefined) {
      if (!core.spend(this.#tenant)) {
        const who = this.#tenant === '' ? 'the' : `tenant ${this.#tenant}'s`;
        throw new UnresolvedError('budget', `${key} not looked up: ${who} lookup budget (${core.o.budgetPerMinute} uncached names a minute) is spent`);
      }
      flight = core.fly(key);
    } else {
      flight.waiters++;
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new UnresolvedError('timeout', `the lookup of ${key} took longer than ${core.o.timeoutMs} ms`)), core.o.timeoutMs);
    });
    try {
      return await Promise.race([flight.promise, deadline]);
    } finally {
      clearTimeout(timer);
      flight.waiters--;
    }
  }
}
