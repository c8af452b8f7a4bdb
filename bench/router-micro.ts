/**
 * Micro-benchmark: the cost of one sandboxed router call (copy the buffer in, run the router,
 * build the envelope, validate), in this process (IsolateRouter) and as Switchyard's CLI makes
 * it, through a sandbox worker process (SandboxPool + ProcessRouter).
 *
 *   node --no-node-snapshot dist/bench/router-micro.js --router FILE [--calls N] [--inflight K]
 *
 * Reports µs per call, wall and CPU (this process with its isolate threads, plus its worker
 * process), sequentially (each call awaited) and pipelined (K calls in flight), next to the same
 * routing as a plain JS function
 * and to bare isolated-vm calls of an empty function (what any call costs before the router runs).
 * Prints one JSON line.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import ivm from 'isolated-vm';
import { pino } from 'pino';
import { RouterConsole } from '../src/sandbox/console.js';
import { IsolateRouter } from '../src/sandbox/isolate-router.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import type { ConnInfo } from '../src/sandbox/router.js';
import { delta, gitRequest, numberArg, parseArgs, snapshot } from './common.js';

const args = parseArgs(process.argv.slice(2));
const file = args.get('router');
if (file === undefined) throw new Error('--router FILE is required');
const calls = Math.max(100, Math.floor(numberArg(args, 'calls', 20_000)));
const inflight = Math.max(1, Math.floor(numberArg(args, 'inflight', 64)));
// Bound: never run longer than this, whatever the machine.
setTimeout(() => {
  process.stderr.write('router-micro: time limit reached\n');
  process.exit(2);
}, numberArg(args, 'max-ms', 120_000)).unref();

const source = readFileSync(file, 'utf8');
const data = gitRequest('mojombo', 'grit');
const conn: ConnInfo = { tenant: 'bench', remoteAddress: '127.0.0.1', remotePort: 40000, localAddress: '127.0.0.1', localPort: 9418 };

interface Measure {
  calls: number;
  usPerCall: number;
  cpuUsPerCall: number;
}

async function measure(n: number, k: number, call: () => Promise<unknown>): Promise<Measure> {
  const cpu0 = process.cpuUsage();
  const tree0 = snapshot([process.pid]);
  const t0 = process.hrtime.bigint();
  if (k === 1) {
    for (let i = 0; i < n; i++) await call();
  } else {
    await new Promise<void>((resolve, reject) => {
      let launched = 0;
      let finished = 0;
      const launch = (): void => {
        if (launched >= n) return;
        launched++;
        call().then(() => {
          if (++finished === n) resolve();
          else launch();
        }, reject);
      };
      for (let i = 0; i < k; i++) launch();
    });
  }
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  // Child processes (the sandbox worker) from /proc, in 10 ms ticks: enough over thousands of calls.
  const childrenUs = (delta(tree0, snapshot([process.pid])).trees[process.pid]?.childrenMs ?? 0) * 1000;
  return { calls: n, usPerCall: wallUs / n, cpuUsPerCall: (cpu.user + cpu.system + childrenUs) / n };
}

const log = pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: true }));
const router = await IsolateRouter.load({
  source,
  filename: basename(file),
  routerTimeoutMs: 50,
  memoryMb: 32,
  console: new RouterConsole(log, 'bench'),
});
const first = await router.route(data, conn);
const pool = new SandboxPool({ log, workers: 1 });
if (first.kind !== 'remote') throw new Error(`the bench router did not route the request: ${JSON.stringify(first)}`);
const route = (): Promise<unknown> => router.route(data, conn);

await measure(Math.min(2000, calls), 1, route); // warm-up
const sequential = await measure(calls, 1, route);
const pipelined = await measure(calls, inflight, route);
router.dispose();

// The same calls as the CLI makes them: to a sandbox worker process over its socket pair.
const remote = await ProcessRouter.load(pool, { tenant: 'bench', source, filename: basename(file), routerTimeoutMs: 50, memoryMb: 32 }, new RouterConsole(log, 'bench'));
const remoteFirst = await remote.route(data, conn);
if (remoteFirst.kind !== 'remote') throw new Error(`the worker did not route the request: ${JSON.stringify(remoteFirst)}`);
const remoteRoute = (): Promise<unknown> => remote.route(data, conn);
await measure(Math.min(2000, calls), 1, remoteRoute); // warm-up
const processSequential = await measure(calls, 1, remoteRoute);
const processPipelined = await measure(calls, inflight, remoteRoute);
remote.dispose();
await pool.close();

// The same rule as a plain JS function (what the plain proxy runs).
const users: Record<string, string> = { mojombo: '127.0.0.1:9418', defunkt: '127.0.0.1:9419' };
const rule = /^....git-upload-pack \/([\w.\-]+)\/[\w.\-]+\0host=[\w.\-:]+\0/;
const plainRoute = (d: string): object => {
  const m = rule.exec(d);
  if (!m) return { noop: true };
  if (!Object.hasOwn(users, m[1]!)) return { close: '0015ERR unknown user\n' };
  return { remote: users[m[1]!] };
};
const plainN = calls * 50;
let sink = 0;
const p0 = process.hrtime.bigint();
// Slice so the regex runs on a fresh string each time, as it does on a new connection's buffer.
for (let i = 0; i < plainN; i++) sink += Object.keys(plainRoute(data.slice(i & 1))).length;
const plainUs = Number(process.hrtime.bigint() - p0) / 1000 / plainN;

// Bare isolated-vm calls of an empty function: the floor under any sandboxed call.
const isolate = new ivm.Isolate({ memoryLimit: 32 });
const context = await isolate.createContext();
const empty = (await context.eval('(function (a, b, c, d, e, f) { return "{}"; })', { reference: true })) as ivm.Reference<unknown>;
const argsIn = [data, conn.tenant, conn.remoteAddress, conn.remotePort, conn.localAddress, conn.localPort];
const bareN = Math.min(calls, 20_000);
await measure(1000, 1, () => empty.apply(undefined, argsIn, { timeout: 50 }));
const bareTimeout = await measure(bareN, 1, () => empty.apply(undefined, argsIn, { timeout: 50 }));
const bareNoTimeout = await measure(bareN, 1, () => empty.apply(undefined, argsIn));
const bareSync = await measure(bareN, 1, async () => empty.applySync(undefined, argsIn));
isolate.dispose();

process.stdout.write(
  JSON.stringify({
    calls,
    inflight,
    sequential,
    pipelined,
    processSequential,
    processPipelined,
    plainFunctionUsPerCall: plainUs,
    bareIvm: { applyWithTimeout: bareTimeout, applyNoTimeout: bareNoTimeout, applySync: bareSync },
    check: sink > 0,
  }) + '\n',
);
process.exit(0);
