import { promises as dns } from 'node:dns';
import { isIP } from 'node:net';
import { LRUCache } from 'lru-cache';

export interface ResolverOptions {
  /** Names kept. */
  readonly max?: number;
  /** Bounds on how long an answer is kept, whatever its TTL says (seconds). */
  readonly minTtlS?: number;
  readonly maxTtlS?: number;
  /** How long an answer without a TTL (from the hosts file) or a failure is kept. */
  readonly defaultTtlS?: number;
}

/**
 * Host names to addresses, for the backend policy: the policy checks what a name resolves
 * to, and the proxy connects to that checked address, never to the name again. Answers are
 * cached in a bounded LRU for as long as their TTL says.
 */
export class CachingResolver {
  readonly #cache: LRUCache<string, readonly string[]>;
  readonly #dns = new dns.Resolver({ timeout: 1000, tries: 2 });
  readonly #o: Required<ResolverOptions>;

  constructor(options: ResolverOptions = {}) {
    this.#o = { max: 10_000, minTtlS: 1, maxTtlS: 300, defaultTtlS: 30, ...options };
    this.#cache = new LRUCache({ max: this.#o.max, ttlAutopurge: false });
  }

  /** The addresses of `host` (an IP literal resolves to itself); rejects when it has none. */
  async resolve(host: string): Promise<readonly string[]> {
    if (isIP(host) !== 0) return [host];
    const key = host.toLowerCase().replace(/\.$/, '');
    const cached = this.#cache.get(key);
    if (cached !== undefined) {
      if (cached.length === 0) throw new Error(`${host} did not resolve`);
      return cached;
    }
    let addresses: string[] = [];
    let ttl = this.#o.defaultTtlS;
    const [v4, v6] = await Promise.allSettled([this.#dns.resolve4(key, { ttl: true }), this.#dns.resolve6(key, { ttl: true })]);
    const records = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
    if (records.length > 0) {
      addresses = records.map((r) => r.address);
      ttl = Math.min(...records.map((r) => r.ttl));
    } else {
      // Not in DNS (or no DNS at all): the hosts file, through the system resolver.
      try {
        addresses = (await dns.lookup(key, { all: true })).map((r) => r.address);
      } catch {
        addresses = [];
      }
    }
    // A name that does not resolve is asked again soon.
    if (addresses.length === 0) ttl = this.#o.minTtlS * 5;
    this.#cache.set(key, addresses, { ttl: Math.min(this.#o.maxTtlS, Math.max(this.#o.minTtlS, ttl)) * 1000 });
    if (addresses.length === 0) throw new Error(`${host} did not resolve`);
    return addresses;
  }
}
