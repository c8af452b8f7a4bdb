/**
 * Sandbox worker processes: killing one during load leaves relayed connections alone, fails
 * only the decisions pending on it, and touches no other worker's tenants; a tenant that keeps
 * crashing its worker is quarantined; a router that keeps timing out moves to the low-priority
 * slow lane, and the client source whose calls keep timing out is refused for a while.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SandboxPool } from '../src/sandbox/pool.js';
import type { ProcessRouter } from '../src/sandbox/process-router.js';
import { CapturedLog, dial, exchange, type Exchange, startEchoBackend, startProxy, startServer, type TestProxy, type TestServer, until } from './helpers.js';

/** Sends `text` on an open socket and resolves with the next chunk that comes back. */
async function roundTrip(socket: Socket, text: string): Promise<string> {
  socket.write(text);
  const [chunk] = (await once(socket, 'data')) as [Buffer];
  return chunk.toString('latin1');
}

/**
 * The fields of /proc/PID/stat after the command name, from the state on: utime is [11], stime
 * [12], niceness [16], the scheduling policy [38].
 */
function procStat(pid: number): string[] {
  return readFileSync(`/proc/${pid}/stat`, 'latin1').split(') ')[1]!.split(' ');
}

/**
 * Sends 'crash' and, once its call runs on the worker, kills the worker with SIGSEGV, as when
 * V8 aborts on a call (no router code is known to abort isolated-vm 7's workers on Node 26).
 */
async function crashWhileRunning(proxy: TestProxy): Promise<Exchange> {
  const r = proxy.router as ProcessRouter;
  const before = r.running;
  const answer = exchange(proxy.port, ['crash']);
  await until(() => r.running > before, 'the crashing call runs');
  process.kill(r.pid!, 'SIGSEGV');
  return answer;
}

function router(echoPort: number, streamPort: number): string {
  return `proxy((data) => {
    if (data === 'hold') return { remote: '127.0.0.1:${streamPort}' };
    if (data === 'spin') { const end = Date.now() + 1500; while (Date.now() < end) {} return { close: 'spun' }; }
    if (data === 'crash') for (;;) {} // crashWhileRunning() kills its worker meanwhile
    return { remote: '127.0.0.1:${echoPort}' };
  });`;
}

