/**
 * The sandbox's blame policy, as a pure function of events: strikes (a worker crash or hang
 * blamed on the call that was running), time-outs, and the client source each came from. It
 * answers with verdicts: where a tenant runs (its shared worker, the slow lane, a quarantine
 * worker of its own) and which client sources are refused for a while. The pool (pool.ts) feeds
 * it and carries the verdicts out; nothing here reads a clock, spawns or kills anything.
 *
 * Everything is keyed by tenant name, so a new version of a tenant's router keeps its record.
 *
 * - Quarantine: `quarantineStrikes` crashes or hangs within `strikeWindowMs`. It ends after
 *   `quarantineQuietMs` without a strike; the strikes are then forgotten.
 * - Slow lane: `slowLaneStrikes` time-outs (hangs included) within `strikeWindowMs`. It ends
 *   after `slowLaneQuietMs` without a time-out.
 * - Source penalty: `penaltyStrikes` time-outs, hangs or crashes caused by calls from one client
 *   source (an IPv4 address, an IPv6 /64) within `penaltyWindowMs` refuse that source's new
 *   connections to the tenant for `penaltyMs`, twice as long for each penalty that follows
 *   within `penaltyWindowMs` of the last one's end, up to `penaltyMaxMs`. At most
 *   `penaltySources` sources are tracked per tenant (the oldest are forgotten first). No verdict
 *   ever refuses a tenant's other clients.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { SlidingWindow } from './sliding-window.js';

export interface BlamePolicy {
  readonly quarantineStrikes: number;
  readonly strikeWindowMs: number;
  readonly quarantineQuietMs: number;
  readonly slowLaneStrikes: number;
  readonly slowLaneQuietMs: number;
  readonly penaltyStrikes: number;
  readonly penaltyWindowMs: number;
  readonly penaltyMs: number;
  readonly penaltyMaxMs: number;
  readonly penaltySources: number;
}

export const Placement = { shared: 'shared', slowLane: 'slow-lane', quarantine: 'quarantine' } as const;
export type Placement = (typeof Placement)[keyof typeof Placement];

export type StrikeKind = 'crash' | 'hang';

export type Verdict =
  /** The tenant's calls go to another kind of worker from now on. */
  | { readonly kind: 'move'; readonly tenant: string; readonly from: Placement; readonly to: Placement; readonly strikes: number; readonly timeouts: number }
  /** New connections from `source` to the tenant are refused for `ms`. */
  | { readonly kind: 'penalty'; readonly tenant: string; readonly source: string; readonly ms: number };

interface SourceRecord {
  readonly faults: SlidingWindow;
  /** The current (or last) penalty: until when, and how long it was. */
  until: number;
  lastMs: number;
}

interface TenantRecord {
  readonly strikes: SlidingWindow;
  readonly timeouts: SlidingWindow;
  /** The latest strike and time-out (kept past the window: the quiet periods count from them). */
  lastStrikeAt: number;
  lastTimeoutAt: number;
  quarantined: boolean;
  slowLane: boolean;
  readonly sources: Map<string, SourceRecord>;
}

/**
 * The prefix a client address is judged by: an IPv4 address (also when mapped into IPv6), the
 * /64 of an IPv6 one. Undefined for anything else (no penalty can be scoped to it).
 */
export function sourceOf(address: string | undefined): string | undefined {
  if (address === undefined) return undefined;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped !== null) return mapped[1];
  if (isIPv4(address)) return address;
  if (!isIPv6(address)) return undefined;
  const bare = address.split('%')[0]!;
  const [head = '', tail] = bare.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  // An embedded IPv4 tail takes two groups; only the first four groups matter here.
  const rightGroups = right.flatMap((g) => (g.includes('.') ? ['0', '0'] : [g]));
  const groups = tail === undefined ? left : [...left, ...new Array<string>(Math.max(0, 8 - left.length - rightGroups.length)).fill('0'), ...rightGroups];
  return `${groups.slice(0, 4).map((g) => Number.parseInt(g, 16).toString(16)).join(':')}::/64`;
}

export class Blame {
  readonly policy: BlamePolicy;
  readonly #tenants = new Map<string, TenantRecord>();
  /** Penalties imposed so far, per tenant (a counter for the metrics). */
  readonly #penalties = new Map<string, number>();

  constructor(policy: BlamePolicy) {
    this.policy = policy;
  }

  /** Where a tenant's calls run. */
  placement(tenant: string): Placement {
    const t = this.#tenants.get(tenant);
    if (t?.quarantined === true) return Placement.quarantine;
    return t?.slowLane === true ? Placement.slowLane : Placement.shared;
  }

  /** Strikes within the window, for logs. */
  strikes(tenant: string, at: number): number {
    return this.#tenants.get(tenant)?.strikes.count(at) ?? 0;
  }

  /** Penalties imposed on a tenant's client sources so far. */
  penaltiesImposed(tenant: string): number {
    return this.#penalties.get(tenant) ?? 0;
  }

