/**
 * Tenants at scale: a tenant's cold start (its first decision, isolate built on demand, as
 * after a restart or an LRU eviction) and the memory a warm tenant costs (worker RSS per
 * isolate), hence how many warm tenants fit in 2 GiB.
 *
 *   node --no-node-snapshot dist/bench/tenants.js [--tenants N]
 *
 * Prints a table and one JSON line. No sockets; bounded.
 */
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import type { ConnInfo } from '../src/sandbox/router.js';
import { gitRequest, numberArg, parseArgs } from './common.js';

const args = parseArgs(process.argv.slice(2));
const tenants = Math.floor(numberArg(args, 'tenants', 500));
setTimeout(() => {
  process.stderr.write('tenants bench: time limit reached\n');
  process.exit(2);
}, 600_000).unref();

const log = pino({ level: 'silent' });
const source = readFileSync(new URL('../../routers/git.js', import.meta.url), 'utf8');
const data = gitRequest('mojombo', 'grit');
const conn: ConnInfo = { tenant: 'bench', remoteAddress: '127.0.0.1', remotePort: 40000, localAddress: '127.0.0.1', localPort: 9418 };
const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) / 1024;

const pool = new SandboxPool({ log, workers: 1, maxWarmIsolates: tenants + 10 });
try {
  // Registering is free; each tenant's first call builds its isolate (the cold start).
  const routers = Array.from({ length: tenants }, (_, i) =>
    ProcessRouter.cold(pool, { tenant: `t${i}`, source, filename: 'git.js', routerTimeoutMs: 50, memoryMb: 32 }, new RouterConsole(log, `t${i}`)),
  );
  const warmup = ProcessRouter.cold(pool, { tenant: 'warmup', source, filename: 'git.js', routerTimeoutMs: 50, memoryMb: 32 }, new RouterConsole(log, 'w'));
  await warmup.warm();
  await warmup.route(data, conn);
  const pid = warmup.pid!;
  const before = rssMb(pid);
  const cold: number[] = [];
  const warm: number[] = [];
  for (const r of routers) {
    let t0 = performance.now();
    await r.warm();
    await r.route(data, conn);
    cold.push(performance.now() - t0);
    t0 = performance.now();
    await r.route(data, conn);
    warm.push(performance.now() - t0);
  }
  const after = rssMb(pid);
  const figures = await pool.figures();
  const perTenantMb = (after - before) / tenants;
  const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);
  const p = (xs: number[], q: number): number => sorted(xs)[Math.min(xs.length - 1, Math.floor(xs.length * q))]!;
  const result = {
    tenants,
    coldStartMs: { p50: p(cold, 0.5), p99: p(cold, 0.99) },
    warmCallMs: { p50: p(warm, 0.5), p99: p(warm, 0.99) },
    workerRssMb: { before, after },
    rssPerWarmTenantMb: perTenantMb,
    heapPerIsolateMb: figures.heapBytes / figures.isolates / 1024 / 1024,
    warmTenantsPer2GiB: Math.floor(2048 / perTenantMb),
  };
  console.log(`${tenants} tenants in one worker`);
  console.log(`  cold start (first decision, isolate built): p50 ${result.coldStartMs.p50.toFixed(2)} ms, p99 ${result.coldStartMs.p99.toFixed(2)} ms`);
  console.log(`  its second decision (V8 still compiling): p50 ${result.warmCallMs.p50.toFixed(3)} ms, p99 ${result.warmCallMs.p99.toFixed(3)} ms`);
  console.log(`  worker RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MiB: ${perTenantMb.toFixed(2)} MiB per warm tenant (V8 heap ${result.heapPerIsolateMb.toFixed(2)} MiB per isolate)`);
  console.log(`  warm tenants within 2 GiB: ${result.warmTenantsPer2GiB}`);
  console.log(JSON.stringify(result));
} finally {
  await pool.close();
}