describe('sandbox workers', () => {
  let echo: TestServer;
  let stream: TestServer;
  before(async () => {
    echo = await startEchoBackend();
    stream = await startServer((s) => s.pipe(s)); // echoes everything, for as long as the client stays
  });
  after(async () => {
    await echo.close();
    await stream.close();
  });

  it('a killed worker fails only its pending decisions; relayed connections and other workers carry on', async () => {
    const pool = new SandboxPool({ log: new CapturedLog().logger, workers: 2 });
    const a = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'a', limits: { routerTimeoutMs: 3000 } });
    const b = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'b', limits: { routerTimeoutMs: 3000 } });
    try {
      const pidA = (a.router as ProcessRouter).pid!;
      const pidB = (b.router as ProcessRouter).pid!;
      assert.notEqual(pidA, pidB, 'the two tenants are on different workers');

      const relayed = await Promise.all(Array.from({ length: 5 }, () => dial(a.port)));
      for (const s of relayed) assert.equal(await roundTrip(s, 'hold'), 'hold');

      // A decision pending on A's worker, and one on B's, when A's worker dies.
      const pendingA = exchange(a.port, ['spin']);
      const pendingB = exchange(b.port, ['spin']);
      // Running, not only queued: a call only queued on a worker that dies is sent to the next one.
      await until(() => (a.router as ProcessRouter).running === 1 && (b.router as ProcessRouter).running === 1, 'both calls running');
      process.kill(pidA, 'SIGKILL');

      const failed = await pendingA;
      assert.equal(failed.data, '');
      const rejected = await a.log.waitFor((r) => r.msg === 'connection rejected' && r.client === failed.client);
      assert.equal(rejected.reason, 'router_unavailable');
      assert.match(String(rejected.detail), /crashed \(SIGKILL\)/);
      assert.equal((await pendingB).data, 'spun', "B's worker never noticed");

      for (const [i, s] of relayed.entries()) assert.equal(await roundTrip(s, `still ${i}`), `still ${i}`, 'relayed connections survive');
      assert.equal((await exchange(a.port, ['next'])).data, `${echo.port}:next`, 'A routes again, on a new worker');
      const newPidA = (a.router as ProcessRouter).pid;
      assert.ok(newPidA !== undefined && newPidA !== pidA);
      assert.equal((b.router as ProcessRouter).pid, pidB);
      for (const s of relayed) s.destroy();
    } finally {
      await a.close();
      await b.close();
      await pool.close();
    }
  });

  it('quarantines a tenant that keeps crashing its worker, and keeps serving it there', async () => {
    const log = new CapturedLog();
    // Every client here is 127.0.0.1: no penalty on the source, so that its next calls are served.
    const pool = new SandboxPool({ log: log.logger, workers: 1, penaltyStrikes: 1e9 });
    const bad = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'crasher', limits: { routerTimeoutMs: 5000 } });
    const good = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'bystander' });
    try {
      const shared = (bad.router as ProcessRouter).pid;
      for (let i = 0; i < 3; i++) {
        const r = await crashWhileRunning(bad);
        assert.equal(r.data, '');
        await bad.log.waitFor((rec) => rec.msg === 'connection rejected' && rec.client === r.client);
      }
      await log.waitFor((r) => r.msg === 'tenant quarantined in a worker of its own' && r.tenant === 'crasher');
      assert.equal((bad.router as ProcessRouter).quarantined, true);
      assert.notEqual((bad.router as ProcessRouter).pid, (good.router as ProcessRouter).pid);
      assert.equal((good.router as ProcessRouter).quarantined, false);
      assert.notEqual((good.router as ProcessRouter).pid, shared, 'the shared worker was restarted after the last crash');

      assert.equal((await exchange(bad.port, ['fine'])).data, `${echo.port}:fine`);
      assert.equal((await exchange(good.port, ['fine'])).data, `${echo.port}:fine`);
      // Crashing again now only restarts the quarantine worker.
      const sharedPid = (good.router as ProcessRouter).pid;
      await crashWhileRunning(bad);
      assert.equal((await exchange(good.port, ['fine'])).data, `${echo.port}:fine`);
      assert.equal((good.router as ProcessRouter).pid, sharedPid);
    } finally {
      await bad.close();
      await good.close();
      await pool.close();
    }
  });

  it('refuses for a while the client source whose calls keep hitting the time limit, and no other', async () => {
    const log = new CapturedLog();
    const pool = new SandboxPool({ log: log.logger, workers: 1, penaltyStrikes: 3, penaltyMs: 300 });
    // A limit long enough that a busy test machine cannot starve a spinning call below a quarter
    // of it in CPU (a starved time-out is no strike).
    const proxy = await startProxy(`proxy((data) => { if (data === 'bad') for (;;) {} return { close: 'ok' }; });`, { sharedPool: pool, tenant: 'spin', limits: { routerTimeoutMs: 200 } });
    try {
      for (let i = 0; i < 3; i++) await exchange(proxy.port, ['bad'], { from: '127.0.0.2' });
      const refused = await exchange(proxy.port, ['good'], { from: '127.0.0.2' });
      assert.equal(refused.data, '', 'closed at once while its source is refused');
      const rejected = await proxy.log.waitFor((r) => r.msg === 'connection rejected' && r.client === refused.client);
      assert.equal(rejected.reason, 'source_penalty');
      await log.waitFor((r) => r.msg === 'client source refused for a while: its calls kept running into the time limit' && r.source === '127.0.0.2' && r.penaltyMs === 300);
      // Another client of the same tenant is served meanwhile.
      assert.ok(pool.penaltyFor('spin', '127.0.0.2') > 0);
      assert.equal((await exchange(proxy.port, ['good'], { from: '127.0.0.3' })).data, 'ok');
      await until(() => pool.penaltyFor('spin', '127.0.0.2') === 0, 'the penalty ends', 5000);
      assert.equal((await exchange(proxy.port, ['good'], { from: '127.0.0.2' })).data, 'ok');
      assert.equal(proxy.listener.stats.rejections.get('source_penalty'), 1);
    } finally {
      await proxy.close();
      await pool.close();
    }
  });

  it('moves a router that runs into its time limit to the low-priority slow lane, with its queued calls, and back', async () => {
    const log = new CapturedLog();
    const slowLaneQuietMs = 2000;
    const pool = new SandboxPool({ log: log.logger, workers: 1, slowLaneQuietMs, penaltyStrikes: 1e9 });
    const slow = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'slow', limits: { routerTimeoutMs: 100 } });
    const good = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'good' });
    const niceness = (pid: number): number => Number(procStat(pid)[16]);
    const schedBatch = 3;
    try {
      const slowRouter = slow.router as ProcessRouter;
      const shared = slowRouter.pid!;
      assert.equal((good.router as ProcessRouter).pid, shared);
      // Two calls that spin, and two more behind them on the shared worker (which runs one call
      // of a tenant at a time). When the first times out the tenant moves; the second is then
      // running there and finishes there, and the two queued behind it go with the tenant.
      // The worker is stopped while the four are sent, so that all are there before the first
      // can time out, however slowly this process gets them out on a busy machine.
      process.kill(shared, 'SIGSTOP');
      let spinning: Promise<Exchange>;
      let spinningToo: Promise<Exchange>;
      let queued: Promise<Exchange>[];
      try {
        spinning = exchange(slow.port, ['spin']);
        await until(() => slowRouter.pending === 1, 'the first spinning call is in flight');
        spinningToo = exchange(slow.port, ['spin']);
        await until(() => slowRouter.pending === 2, 'the second is in flight');
        queued = [exchange(slow.port, ['q1'])];
        await until(() => slowRouter.pending === 3, 'a call queued behind them');
        queued.push(exchange(slow.port, ['q2']));
        await until(() => slowRouter.pending === 4, 'two calls queued behind them');
      } finally {
        process.kill(shared, 'SIGCONT');
      }
      for (const spun of await Promise.all([spinning, spinningToo])) {
        assert.equal((await slow.log.waitFor((r) => r.msg === 'connection rejected' && r.client === spun.client)).reason, 'router_timeout');
      }
      const moved = await log.waitFor((r) => r.msg === 'router keeps running into its time limit: moved to the slow lane' && r.tenant === 'slow');
      assert.equal(moved.placement, 'slow-lane');
      // The queued calls went with it and were answered there. (On a busy machine the slow lane
      // can take longer to start than its quiet period lasts: the tenant may be back by now, so
      // the lane is known by its log lines, not by where the tenant is.)
      assert.deepEqual(
        (await Promise.all(queued)).map((r) => r.data),
        [`${echo.port}:q1`, `${echo.port}:q2`],
      );
      assert.equal(slowRouter.quarantined, false);
      const lanePid = Number((await log.waitFor((r) => r.msg === 'sandbox worker started' && r.worker === 'slow-lane')).workerPid);
      assert.notEqual(lanePid, shared);
      assert.equal(niceness(lanePid), 19, 'the slow lane runs at the lowest priority');
      assert.equal(niceness(shared), getPriority(), "a shared worker runs at the proxy's own priority");
      // Workers run under SCHED_BATCH, set by sandbox-exec before it starts Node: the lane may still be starting.
      assert.equal(Number(procStat(shared)[38]), schedBatch, `policy of worker ${shared}`);
      await until(() => Number(procStat(lanePid)[38]) === schedBatch, `the slow lane (${lanePid}) runs under SCHED_BATCH`);
      const started = log.records.filter((r) => r.msg === 'sandbox worker started');
      assert.ok(started.length >= 2 && started.every((r) => r.scheduling === 'batch'), 'each start-up line says so');
      // The good tenant stays where it was.
      assert.equal((await exchange(good.port, ['fine'])).data, `${echo.port}:fine`);
      assert.equal((good.router as ProcessRouter).pid, shared);
      assert.equal((good.router as ProcessRouter).inSlowLane, false);
      // A quiet period without a time-out brings it back to its shared worker.
      await log.waitFor((r) => r.msg === 'router back from the slow lane' && r.tenant === 'slow', slowLaneQuietMs + 3000);
      assert.equal(slowRouter.inSlowLane, false);
      assert.equal(slowRouter.pid, shared);
      assert.equal((await exchange(slow.port, ['home'])).data, `${echo.port}:home`);
    } finally {
      await slow.close();
      await good.close();
      await pool.close();
    }
  });

  it('a time-out the router spent waiting for the CPU is no strike: no slow lane, no penalty', async () => {
    const log = new CapturedLog();
    const pool = new SandboxPool({ log: log.logger, workers: 1, penaltyStrikes: 1, penaltyMs: 60_000 });
    const proxy = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'starved', limits: { routerTimeoutMs: 300 } });
    const cpuTicks = (pid: number): number => Number(procStat(pid)[11]) + Number(procStat(pid)[12]); // utime + stime
    try {
      const r = proxy.router as ProcessRouter;
      assert.equal((await exchange(proxy.port, ['warm'])).data, `${echo.port}:warm`);
      const pid = r.pid!;
      const before = cpuTicks(pid);
      // The call starts spinning; once it has used some CPU, the worker is stopped past the
      // call's limit, as a machine too busy to run it would.
      const spinning = exchange(proxy.port, ['spin']);
      await until(() => cpuTicks(pid) > before, 'the call is spinning');
      process.kill(pid, 'SIGSTOP');
      await sleep(500); // a span of wall time without CPU is what is under test
      process.kill(pid, 'SIGCONT');
      const result = await spinning;
      const rejected = await proxy.log.waitFor((rec) => rec.msg === 'connection rejected' && rec.client === result.client);
      assert.equal(rejected.reason, 'router_timeout', 'the connection is closed: the limit is of wall time');
      assert.match(String(rejected.detail), /busy machine/);
      // But it counts against nothing: the next call is served, on the same worker.
      assert.equal((await exchange(proxy.port, ['after'])).data, `${echo.port}:after`);
      assert.equal(pool.penaltyFor('starved', '127.0.0.1'), 0);
      assert.equal(r.inSlowLane, false);
      assert.equal(r.pid, pid);
      // A time-out it spends spinning does count (one strike is a penalty here).
      await exchange(proxy.port, ['spin']);
      assert.ok(pool.penaltyFor('starved', '127.0.0.1') > 0);
      assert.equal(r.inSlowLane, true);
    } finally {
      await proxy.close();
      await pool.close();
    }
  });

  it('serves a good tenant while a hostile one spins at its limit on the same worker', async () => {
    // The slow lane is off here: the worker's own scheduling is what is tested.
    const pool = new SandboxPool({ log: new CapturedLog().logger, workers: 1, slowLaneStrikes: 1e9, penaltyStrikes: 1e9 });
    const hostile = await startProxy('proxy(() => { for (;;) {} });', { sharedPool: pool, tenant: 'hostile' });
    const good = await startProxy(router(echo.port, stream.port), { sharedPool: pool, tenant: 'good' });
    try {
      let attacking = true;
      const attack = (async () => {
        let n = 0;
        while (attacking) {
          await Promise.all(Array.from({ length: 4 }, () => exchange(hostile.port, ['x'])));
          n += 4;
        }
        return n;
      })();
      const served = [];
      for (let i = 0; i < 100; i++) served.push((await exchange(good.port, [`r${i}`])).data);
      attacking = false;
      const attacks = await attack;
      served.forEach((d, i) => assert.equal(d, `${echo.port}:r${i}`));
      assert.equal(good.log.find('connection rejected').length, 0);
      assert.ok(attacks >= 4 && hostile.listener.stats.rejections.get('router_timeout') === attacks);
    } finally {
      await hostile.close();
      await good.close();
      await pool.close();
    }
  });
});
