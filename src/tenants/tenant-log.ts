import type { ConsoleSink } from '../sandbox/console.js';

/**
 * A tenant's own log: its router's console lines (those the rate limit let through, see
 * sandbox/console.ts) and its rejections, in one bounded ring, numbered so that a reader can ask
 * for what came after the last entry it saw (`GET /v1/tenants/:name/logs?since=N`) and wait for
 * more (long polling). What the ring drops to stay within its bounds is counted in `missed`.
 */

interface Base {
  /** 1, 2, … per tenant, in order. */
  readonly seq: number;
  /** ISO 8601. */
  readonly time: string;
}

/** One entry: a console line (with the router version that wrote it), a rejection, or lines the rate limit dropped. */
export type TenantLogEntry = Base &
  (
    | { readonly kind: 'log' | 'error'; readonly version?: number; readonly line: string }
    | { readonly kind: 'rejection'; readonly client: string; readonly reason: string; readonly detail: string }
    | { readonly kind: 'dropped'; readonly count: number }
  );

type NewEntry = TenantLogEntry extends infer E ? (E extends TenantLogEntry ? Omit<E, 'seq' | 'time'> : never) : never;

export const tenantLogDefaults = Object.freeze({
  /** Entries kept, and characters of text over all of them (so a service of N tenants holds at most N × 128 KiB). */
  maxEntries: 500,
  maxChars: 128 * 1024,
  /** Entries one read answers with at most. */
  pageEntries: 200,
  /**
   * Readers waiting at once, for one tenant and over all: past either a read answers at once
   * (its client then asks again), so that waiting readers cannot take every admin connection.
   */
  maxWaiters: 8,
  maxWaitersInAll: 32,
});

/** Readers waiting now, over every tenant's log. */
let waitingInAll = 0;

export class TenantLog {
  readonly #entries: TenantLogEntry[] = [];
  #chars = 0;
  #next = 1;
  readonly #waiters = new Set<() => void>();

  /** Adds an entry; the oldest go while the ring is past its bounds. */
  add(entry: NewEntry): void {
    const full = { ...entry, seq: this.#next++, time: new Date().toISOString() } as TenantLogEntry;
    this.#entries.push(full);
    this.#chars += weight(full);
    while (this.#entries.length > tenantLogDefaults.maxEntries || (this.#chars > tenantLogDefaults.maxChars && this.#entries.length > 1)) {
      this.#chars -= weight(this.#entries.shift()!);
    }
    for (const wake of [...this.#waiters]) wake();
  }

  /**
   * Entries after `since`, oldest first, at most a page; `next` is what to pass as `since` next
   * time, `missed` how many entries after `since` the ring no longer has.
   */
  since(since: number): { entries: TenantLogEntry[]; next: number; missed: number } {
    const first = this.#entries[0]?.seq ?? this.#next;
    const from = Math.max(0, Math.min(since, this.#next - 1));
    const missed = Math.max(0, first - from - 1);
    const entries = this.#entries.filter((e) => e.seq > from).slice(0, tenantLogDefaults.pageEntries);
    return { entries, next: entries.at(-1)?.seq ?? from, missed };
  }

  /**
   * Resolves once there is an entry after `since`, after `waitMs`, or when `signal` aborts,
   * whichever is first; at once when there is one already or too many readers wait.
   */
  wait(since: number, waitMs: number, signal: AbortSignal): Promise<void> {
    if (this.#next - 1 > since || waitMs <= 0 || signal.aborted) return Promise.resolve();
    if (this.#waiters.size >= tenantLogDefaults.maxWaiters || waitingInAll >= tenantLogDefaults.maxWaitersInAll) return Promise.resolve();
    waitingInAll++;
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        if (this.#waiters.delete(done)) waitingInAll--;
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      signal.addEventListener('abort', done, { once: true });
      this.#waiters.add(done);
    });
  }

  /** Where the tenant's router console sends what passes its rate limit. */
  readonly sink: ConsoleSink = {
    line: (stream, line, version) => this.add({ kind: stream, line, ...(version === undefined ? {} : { version }) }),
    dropped: (count) => this.add({ kind: 'dropped', count }),
  };

  /** Readers waiting now. */
  get waiting(): number {
    return this.#waiters.size;
  }
}

/** What an entry counts against the ring's character bound. */
function weight(e: TenantLogEntry): number {
  switch (e.kind) {
    case 'log':
    case 'error':
      return 64 + e.line.length;
    case 'rejection':
      return 64 + e.client.length + e.reason.length + e.detail.length;
    case 'dropped':
      return 64;
  }
}
