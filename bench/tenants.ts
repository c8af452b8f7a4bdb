/**
 * Tenants at scale: a tenant's cold start (its first decision, isolate built on demand, as
 * after a restart or an LRU eviction) and the memory a warm tenant costs (worker RSS per
 * isolate), hence how many warm tenants fit in 2 GiB.
 *
 * Cold starts are measured two ways: one tenant at a time with the worker idle before it
 * (a spare isolate ready, which is what a worker keeps once idle for 20 ms: blank.ts), and
 * back to back, each tenant's first decision right after the previous one's, so no spare is
 * ever ready (a burst, as when a proxy restarts with every tenant cold).
 *
 *   node --no-node-snapshot dist/bench/tenants.js [--tenants N] [--idle-tenants M]
 *
 * Prints a table and one JSON line. No sockets; bounded.
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import type { ConnInfo } from '../src/sandbox/router.js';
import { gitRequest, numberArg, parseArgs } from './common.js';

const args = parseArgs(process.argv.slice(2));
const tenants = Math.floor(numberArg(args, 'tenants', 500));
const idleTenants = Math.floor(numberArg(args, 'idle-tenants', Math.min(200, tenants)));
setTimeout(() => {
  process.stderr.write('tenants bench: time limit reached\n');
  process.exit(2);
}, 600_000).unref();

const log = pino({ level: 'silent' });
const source = readFileSync(new URL('../../routers/git.js', import.meta.url), 'utf8');
const data = gitRequest('mojombo', 'grit');
const conn: ConnInfo = { tenant: 'bench', remoteAddress: '127.0.0.1', remotePort: 40000, localAddress: '127.0.0.1', localPort: 9418 };
const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) / 1024;

const pool = new SandboxPool({ log, workers: 1, maxWarmIsolates: tenants + idleTenants + 10 });
const cold = (name: string): ProcessRouter =>
  ProcessRouter.cold(pool, { tenant: name, source, filename: 'git.js', routerTimeoutMs: 50, memoryMb: 32 }, new RouterConsole(log, name));
/** Resolves once the worker reports a spare isolate built (it builds one after 20 ms idle). */
const spareReady = async (): Promise<void> => {
  while ((await pool.figures()).spareIsolates === 0) await sleep(5);
};
/** A tenant's first decision: the load (its isolate built) and the decision, and then its second. */
const firstDecisions = async (r: ProcessRouter): Promise<[number, number]> => {
  let t0 = performance.now();
  await r.warm();
  await r.route(data, conn);
  const first = performance.now() - t0;
  t0 = performance.now();
  await r.route(data, conn);
  return [first, performance.now() - t0];
};
try {
  // Registering is free; each tenant's first call builds its isolate (the cold start).
  const warmup = cold('warmup');
  await warmup.warm();
  await warmup.route(data, conn);
  const pid = warmup.pid!;
  await spareReady();
  const before = rssMb(pid);
  const spares0 = (await pool.figures()).coldStartsFromSpare;
  const coldBurst: number[] = [];
  const warm: number[] = [];
  for (let i = 0; i < tenants; i++) {
    const [first, second] = await firstDecisions(cold(`t${i}`));
    coldBurst.push(first);
    warm.push(second);
  }
  // Both readings with a spare built, so the difference is the tenants' isolates alone.
  await spareReady();
  const after = rssMb(pid);
  const figures = await pool.figures();
  const coldIdle: number[] = [];
  const spares1 = figures.coldStartsFromSpare;
  for (let i = 0; i < idleTenants; i++) {
    await spareReady();
    coldIdle.push((await firstDecisions(cold(`idle${i}`)))[0]);
  }
  const spares2 = (await pool.figures()).coldStartsFromSpare;
  const perTenantMb = (after - before) / tenants;
  const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);
  const p = (xs: number[], q: number): number => sorted(xs)[Math.min(xs.length - 1, Math.floor(xs.length * q))]!;
  const result = {
    tenants,
    idleTenants,
    coldStartMs: { p50: p(coldIdle, 0.5), p99: p(coldIdle, 0.99) },
    coldStartBurstMs: { p50: p(coldBurst, 0.5), p99: p(coldBurst, 0.99) },
    /** How many of each series' builds started from a spare (the burst's first one may). */
    fromSpare: { idle: spares2 - spares1, burst: spares1 - spares0 },
    warmCallMs: { p50: p(warm, 0.5), p99: p(warm, 0.99) },
    workerRssMb: { before, after },
    rssPerWarmTenantMb: perTenantMb,
    heapPerIsolateMb: figures.heapBytes / figures.isolates / 1024 / 1024,
    warmTenantsPer2GiB: Math.floor(2048 / perTenantMb),
  };
  console.log(`${tenants} tenants in one worker`);
  console.log(`  cold start (first decision, isolate built), worker idle before it (${idleTenants} tenants, ${result.fromSpare.idle} from a spare): p50 ${result.coldStartMs.p50.toFixed(2)} ms, p99 ${result.coldStartMs.p99.toFixed(2)} ms`);
  console.log(`  cold start, back to back (${result.fromSpare.burst} from a spare): p50 ${result.coldStartBurstMs.p50.toFixed(2)} ms, p99 ${result.coldStartBurstMs.p99.toFixed(2)} ms`);
  console.log(`  its second decision (V8 still compiling): p50 ${result.warmCallMs.p50.toFixed(3)} ms, p99 ${result.warmCallMs.p99.toFixed(3)} ms`);
  console.log(`  worker RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MiB: ${perTenantMb.toFixed(2)} MiB per warm tenant (V8 heap ${result.heapPerIsolateMb.toFixed(2)} MiB per isolate)`);
  console.log(`  warm tenants within 2 GiB: ${result.warmTenantsPer2GiB}`);
  console.log(JSON.stringify(result));
} finally {
  await pool.close();
}