  /** Sources refused now, over all tenants. */
  penalizedSources(at: number): number {
    let n = 0;
    for (const t of this.#tenants.values()) for (const s of t.sources.values()) if (s.until > at) n++;
    return n;
  }

  /** How much longer (ms) new connections from `address` to `tenant` are refused; 0 if they are not. */
  refusal(tenant: string, address: string | undefined, at: number): number {
    const source = sourceOf(address);
    const s = source === undefined ? undefined : this.#tenants.get(tenant)?.sources.get(source);
    return s === undefined ? 0 : Math.max(0, s.until - at);
  }

  /** A call of `tenant` (from `address`) ran into its time limit and spent its CPU doing so. */
  timeout(tenant: string, address: string | undefined, at: number): Verdict[] {
    const t = this.#record(tenant);
    const before = this.placement(tenant);
    t.lastTimeoutAt = at;
    if (t.timeouts.add(at) >= this.policy.slowLaneStrikes) t.slowLane = true;
    return [...this.#moved(tenant, before, at), ...this.#fault(tenant, t, address, at)];
  }

  /** A worker crashed or hung while a call of `tenant` (from `address`) was running. A hang is a time-out too. */
  strike(tenant: string, kind: StrikeKind, address: string | undefined, at: number): Verdict[] {
    const t = this.#record(tenant);
    const before = this.placement(tenant);
    t.lastStrikeAt = at;
    if (t.strikes.add(at) >= this.policy.quarantineStrikes) t.quarantined = true;
    if (kind === 'hang') {
      t.lastTimeoutAt = at;
      if (t.timeouts.add(at) >= this.policy.slowLaneStrikes) t.slowLane = true;
    }
    return [...this.#moved(tenant, before, at), ...this.#fault(tenant, t, address, at)];
  }

  /** Forgets a tenant's record (the tenant was deleted: its name may be given to another). */
  forget(tenant: string): Verdict[] {
    const before = this.placement(tenant);
    this.#tenants.delete(tenant);
    this.#penalties.delete(tenant);
    const to = this.placement(tenant);
    return to === before ? [] : [{ kind: 'move', tenant, from: before, to, strikes: 0, timeouts: 0 }];
  }

  /**
   * Time passes: quarantines and slow-lane spells whose quiet period is over end, and records
   * with nothing left to remember are dropped. Returns the moves.
   */
  tick(at: number): Verdict[] {
    const verdicts: Verdict[] = [];
    for (const [tenant, t] of this.#tenants) {
      const before = this.placement(tenant);
      if (t.quarantined && at - t.lastStrikeAt >= this.policy.quarantineQuietMs) {
        t.quarantined = false;
        t.strikes.clear();
      }
      if (t.slowLane && at - t.lastTimeoutAt >= this.policy.slowLaneQuietMs) {
        t.slowLane = false;
        t.timeouts.clear();
      }
      verdicts.push(...this.#moved(tenant, before, at));
      for (const [source, s] of t.sources) {
        if (s.faults.count(at) === 0 && at - s.until >= this.policy.penaltyWindowMs) t.sources.delete(source);
      }
      if (!t.quarantined && !t.slowLane && t.sources.size === 0 && t.strikes.count(at) === 0 && t.timeouts.count(at) === 0) this.#tenants.delete(tenant);
    }
    return verdicts;
  }

  #record(tenant: string): TenantRecord {
    let t = this.#tenants.get(tenant);
    if (t === undefined) {
      const { strikeWindowMs } = this.policy;
      t = { strikes: new SlidingWindow(strikeWindowMs), timeouts: new SlidingWindow(strikeWindowMs), lastStrikeAt: 0, lastTimeoutAt: 0, quarantined: false, slowLane: false, sources: new Map() };
      this.#tenants.set(tenant, t);
    }
    return t;
  }

  #moved(tenant: string, before: Placement, at: number): Verdict[] {
    const to = this.placement(tenant);
    if (to === before) return [];
    const t = this.#tenants.get(tenant);
    return [{ kind: 'move', tenant, from: before, to, strikes: t?.strikes.count(at) ?? 0, timeouts: t?.timeouts.count(at) ?? 0 }];
  }

  /** A fault caused by a call from `address`: past the threshold, that source is refused for a while. */
  #fault(tenant: string, t: TenantRecord, address: string | undefined, at: number): Verdict[] {
    const source = sourceOf(address);
    if (source === undefined) return [];
    let s = t.sources.get(source);
    if (s === undefined) {
      s = { faults: new SlidingWindow(this.policy.penaltyWindowMs), until: 0, lastMs: 0 };
      t.sources.set(source, s);
      if (t.sources.size > this.policy.penaltySources) t.sources.delete(t.sources.keys().next().value!);
    } else {
      // Most recently at fault last: the oldest entry is the one forgotten first.
      t.sources.delete(source);
      t.sources.set(source, s);
    }
    if (s.until > at || s.faults.add(at) < this.policy.penaltyStrikes) return [];
    const { penaltyMs, penaltyMaxMs, penaltyWindowMs } = this.policy;
    const ms = s.lastMs > 0 && at - s.until < penaltyWindowMs ? Math.min(penaltyMaxMs, s.lastMs * 2) : penaltyMs;
    s.until = at + ms;
    s.lastMs = ms;
    s.faults.clear();
    this.#penalties.set(tenant, (this.#penalties.get(tenant) ?? 0) + 1);
    return [{ kind: 'penalty', tenant, source, ms }];
  }
}
