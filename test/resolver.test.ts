/**
 * The resolver: the system's order (getaddrinfo, the hosts file first), a bounded number of
 * lookups at once, a deadline on each, answers and failures cached, and each tenant's
 * uncached lookups within a budget. The bounds are tested with a lookup function this test
 * controls (standing in for the OS resolver); one test goes through the real dns.lookup with
 * `localhost`, which the hosts file answers. No test asks a DNS server.
 */
import assert from 'node:assert/strict';
import dns from 'node:dns';
import { describe, it } from 'node:test';
import { CachingResolver, type LookupFunction, resolverDefaults, UnresolvedError } from '../src/routing/resolver.js';

/** A lookup whose answers the test gives by hand: `pending` holds every call not yet answered. */
function manualLookup(): { lookup: LookupFunction; calls: string[]; pending: Map<string, { answer: (a: string[]) => void; fail: (code: string) => void }> } {
  const calls: string[] = [];
  const pending = new Map<string, { answer: (a: string[]) => void; fail: (code: string) => void }>();
  const lookup: LookupFunction = (name) =>
    new Promise((resolve, reject) => {
      calls.push(name);
      pending.set(name, {
        answer: (a) => (pending.delete(name), resolve(a)),
        fail: (code) => (pending.delete(name), reject(Object.assign(new Error(code), { code }))),
      });
    });
  return { lookup, calls, pending };
}

/** A lookup that answers at once: names in `table`, ENOTFOUND for the rest. */
function tableLookup(table: Record<string, string[]>): { lookup: LookupFunction; calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    lookup: async (name) => {
      calls.push(name);
      const a = table[name];
      if (a === undefined) throw Object.assign(new Error('ENOTFOUND'), { code: 'ENOTFOUND' });
      return a;
    },
  };
}

async function rejection(p: Promise<unknown>): Promise<UnresolvedError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof UnresolvedError, String(err));
    return err;
  }
  assert.fail('resolved');
}

describe('CachingResolver through the system resolver', () => {
  it('resolves IP literals to themselves and localhost through dns.lookup (the hosts file), caching under the normalised name', async (t) => {
    const calls: string[] = [];
    const real = dns.promises.lookup;
    t.mock.method(dns.promises, 'lookup', (name: string, options: dns.LookupAllOptions) => {
      calls.push(name);
      return real(name, options);
    });
    // c-ares (dns.Resolver) asks DNS servers directly, before and without the hosts file: never used.
    const cAres: string[] = [];
    for (const method of ['resolve', 'resolve4', 'resolve6', 'resolveAny'] as const) {
      t.mock.method(dns.promises.Resolver.prototype, method, (name: string) => {
        cAres.push(`${method} ${name}`);
        return Promise.reject(new Error('c-ares is not to be used'));
      });
    }
    const r = new CachingResolver();
    assert.deepEqual(await r.resolve('10.0.0.1'), ['10.0.0.1']);
    assert.deepEqual(await r.resolve('::1'), ['::1']);
    assert.deepEqual(calls, [], 'an IP literal is not looked up');
    const local = await r.resolve('localhost');
    assert.ok(local.some((a) => a === '127.0.0.1' || a === '::1'), local.join());
    assert.equal(await r.resolve('LOCALHOST.'), local, 'cached under its normalised name');
    assert.deepEqual(calls, ['localhost'], 'one lookup, through dns.lookup');
    assert.deepEqual(cAres, [], 'no query through c-ares');
  });
});

