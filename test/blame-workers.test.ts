/**
 * Blame goes to the tenant that did it, with real clients: two tenants on one sandbox worker,
 * `evil` crashing it (a heap growth that aborts V8) or hanging it (a built-in that ignores
 * termination, isolated-vm issue #527), `victim` routing beside it. Only the call that was
 * running is blamed; the victim's calls that were queued on the dead worker are sent again and
 * routed; evil's record survives a new version of its router and a quarantine lifts after its
 * quiet period.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import { CapturedLog, exchange, startEchoBackend, startProxy, type Exchange, type TestProxy, type TestServer, until } from './helpers.js';

function evilRouter(echoPort: number): string {
  return `proxy((data) => {
    if (data === 'crash') for (;;) {} // the test crashes its worker while this runs (see behind)
    if (data === 'hang') { 'ab'.repeat(2e7).replaceAll('a', 'cc'); }
    return { remote: '127.0.0.1:${echoPort}' };
  });`;
}

const victimRouter = (echoPort: number): string => `proxy(() => ({ remote: '127.0.0.1:${echoPort}' }));`;

/**
 * Starts evil's `input` and, once it is running on the worker, three victim connections queued
 * behind it. Resolves with evil's exchange and the victim's.
 */
async function behind(evil: TestProxy, victim: TestProxy, input: string): Promise<{ bad: Exchange; victims: Exchange[] }> {
  const evilRouterNow = evil.router as ProcessRouter;
  const running = evilRouterNow.running;
  const bad = exchange(evil.port, [input]);
  await until(() => evilRouterNow.running > running, `evil's ${input} is running`);
  const victims = Array.from({ length: 3 }, (_, i) => exchange(victim.port, [`v${i}`]));
  await until(() => (victim.router as ProcessRouter).pending >= 3, 'the victim has three calls on the worker');
  // A crash: the worker dies by a signal while evil's call runs, as when V8 aborts on it. (No
  // router code is known to abort isolated-vm 7's workers on Node 26, so the test deals it.)
  if (input === 'crash') process.kill(evilRouterNow.pid!, 'SIGSEGV');
  return { bad: await bad, victims: await Promise.all(victims) };
}

