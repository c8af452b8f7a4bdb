/**
 * Blame, measured with real clients on loopback (two or three tenants on one sandbox worker):
 *
 * - probe: a router whose regex backtracks on crafted input (`/^(a+)+$/` over the first line)
 *   gets 5 crafted connections every `--interval` s from 127.0.0.2 while a legitimate client
 *   probes it every 100 ms from 127.0.0.3, for `--seconds` s; a co-tenant on the same worker
 *   routes one connection after another from 127.0.0.4. Figures: probes routed / refused, and
 *   the co-tenant's p50/p99 alone and under attack.
 * - crash: `evil` aborts the worker 3 times (heap growth), with 3 `victim` connections queued
 *   behind each crash; then `evil` is pushed again 4 times, each new version crashing once.
 *   Figures: victim connections lost, whether each tenant ends quarantined, and how many of the
 *   pushed versions' crashes restarted the shared worker.
 * - hang: `evil` hangs the worker 4 times in 14 s (a replaceAll that ignores termination) while
 *   the victim routes one connection after another. Figures: the victim's longest stall, lost
 *   connections, quarantines, and where evil ended up.
 *
 *   node --no-node-snapshot dist/bench/blame.js [--seconds S] [--interval S] [--skip-probe] [--skip-crash] [--skip-hang] [--log]
 *
 * Uses only the pool's and the listener's public API, so the same file measures an older tree.
 * Prints a table and one JSON line. Bounded in time; only 127.0.0.x is used.
 */
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { pino } from 'pino';
import { defaultLimits } from '../src/config.js';
import { TenantListener } from '../src/listener.js';
import { RouterConsole } from '../src/sandbox/console.js';
import { SandboxPool } from '../src/sandbox/pool.js';
import { ProcessRouter } from '../src/sandbox/process-router.js';
import { numberArg, parseArgs } from './common.js';

const args = parseArgs(process.argv.slice(2));
const seconds = Math.min(300, numberArg(args, 'seconds', 30));
const intervalS = Math.min(60, numberArg(args, 'interval', 2));
setTimeout(() => {
  process.stderr.write('blame bench: time limit reached\n');
  process.exit(2);
}, 900_000).unref();

/** --log: the service's log (sandbox events, rejections) on stderr. */
const log = args.has('log') ? pino({ level: 'info' }, pino.destination(2)) : pino({ level: 'silent' });

interface Tenant {
  readonly name: string;
  router: ProcessRouter;
  readonly listener: TenantListener;
  readonly port: number;
}

async function echoBackend(): Promise<{ port: number; server: Server }> {
  const server = createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', (d: Buffer) => s.end(`ok:${d.toString('latin1')}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, server };
}

async function tenant(pool: SandboxPool, name: string, source: string, limits: { routerTimeoutMs?: number; memoryMb?: number } = {}): Promise<Tenant> {
  const l = { ...defaultLimits, ...limits };
  const router = await ProcessRouter.load(pool, { tenant: name, source, filename: `${name}.js`, routerTimeoutMs: l.routerTimeoutMs, memoryMb: l.memoryMb }, new RouterConsole(log, name));
  const listener = new TenantListener({ tenant: name, router, limits: l, log });
  const { port } = await listener.listen(0, '127.0.0.1');
  return { name, router, listener, port };
}

async function closeTenant(t: Tenant): Promise<void> {
  t.listener.destroy();
  await t.listener.close();
  t.router.dispose();
}

