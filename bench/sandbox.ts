/**
 * The sandbox under attack, measured:
 *
 * - fairness: a good tenant's decision latency (p50/p99, calls through the worker pool as the
 *   service makes them) alone, then beside a hostile tenant whose router spins at its time limit
 *   on every call — on a separate worker and on the same worker, with and without the penalty on
 *   the hostile client's source address (blame.ts);
 * - memory bombs: a worker's resident memory after 500 calls that each exhaust their isolate's
 *   32 MiB heap.
 *
 *   node --no-node-snapshot dist/bench/sandbox.js [--calls N] [--bombs N]
 *
 * Prints a table and one JSON line. Bounded in time and count; no sockets.
 */
import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import type { ConnInfo } from '../src/sandbox/router.js';
import { gitRequest, numberArg, parseArgs } from './common.js';

const args = parseArgs(process.argv.slice(2));
const calls = Math.floor(numberArg(args, 'calls', 5000));
const bombs = Math.floor(numberArg(args, 'bombs', 500));
setTimeout(() => {
  process.stderr.write('sandbox bench: time limit reached\n');
  process.exit(2);
}, 600_000).unref();

const log = pino({ level: 'silent' });
const conn: ConnInfo = { tenant: 'bench', remoteAddress: '127.0.0.1', remotePort: 40000, localAddress: '127.0.0.1', localPort: 9418 };
const good = `const users = { mojombo: '127.0.0.1:9418' };
proxy((data) => {
  const m = /^....git-upload-pack \\/([\\w.\\-]+)\\/[\\w.\\-]+\\0host=[\\w.\\-:]+\\0/.exec(data);
  if (!m) return { noop: true };
  return Object.hasOwn(users, m[1]) ? { remote: users[m[1]] } : { close: true };
});`;
const spin = 'proxy(() => { for (;;) {} });';

function spec(tenant: string, source: string, memoryMb = 32) {
  return { tenant, source, filename: `${tenant}.js`, routerTimeoutMs: 50, memoryMb };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

/** A good tenant's decision latencies (µs), sequential calls, while `hostile` (if any) attacks. */
async function latencies(workers: number, hostile: 'none' | 'other-worker' | 'same-worker', penalty: boolean): Promise<{ p50: number; p99: number; attacks: number }> {
  const pool = new SandboxPool({ log, workers, ...(penalty ? {} : { penaltyStrikes: Number.MAX_SAFE_INTEGER }) });
  try {
    // Tenants are spread round-robin over the workers: the order of loading places them.
    const bad = hostile === 'none' ? undefined : await ProcessRouter.load(pool, spec('hostile', spin), new RouterConsole(log, 'hostile'));
    const router = await ProcessRouter.load(pool, spec('good', good), new RouterConsole(log, 'good'));
    if (bad !== undefined && (bad.pid === router.pid) !== (hostile === 'same-worker')) throw new Error('tenants not placed as intended');
    const data = gitRequest('mojombo', 'grit');
    // Warm up for a second: every worker of the pool has booted (a booting worker takes CPU
    // from the others for a few hundred ms) and the code on both sides is optimised.
    const warmUntil = performance.now() + 1000;
    while (performance.now() < warmUntil) await router.route(data, conn);
    let attacking = bad !== undefined;
    let attacks = 0;
    // The hostile tenant: 4 connections at a time, each call spinning to the limit.
    const attackers = Array.from({ length: bad === undefined ? 0 : 4 }, async () => {
      while (attacking) {
        const refused = await bad!.route('x', conn).then(
          () => false,
          (e: { reason?: string }) => e.reason === 'source_penalty',
        );
        attacks++;
        if (refused) await new Promise((r) => setTimeout(r, 10));
      }
    });
    const samples: number[] = [];
    for (let i = 0; i < calls; i++) {
      const t0 = process.hrtime.bigint();
      await router.route(data, conn);
      samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    attacking = false;
    await Promise.all(attackers);
    samples.sort((a, b) => a - b);
    return { p50: percentile(samples, 50), p99: percentile(samples, 99), attacks };
  } finally {
    await pool.close();
  }
}

function rssMb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) / 1024;
}

/** Worker RSS before and after `bombs` memory bombs on 32 MiB isolates (4 tenants at a time). */
async function memoryBombs(): Promise<{ before: number; peak: number; after: number; reasons: Record<string, number>; sameWorker: boolean }> {
  const pool = new SandboxPool({ log, workers: 1 });
  try {
    const source = "proxy((d) => { if (d === 'ok') return { noop: true }; const a = []; for (let i = 0; ; i++) a.push(new Array(1e5).fill(i)); });";
    const routers = await Promise.all(Array.from({ length: 4 }, (_, i) => ProcessRouter.load(pool, { ...spec(`bomb${i}`, source), routerTimeoutMs: 5000 }, new RouterConsole(log, 'bomb'))));
    const pid = routers[0]!.pid!;
    const before = rssMb(pid);
    let peak = before;
    const reasons: Record<string, number> = {};
    for (let i = 0; i < bombs; i += routers.length) {
      await Promise.all(routers.map((r) => r.route('boom', conn).catch((e: { reason?: string }) => void (reasons[e.reason ?? '?'] = (reasons[e.reason ?? '?'] ?? 0) + 1))));
      peak = Math.max(peak, rssMb(pid));
    }
    await routers[0]!.route('ok', conn);
    return { before, peak, after: rssMb(pid), reasons, sameWorker: routers[0]!.pid === pid };
  } finally {
    await pool.close();
  }
}

await latencies(2, 'none', true); // warm up the machine: the first pool started pays for it
const fairness = {
  alone: await latencies(2, 'none', true),
  otherWorker: await latencies(2, 'other-worker', false),
  sameWorker: await latencies(1, 'same-worker', false),
  sameWorkerPenalty: await latencies(1, 'same-worker', true),
};
const bombResult = await memoryBombs();

const row = (name: string, r: { p50: number; p99: number; attacks: number }): string =>
  `  ${name.padEnd(52)} ${r.p50.toFixed(0).padStart(7)} ${r.p99.toFixed(0).padStart(7)} ${(r.p99 / fairness.alone.p99).toFixed(2).padStart(8)}x ${String(r.attacks).padStart(8)}`;
console.log(`good tenant's decision latency, ${calls} sequential calls (µs)          p50     p99  p99/alone  attacks`);
console.log(row('alone', fairness.alone));
console.log(row('hostile neighbour on the other worker, no penalty', fairness.otherWorker));
console.log(row('hostile neighbour on the same worker, no penalty', fairness.sameWorker));
console.log(row('hostile neighbour on the same worker, source penalty', fairness.sameWorkerPenalty));
console.log(
  `worker RSS across ${bombs} memory bombs (32 MiB isolates): ${bombResult.before.toFixed(0)} MiB before, peak ${bombResult.peak.toFixed(0)}, ${bombResult.after.toFixed(0)} after; outcomes ${JSON.stringify(bombResult.reasons)}; ${bombResult.sameWorker ? 'same worker throughout' : 'worker replaced'}`,
);
console.log(JSON.stringify({ fairness, bombs: bombResult }));
