/**
 * Memory bombs, hundreds of them: each closes its own call with router_memory and replaces
 * that isolate; the worker's resident memory stays bounded and the worker is never replaced.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { RouterError } from '../src/errors.js';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import { CapturedLog } from './helpers.js';

const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) / 1024;
const conn = { tenant: 'bomb', remoteAddress: '127.0.0.1', remotePort: 1, localAddress: '127.0.0.1', localPort: 2 };
const BOMBS = 400;

describe('memory bombs', () => {
  const log = new CapturedLog('warn');
  let pool: SandboxPool;
  let routers: ProcessRouter[];
  before(async () => {
    pool = new SandboxPool({ log: log.logger, workers: 1 });
    routers = await Promise.all(
      Array.from({ length: 4 }, (_, i) =>
        ProcessRouter.load(
          pool,
          {
            tenant: `bomb${i}`,
            source: "proxy((d) => { if (d === 'ok') return { close: 'alive' }; const a = []; for (let i = 0; ; i++) a.push(new Array(1e5).fill(i)); });",
            filename: 'bomb.js',
            routerTimeoutMs: 5000,
            memoryMb: 16,
          },
          new RouterConsole(log.logger, `bomb${i}`),
        ),
      ),
    );
  });
  after(() => pool.close());

  it(`keeps the worker's RSS bounded across ${BOMBS} bombs`, async () => {
    const pid = routers[0]!.pid!;
    const start = rssMb(pid);
    let peak = start;
    const reasons = new Map<string, number>();
    for (let round = 0; round < BOMBS / routers.length; round++) {
      await Promise.all(
        routers.map((r) =>
          r.route('boom', conn).then(
            () => assert.fail('a bomb returned'),
            (err: unknown) => {
              assert.ok(err instanceof RouterError);
              reasons.set(err.reason, (reasons.get(err.reason) ?? 0) + 1);
            },
          ),
        ),
      );
      peak = Math.max(peak, rssMb(pid));
    }
    assert.deepEqual([...reasons], [['router_memory', BOMBS]]);
    assert.equal(routers[0]!.pid, pid, 'the worker survived every bomb');
    assert.ok(peak - start < 256, `RSS went from ${start.toFixed(0)} MiB to a peak of ${peak.toFixed(0)} MiB`);
    for (const r of routers) assert.deepEqual(await r.route('ok', conn), { kind: 'close', reply: 'alive' });
  });
});