describe('blame', () => {
  let echo: TestServer;
  before(async () => {
    echo = await startEchoBackend();
  });
  after(() => echo.close());

  it('a crash is blamed on the call running: the queued victim is routed, evil quarantined, kept across a push, lifted after a quiet period', async () => {
    const log = new CapturedLog();
    const pool = new SandboxPool({ log: log.logger, workers: 1, quarantineQuietMs: 3000, slowLaneQuietMs: 1000, penaltyStrikes: 1e9 });
    const evil = await startProxy(evilRouter(echo.port), { sharedPool: pool, tenant: 'evil', limits: { routerTimeoutMs: 5000 } });
    const victim = await startProxy(victimRouter(echo.port), { sharedPool: pool, tenant: 'victim' });
    let evil2: ProcessRouter | undefined;
    try {
      const victimRouterNow = victim.router as ProcessRouter;
      for (let crash = 1; crash <= 3; crash++) {
        const { bad, victims } = await behind(evil, victim, 'crash');
        assert.equal(bad.data, '');
        const rejected = await evil.log.waitFor((r) => r.msg === 'connection rejected' && r.client === bad.client);
        assert.match(String(rejected.detail), /crashed .* while the call was running/, log.records.filter((r) => r.component === 'sandbox').map((r) => JSON.stringify(r)).join('\n'));
        victims.forEach((v, i) => assert.equal(v.data, `${echo.port}:v${i}`, `crash ${crash}: the victim's queued call was sent again and routed`));
        assert.equal(pool.strikesOf('evil'), crash);
        assert.equal(pool.strikesOf('victim'), 0);
      }
      const exits = log.find('sandbox worker exited; restarting');
      assert.ok(exits.every((r) => r.blamed === 'evil' && Number(r.resent) >= 3), JSON.stringify(exits));
      await log.waitFor((r) => r.msg === 'tenant quarantined in a worker of its own' && r.tenant === 'evil');
      assert.equal((evil.router as ProcessRouter).quarantined, true);
      assert.equal(victimRouterNow.quarantined, false);
      assert.equal(victim.log.find('connection rejected').length, 0, 'the victim lost no connection');
      const quarantinePid = (evil.router as ProcessRouter).pid;
      assert.notEqual(quarantinePid, victimRouterNow.pid);

      // A new version of evil's router keeps evil's record: quarantined, with its strikes.
      evil2 = await ProcessRouter.load(pool, { tenant: 'evil', source: evilRouter(echo.port), filename: 'evil.js', routerTimeoutMs: 5000, memoryMb: 32 }, new RouterConsole(log.logger, 'evil'));
      assert.equal(evil2.quarantined, true);
      assert.equal(evil2.pid, quarantinePid);
      assert.equal(pool.strikesOf('evil'), 3);

      // Quiet for quarantineQuietMs: the quarantine lifts and evil is back on the shared worker.
      await log.waitFor((r) => r.msg === 'quarantine lifted after a quiet period' && r.tenant === 'evil', 10_000);
      await until(() => evil2!.quarantined === false && !evil2!.inSlowLane, 'evil is back on the shared worker', 5000);
      assert.equal(evil2.pid, victimRouterNow.pid);
      assert.equal((await exchange(evil.port, ['fine'])).data, `${echo.port}:fine`);
      assert.equal((await exchange(victim.port, ['fine'])).data, `${echo.port}:fine`);
    } finally {
      evil2?.dispose();
      await evil.close();
      await victim.close();
      await pool.close();
    }
  });

  it('a hang is a strike against the call running: evil runs apart from then on, the queued victim is routed', async () => {
    const log = new CapturedLog();
    const pool = new SandboxPool({ log: log.logger, workers: 1, stuckGraceMs: 500, penaltyStrikes: 1e9 });
    const evil = await startProxy(evilRouter(echo.port), { sharedPool: pool, tenant: 'evil', limits: { routerTimeoutMs: 50, memoryMb: 128 } });
    const victim = await startProxy(victimRouter(echo.port), { sharedPool: pool, tenant: 'victim' });
    // The victim also routes one connection after another throughout, so that some of its calls
    // start on the worker's thread just before evil's (and have returned, unanswered, when it hangs).
    let routing = true;
    const steady = (async () => {
      let n = 0;
      for (; routing; n++) assert.equal((await exchange(victim.port, [`s${n}`])).data, `${echo.port}:s${n}`);
      return n;
    })();
    try {
      const victimRouterNow = victim.router as ProcessRouter;
      const { bad, victims } = await behind(evil, victim, 'hang');
      const rejected = await evil.log.waitFor((r) => r.msg === 'connection rejected' && r.client === bad.client);
      assert.equal(rejected.reason, 'router_timeout');
      assert.match(String(rejected.detail), /hung past its time limit/);
      victims.forEach((v, i) => assert.equal(v.data, `${echo.port}:v${i}`, "the victim's queued calls were sent again and routed"));
      assert.equal(pool.strikesOf('evil'), 1);
      assert.equal(pool.strikesOf('victim'), 0);
      assert.equal((evil.router as ProcessRouter).inSlowLane, true, 'the hang is a time-out too');
      const sharedPid = victimRouterNow.pid;

      // Evil runs apart: its next hangs stall the slow lane, not the victim's worker, and the
      // third one quarantines it.
      for (let hang = 2; hang <= 3; hang++) {
        const next = exchange(evil.port, ['hang']);
        for (let i = 0; i < 5; i++) assert.equal((await exchange(victim.port, [`w${i}`])).data, `${echo.port}:w${i}`);
        const r = await next;
        assert.equal((await evil.log.waitFor((rec) => rec.msg === 'connection rejected' && rec.client === r.client)).reason, 'router_timeout');
      }
      await log.waitFor((r) => r.msg === 'tenant quarantined in a worker of its own' && r.tenant === 'evil');
      assert.equal(victimRouterNow.pid, sharedPid, "the victim's worker was never killed again");
      assert.equal(victimRouterNow.quarantined, false);
      routing = false;
      assert.ok((await steady) > 10);
      assert.equal(pool.strikesOf('victim'), 0);
      assert.equal(victimRouterNow.inSlowLane, false);
      assert.equal(victim.log.find('connection rejected').length, 0, 'the victim lost no connection');
    } finally {
      routing = false;
      await steady.catch(() => undefined);
      await evil.close();
      await victim.close();
      await pool.close();
    }
  });
});