/** One client connection from `from`: sends `text`, resolves with what came back and how long it took (ms). */
async function client(port: number, text: string, from: string): Promise<{ data: string; ms: number }> {
  const t0 = performance.now();
  const socket = connect({ port, host: '127.0.0.1', localAddress: from, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  socket.on('data', (b: Buffer) => chunks.push(b));
  socket.on('error', () => undefined);
  socket.on('end', () => socket.end());
  socket.write(text);
  await once(socket, 'close');
  return { data: Buffer.concat(chunks).toString('latin1'), ms: performance.now() - t0 };
}

function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

async function until(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

const regexRouter = (echo: number): string => `proxy((data) => {
  const nl = data.indexOf('\\n');
  if (nl < 0) return { noop: true };
  if (/^(a+)+$/.test(data.slice(0, nl))) return { close: 'only a\\n' };
  return { remote: '127.0.0.1:${echo}' };
});`;
const evilRouter = (echo: number): string => `proxy((data) => {
  if (data === 'crash') { const m = new Map(); for (let i = 0; ; i++) m.set(i, { i }); }
  if (data === 'hang') { 'ab'.repeat(2e7).replaceAll('a', 'cc'); }
  return { remote: '127.0.0.1:${echo}' };
});`;
const victimRouter = (echo: number): string => `proxy(() => ({ remote: '127.0.0.1:${echo}' }));`;

function rejected(t: Tenant): Record<string, number> {
  return Object.fromEntries(t.listener.stats.rejections);
}

async function probeScenario(echo: number) {
  const pool = new SandboxPool({ log, workers: 1 });
  const target = await tenant(pool, 'regex', regexRouter(echo));
  const neighbour = await tenant(pool, 'neighbour', regexRouter(echo));
  try {
    const latencies = async (stopAt: number): Promise<number[]> => {
      const out: number[] = [];
      while (performance.now() < stopAt) out.push((await client(neighbour.port, 'n\n', '127.0.0.4')).ms);
      return out;
    };
    await latencies(performance.now() + 1000);
    const alone = await latencies(performance.now() + 5000);
    const probes: Promise<boolean>[] = [];
    const attacks: Promise<unknown>[] = [];
    const attackTimer = setInterval(() => {
      for (let i = 0; i < 5; i++) attacks.push(client(target.port, `${'a'.repeat(32)}b\n`, '127.0.0.2'));
    }, intervalS * 1000);
    const probeTimer = setInterval(() => probes.push(client(target.port, 'probe\n', '127.0.0.3').then((r) => r.data === 'ok:probe\n')), 100);
    const underAttack = await latencies(performance.now() + seconds * 1000);
    clearInterval(attackTimer);
    clearInterval(probeTimer);
    const results = await Promise.all(probes);
    await Promise.all(attacks);
    const routed = results.filter(Boolean).length;
    return {
      seconds,
      intervalS,
      probes: results.length,
      routed,
      routedShare: routed / results.length,
      targetRejections: rejected(target),
      neighbour: { aloneP50: pct(alone, 50), aloneP99: pct(alone, 99), attackP50: pct(underAttack, 50), attackP99: pct(underAttack, 99), lost: neighbour.listener.stats.rejections.size },
      quarantined: target.router.quarantined,
    };
  } finally {
    await closeTenant(target);
    await closeTenant(neighbour);
    await pool.close();
  }
}

/** Starts evil's `input` and, once evil's call is in flight, 3 victim connections behind it; resolves with the victim's results. */
async function behind(evil: Tenant, victim: Tenant, input: string): Promise<boolean[]> {
  const bad = client(evil.port, input, '127.0.0.2');
  await until(() => evil.router.pending > 0, 2000);
  await new Promise((r) => setTimeout(r, 50)); // let evil's call start running on the worker
  const victims = await Promise.all(Array.from({ length: 3 }, () => client(victim.port, 'v', '127.0.0.3')));
  await bad;
  return victims.map((v) => v.data === 'ok:v');
}

async function crashScenario(echo: number) {
  const pool = new SandboxPool({ log, workers: 1 });
  const evil = await tenant(pool, 'evil', evilRouter(echo), { routerTimeoutMs: 5000 });
  const victim = await tenant(pool, 'victim', victimRouter(echo));
  try {
    const victimPids = new Set<number | undefined>([victim.router.pid]);
    let victimSent = 0;
    let victimRouted = 0;
    for (let i = 0; i < 3; i++) {
      const r = await behind(evil, victim, 'crash');
      victimSent += r.length;
      victimRouted += r.filter(Boolean).length;
      await until(() => victim.router.pid !== undefined, 2000);
      victimPids.add(victim.router.pid);
    }
    const afterCrashes = { evilQuarantined: evil.router.quarantined, victimQuarantined: victim.router.quarantined };
    // Pushes: a new version of evil's router each time, then one crash.
    let sharedRestarts = 0;
    const sharedPid = (): number | undefined => pool.workers.find((w) => w.name === 'worker-1')?.pid;
    for (let i = 0; i < 4; i++) {
      const next = await ProcessRouter.load(pool, { tenant: 'evil', source: evilRouter(echo), filename: 'evil.js', routerTimeoutMs: 5000, memoryMb: 32 }, new RouterConsole(log, 'evil'));
      evil.listener.setRouter(next); // disposes the old version
      evil.router = next;
      const pidBefore = sharedPid();
      await next.route('crash', { tenant: 'evil', remoteAddress: '127.0.0.2', remotePort: 1, localAddress: '127.0.0.1', localPort: evil.port }).catch(() => undefined);
      const r = await Promise.all(Array.from({ length: 3 }, () => client(victim.port, 'v', '127.0.0.3')));
      victimSent += r.length;
      victimRouted += r.filter((v) => v.data === 'ok:v').length;
      if (sharedPid() !== pidBefore) sharedRestarts++;
    }
    return {
      victimSent,
      victimLost: victimSent - victimRouted,
      victimRejections: rejected(victim),
      ...afterCrashes,
      afterPushes: { evilQuarantined: evil.router.quarantined, victimQuarantined: victim.router.quarantined, sharedWorkerRestarts: sharedRestarts },
    };
  } finally {
    await closeTenant(evil);
    await closeTenant(victim);
    await pool.close();
  }
}

async function hangScenario(echo: number) {
  const pool = new SandboxPool({ log, workers: 1 });
  const evil = await tenant(pool, 'evil', evilRouter(echo), { routerTimeoutMs: 50, memoryMb: 128 });
  const victim = await tenant(pool, 'victim', victimRouter(echo));
  try {
    const startPid = victim.router.pid;
    const pids = new Set<number | undefined>([startPid]);
    const stalls: number[] = [];
    let sent = 0;
    let routed = 0;
    let running = true;
    const victimLoop = (async () => {
      while (running) {
        const r = await client(victim.port, 'v', '127.0.0.3');
        sent++;
        if (r.data === 'ok:v') routed++;
        stalls.push(r.ms);
        pids.add(victim.router.pid);
      }
    })();
    const evilReasons: string[] = [];
    for (let i = 0; i < 4; i++) {
      const t0 = performance.now();
      await client(evil.port, 'hang', '127.0.0.2');
      const left = 3500 - (performance.now() - t0);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
    running = false;
    await victimLoop;
    for (const [reason, n] of evil.listener.stats.rejections) evilReasons.push(`${reason}:${n}`);
    return {
      victimSent: sent,
      victimLost: sent - routed,
      victimLongestStallMs: Math.max(...stalls),
      victimStallsOver1s: stalls.filter((s) => s > 1000).length,
      victimWorkerRestarts: pids.size - 1,
      victimQuarantined: victim.router.quarantined,
      evilRejections: evilReasons,
      evilQuarantined: evil.router.quarantined,
      evilInSlowLane: evil.router.inSlowLane,
    };
  } finally {
    await closeTenant(evil);
    await closeTenant(victim);
    await pool.close();
  }
}

const echo = await echoBackend();
const result: Record<string, unknown> = {};
try {
  if (!args.has('skip-probe')) {
    const p = await probeScenario(echo.port);
    result.probe = p;
    console.log(`probe: ${p.routed}/${p.probes} routed (${(p.routedShare * 100).toFixed(1)}%) under 5 crafted connections every ${intervalS} s for ${seconds} s; target rejections ${JSON.stringify(p.targetRejections)}`);
    console.log(`  co-tenant p50/p99 alone ${p.neighbour.aloneP50.toFixed(2)}/${p.neighbour.aloneP99.toFixed(2)} ms, under attack ${p.neighbour.attackP50.toFixed(2)}/${p.neighbour.attackP99.toFixed(2)} ms (${(p.neighbour.attackP99 / p.neighbour.aloneP99).toFixed(2)}x)`);
  }
  if (!args.has('skip-crash')) {
    const c = await crashScenario(echo.port);
    result.crash = c;
    console.log(`crash: victim lost ${c.victimLost}/${c.victimSent}; after 3 crashes evil quarantined ${c.evilQuarantined}, victim quarantined ${c.victimQuarantined}; after 4 pushes + crashes: evil ${c.afterPushes.evilQuarantined}, victim ${c.afterPushes.victimQuarantined}, shared worker restarts ${c.afterPushes.sharedWorkerRestarts}`);
  }
  if (!args.has('skip-hang')) {
    const h = await hangScenario(echo.port);
    result.hang = h;
    console.log(`hang: victim lost ${h.victimLost}/${h.victimSent}, longest stall ${h.victimLongestStallMs.toFixed(0)} ms, stalls over 1 s ${h.victimStallsOver1s}, its worker restarted ${h.victimWorkerRestarts}x, quarantined ${h.victimQuarantined}; evil ${h.evilRejections.join(' ')}, slow lane ${h.evilInSlowLane}, quarantined ${h.evilQuarantined}`);
  }
} finally {
  echo.server.close();
}
console.log(JSON.stringify(result));
