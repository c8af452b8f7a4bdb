/**
 * Spare isolates: a worker that has been idle builds one blank isolate (the prelude run, no
 * tenant code) for the memory limit of the tenant it loaded last, and the next tenant of that
 * limit starts from it. A tenant of another limit never gets it: an isolate's memory limit is
 * fixed when it is made, and it must be the tenant's own.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import { CapturedLog } from './helpers.js';

const conn = { tenant: 't', remoteAddress: '127.0.0.1', remotePort: 1, localAddress: '127.0.0.1', localPort: 2 };
/** About 24 MiB of numbers, held by the router: within 128 MiB, well past 8. */
const ballast = 'const ballast = new Array(3e6).fill(0).map((_, i) => i + 0.5);';

/** Loads a tenant straight into its worker (as at start-up, for a script accepted before). */
async function load(pool: SandboxPool, log: CapturedLog, tenant: string, memoryMb: number, source: string): Promise<ProcessRouter> {
  const router = ProcessRouter.cold(pool, { tenant, source, filename: `${tenant}.js`, routerTimeoutMs: 1000, memoryMb }, new RouterConsole(log.logger, tenant));
  await router.warm();
  return router;
}

/** Resolves once the worker reports a spare built; the pool's stats requests do not count as work. */
async function spareBuilt(pool: SandboxPool): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await pool.figures()).spareIsolates === 0) {
    if (Date.now() > deadline) throw new Error('no spare isolate within 10 s');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('spare isolates', () => {
  it('builds one once idle, and the next tenant of that memory limit starts from it, pristine and with its limit', async () => {
    const log = new CapturedLog('warn');
    const pool = new SandboxPool({ log: log.logger, workers: 1 });
    try {
      const first = await load(pool, log, 'first', 128, `globalThis.mine = 'first'; proxy(() => ({ close: 'first' }));`);
      assert.deepEqual(await first.route('x', conn), { kind: 'close', reply: 'first' });
      assert.equal((await pool.figures()).coldStartsFromSpare, 0);
      await spareBuilt(pool);

      const second = await load(
        pool,
        log,
        'second',
        128,
        `${ballast}\nproxy(() => ({ close: [typeof __switchyard, typeof mine, ballast.length].join(' ') }));`,
      );
      assert.equal((await pool.figures()).coldStartsFromSpare, 1);
      // Nothing of the prelude's hand-over or of another tenant is visible, and 24 MiB fit in its 128.
      assert.deepEqual(await second.route('x', conn), { kind: 'close', reply: 'undefined undefined 3000000' });
      assert.deepEqual(await first.route('x', conn), { kind: 'close', reply: 'first' });
    } finally {
      await pool.close();
    }
  });

  it('never gives a tenant a spare of another memory limit', async () => {
    const log = new CapturedLog('warn');
    const pool = new SandboxPool({ log: log.logger, workers: 1 });
    try {
      await load(pool, log, 'big', 128, `proxy(() => ({ close: 'big' }));`);
      await spareBuilt(pool);
      // On the 128 MiB spare this would load; in its own 8 MiB isolate it cannot.
      await assert.rejects(
        load(pool, log, 'small', 8, `${ballast}\nproxy(() => ({ close: 'small' }));`),
        /exceeded its memory limit while loading/,
      );
      assert.equal((await pool.figures()).coldStartsFromSpare, 0);
      // The worker goes on: the next spare is of the latest limit, and a tenant of it starts there.
      await spareBuilt(pool);
      const small = await load(pool, log, 'small2', 8, `proxy(() => ({ close: 'small2' }));`);
      assert.equal((await pool.figures()).coldStartsFromSpare, 1);
      assert.deepEqual(await small.route('x', conn), { kind: 'close', reply: 'small2' });
    } finally {
      await pool.close();
    }
  });
});
