/**
 * Warm isolates are bounded by count and by heap: past either bound the least recently used
 * tenant's isolate is unloaded from its worker, and its next call builds it again (a cold
 * start) and routes as before. An isolate unloaded while a call is running finishes that call.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import { CapturedLog, until } from './helpers.js';

const conn = { tenant: 't', remoteAddress: '127.0.0.1', remotePort: 1, localAddress: '127.0.0.1', localPort: 2 };

async function tenants(pool: SandboxPool, n: number, body = ''): Promise<ProcessRouter[]> {
  const log = new CapturedLog('warn');
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      ProcessRouter.load(
        pool,
        { tenant: `t${i}`, source: `${body}\nproxy((d) => d === 'slow' ? (() => { const end = Date.now() + 300; while (Date.now() < end) {} return { close: 't${i} slow' }; })() : { close: 't${i}' });`, filename: 't.js', routerTimeoutMs: 2000, memoryMb: 32 },
        new RouterConsole(log.logger, `t${i}`),
      ),
    ),
  );
}

async function isolates(pool: SandboxPool): Promise<number> {
  return (await pool.figures()).isolates;
}

describe('warm isolates', () => {
  it('keeps at most maxWarmIsolates built, least recently used out first', async () => {
    const pool = new SandboxPool({ log: new CapturedLog('warn').logger, workers: 1, maxWarmIsolates: 2 });
    try {
      const [a, b, c] = (await tenants(pool, 3)) as [ProcessRouter, ProcessRouter, ProcessRouter];
      for (const [r, name] of [[a, 't0'], [b, 't1'], [c, 't2']] as const) assert.deepEqual(await r.route('x', conn), { kind: 'close', reply: name });
      await until(() => true, 'tick');
      assert.equal(await isolates(pool), 2);
      // a was the least recently used: it is built again, and b goes.
      assert.deepEqual(await a.route('x', conn), { kind: 'close', reply: 't0' });
      assert.equal(await isolates(pool), 2);
      assert.deepEqual(await c.route('x', conn), { kind: 'close', reply: 't2' });
      assert.deepEqual(await b.route('x', conn), { kind: 'close', reply: 't1' });
    } finally {
      await pool.close();
    }
  });

  it('keeps the heap of the warm isolates under maxWarmMb', async () => {
    const pool = new SandboxPool({ log: new CapturedLog('warn').logger, workers: 1, maxWarmMb: 16 });
    try {
      // Each router keeps about 3 MiB of data: at most five fit in 16 MiB.
      const routers = await tenants(pool, 8, 'const ballast = Array.from({ length: 3e5 }, (_, i) => i * 1.5);');
      for (const r of routers) await r.route('x', conn);
      const figures = await pool.figures();
      assert.ok(figures.isolates <= 5, `${figures.isolates} isolates warm`);
      assert.ok(figures.heapBytes <= 16 * 1024 * 1024 + 4 * 1024 * 1024, `${figures.heapBytes} bytes of heap`);
      for (const [i, r] of routers.entries()) assert.deepEqual(await r.route('x', conn), { kind: 'close', reply: `t${i}` });
    } finally {
      await pool.close();
    }
  });

  it('lets a call finish on an isolate that is unloaded while it runs', async () => {
    const pool = new SandboxPool({ log: new CapturedLog('warn').logger, workers: 1, maxWarmIsolates: 1 });
    try {
      const [a, b] = (await tenants(pool, 2)) as [ProcessRouter, ProcessRouter];
      const slow = a.route('slow', conn);
      await until(() => a.pending >= 1, 'the slow call is pending');
      assert.deepEqual(await b.route('x', conn), { kind: 'close', reply: 't1' }); // evicts a
      assert.deepEqual(await slow, { kind: 'close', reply: 't0 slow' });
      assert.deepEqual(await a.route('x', conn), { kind: 'close', reply: 't0' });
    } finally {
      await pool.close();
    }
  });
});