describe('CachingResolver bounds', () => {
  it('keeps an answer for ttlMs and a failure for negativeTtlMs, then asks again', async () => {
    let now = 1000; // lru-cache takes a start time of 0 for "no TTL"
    const { lookup, calls } = tableLookup({ 'db.internal': ['10.0.0.7'] });
    const r = new CachingResolver({ lookup, now: () => now, ttlMs: 30_000, negativeTtlMs: 10_000 });
    assert.deepEqual(await r.resolve('db.internal'), ['10.0.0.7']);
    assert.equal((await rejection(r.resolve('gone.internal'))).message, 'gone.internal did not resolve (ENOTFOUND)');
    now = 10_999;
    assert.deepEqual(await r.resolve('db.internal'), ['10.0.0.7']);
    assert.equal((await rejection(r.resolve('gone.internal'))).kind, 'not-found', 'the failure is cached');
    assert.deepEqual(calls, ['db.internal', 'gone.internal']);
    now = 11_001;
    await rejection(r.resolve('gone.internal'));
    assert.deepEqual(calls, ['db.internal', 'gone.internal', 'gone.internal'], 'asked again after negativeTtlMs');
    now = 31_001;
    await r.resolve('db.internal');
    assert.deepEqual(calls.at(-1), 'db.internal', 'asked again after ttlMs');
    assert.equal(calls.length, 4);
  });

  it("gives each tenant a budget of uncached lookups a minute; cached names and other tenants' budgets are untouched", async () => {
    let now = 1000;
    const { lookup, calls } = tableLookup({ a: ['192.0.2.1'], b: ['192.0.2.2'], c: ['192.0.2.3'], d: ['192.0.2.4'] });
    const shared = new CachingResolver({ lookup, now: () => now, budgetPerMinute: 3 });
    const acme = shared.forTenant('acme');
    const other = shared.forTenant('other');
    await acme.resolve('a');
    await acme.resolve('b');
    await rejection(acme.resolve('nx1')); // a failed lookup spends budget too
    const spent = await rejection(acme.resolve('c'));
    assert.equal(spent.kind, 'budget');
    assert.equal(spent.message, "c not looked up: tenant acme's lookup budget (3 uncached names a minute) is spent");
    assert.deepEqual(await acme.resolve('a'), ['192.0.2.1'], 'a cached name needs no budget');
    await rejection(acme.resolve('nx1')); // negatively cached: no budget, no lookup
    assert.deepEqual(await other.resolve('c'), ['192.0.2.3'], "another tenant's budget is its own");
    assert.deepEqual(await acme.resolve('c'), ['192.0.2.3'], 'and its answer is cached for everyone');
    assert.equal((await rejection(acme.resolve('d'))).kind, 'budget');
    now = 21_000; // a third of a minute: one lookup's worth refilled
    assert.deepEqual(await acme.resolve('d'), ['192.0.2.4']);
    assert.deepEqual(calls, ['a', 'b', 'nx1', 'c', 'd']);
  });

  it('fails a lookup that takes longer than timeoutMs; the late answer is cached when it comes', async () => {
    const { lookup, pending, calls } = manualLookup();
    const r = new CachingResolver({ lookup, timeoutMs: 30 });
    const late = await rejection(r.resolve('slow.example'));
    assert.equal(late.kind, 'timeout');
    assert.equal(late.message, 'the lookup of slow.example took longer than 30 ms');
    assert.deepEqual(r.load, { running: 1, waiting: 0 }, 'its thread still counts');
    pending.get('slow.example')!.answer(['192.0.2.9']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(r.load, { running: 0, waiting: 0 });
    assert.deepEqual(await r.resolve('slow.example'), ['192.0.2.9']);
    assert.deepEqual(calls, ['slow.example']);
  });

  it('runs at most `concurrency` lookups at once service-wide, queues at most `queue`, and shares a lookup in flight', async () => {
    const { lookup, pending, calls } = manualLookup();
    const r = new CachingResolver({ lookup, concurrency: 2, queue: 2, timeoutMs: 60_000 });
    const t1 = r.forTenant('t1');
    const t2 = r.forTenant('t2');
    const answers = [t1.resolve('n1'), t2.resolve('n2'), t1.resolve('n3'), t2.resolve('n4'), t2.resolve('n1')].map((p) =>
      p.then(
        (a) => a,
        (err: unknown) => (err as Error).message,
      ),
    );
    assert.deepEqual(calls, ['n1', 'n2'], 'two at once');
    assert.deepEqual(r.load, { running: 2, waiting: 2 });
    const busy = await rejection(t1.resolve('n5'));
    assert.equal(busy.kind, 'busy');
    assert.equal(busy.message, 'n5 not looked up: 2 lookups are already waiting for a thread');
    pending.get('n1')!.answer(['192.0.2.1']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(calls, ['n1', 'n2', 'n3'], 'a finished lookup lets the next one run');
    pending.get('n2')!.fail('ENOTFOUND');
    await new Promise<void>((resolve) => setImmediate(resolve));
    pending.get('n3')!.answer(['192.0.2.3']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    pending.get('n4')!.answer(['192.0.2.4']);
    assert.deepEqual(
      await Promise.all(answers),
      [['192.0.2.1'], 'n2 did not resolve (ENOTFOUND)', ['192.0.2.3'], ['192.0.2.4'], ['192.0.2.1']],
    );
    assert.deepEqual(calls, ['n1', 'n2', 'n3', 'n4'], 'n1 was looked up once for both tenants');
  });

  it('drops a queued lookup that nobody waits for any more', async () => {
    const { lookup, pending, calls } = manualLookup();
    const r = new CachingResolver({ lookup, concurrency: 1, timeoutMs: 20 });
    const first = rejection(r.resolve('stuck'));
    const second = rejection(r.resolve('queued'));
    assert.equal((await first).kind, 'timeout');
    assert.equal((await second).kind, 'timeout');
    pending.get('stuck')!.answer(['192.0.2.1']);
    await new Promise<void>((resolve) => setImmediate(resolve));
    assert.deepEqual(calls, ['stuck'], 'the queued lookup was dropped, not run');
    assert.deepEqual(r.load, { running: 0, waiting: 0 });
  });

  it('has documented defaults', () => {
    assert.equal(resolverDefaults.timeoutMs, 2000);
    assert.equal(resolverDefaults.ttlMs, 30_000);
    assert.equal(resolverDefaults.negativeTtlMs, 10_000);
    assert.equal(resolverDefaults.budgetPerMinute, 120);
    assert.ok(resolverDefaults.concurrency >= 1);
  });
});
