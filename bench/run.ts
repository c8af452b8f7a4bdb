/**
 * `npm run bench`: Switchyard against a plain Node.js proxy (bench/plain-proxy.ts), and against
 * no proxy at all ("direct"), in one run. Prints a table and writes bench/results/latest.json.
 *
 *   node --no-node-snapshot dist/bench/run.js [--quick | --full] [options]
 *   npm run bench -- --quick
 *
 *   --quick             a smoke run: 1 s per rate scenario, one round, 32 MiB bulk (~20 s)
 *   --full              1 GiB bulk transfers (default 256 MiB)
 *   --duration S        measured seconds per rate run (default 4; quick 1)
 *   --warmup S          discarded seconds before each (default 1; quick 0.5)
 *   --rounds N          runs per rate scenario and target, interleaved; the fastest run is
 *                       shown (default 3; quick 1); bulk scenarios run max(N, 5) rounds
 *   --concurrency C     the saturating concurrency (default 64)
 *   --bulk-mib N        bulk transfer size in MiB
 *   --calls N           router calls in the micro-benchmark (default 20000; quick 3000)
 *   --diagnose          also split Switchyard's cost per connection at concurrency C: its socket
 *                       core with a plain JS router (bench/core-proxy.ts) with each logging mode,
 *                       and Switchyard with --log-level warn
 *   --profile           afterwards, run Switchyard and the plain proxy once more under --cpu-prof
 *                       at concurrency C and print their hottest functions (not mixed into the
 *                       figures above); the profiles are kept next to the JSON output
 *   --no-pin            do not pin processes with taskset
 *   --out FILE          JSON output (default bench/results/latest.json)
 *
 * Layout (2 cores): the proxy under test on CPU 1; the load generator, the backends and this
 * harness on CPU 0. CPU time of the proxy process is read from /proc/PID/stat at the edges of
 * each measured window (by the load generator), and per-core busy time from /proc/stat.
 * Every child is killed when the run ends, fails or is interrupted.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { cpus, release, tmpdir, totalmem, type as osType } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { coreTimes, numberArg, parseArgs, usersTable, type Backends, type CpuDelta } from './common.js';
import { formatHot, summarise, type HotFunction } from './cpuprofile.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const here = fileURLToPath(new URL('.', import.meta.url));
const args = parseArgs(process.argv.slice(2));
const quick = args.has('quick');
const full = args.has('full');
const cfg = {
  quick,
  full,
  durationMs: numberArg(args, 'duration', quick ? 1 : 4) * 1000,
  warmupMs: numberArg(args, 'warmup', quick ? 0.5 : 1) * 1000,
  rounds: Math.max(1, Math.floor(numberArg(args, 'rounds', quick ? 1 : 3))),
  concurrency: Math.max(2, Math.floor(numberArg(args, 'concurrency', 64))),
  bulkBytes: Math.floor(numberArg(args, 'bulk-mib', quick ? 32 : full ? 1024 : 256) * 1024 * 1024),
  routerCalls: Math.max(100, Math.floor(numberArg(args, 'calls', quick ? 3000 : 20_000))),
  diagnose: args.has('diagnose'),
  profile: args.has('profile'),
  pin: !args.has('no-pin'),
};
const outFile = args.get('out') ?? join(root, 'bench', 'results', 'latest.json');
if (cfg.durationMs > 120_000 || cfg.warmupMs > 60_000 || cfg.rounds > 20 || cfg.concurrency > 4096 || cfg.bulkBytes > 8 * 1024 ** 3 || cfg.routerCalls > 2_000_000) {
  throw new Error('refusing an unbounded run: --duration ≤ 120, --warmup ≤ 60, --rounds ≤ 20, --concurrency ≤ 4096, --bulk-mib ≤ 8192, --calls ≤ 2000000');
}

// ---------------------------------------------------------------- processes

const children = new Set<ChildProcess>();
const tmp = mkdtempSync(join(tmpdir(), 'switchyard-bench-'));

/** Kills every child still running, each by its own pid. */
function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  children.clear();
}
process.on('exit', () => {
  killAll();
  rmSync(tmp, { recursive: true, force: true });
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`);
    process.exit(130);
  });
}

const pinned = cfg.pin && cpus().length >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
// The harness itself lives with the load generator on CPU 0 (all its threads).
if (pinned) spawnSync('taskset', ['-a', '-cp', '0', String(process.pid)], { stdio: 'ignore' });

interface Started {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly stderrFile: string;
}

/**
 * Starts a node child (pinned to `cpu` with taskset, which execs node: the pid is node's).
 * Its stdout goes to a file, never a pipe: a pipe we read late would hold up the proxy's log writes.
 */
function start(name: string, cpu: 0 | 1, nodeArgs: readonly string[], stdoutFile: string): Started {
  const stderrFile = join(tmp, `${name}.stderr`);
  const out = openSync(stdoutFile, 'w');
  const err = openSync(stderrFile, 'w');
  const [cmd, cmdArgs] = pinned ? ['taskset', ['-c', String(cpu), process.execPath, ...nodeArgs]] : [process.execPath, [...nodeArgs]];
  const child = spawn(cmd, cmdArgs, { cwd: root, stdio: ['ignore', out, err] });
  closeSync(out);
  closeSync(err);
  if (child.pid === undefined) throw new Error(`${name}: could not start`);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return { child, pid: child.pid, stderrFile };
}

function stderrOf(s: Started): string {
  try {
    return readFileSync(s.stderrFile, 'utf8').trim().slice(-2000);
  } catch {
    return '';
  }
}

const running = (s: Started): boolean => s.child.exitCode === null && s.child.signalCode === null;

/** Polls a child's stdout file until a JSON line passes `match`; at most 20 s. */
async function waitForLine<T>(s: Started, file: string, name: string, match: (o: Record<string, unknown>) => T | undefined): Promise<T> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    for (const line of text.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const found = match(JSON.parse(line) as Record<string, unknown>);
        if (found !== undefined) return found;
      } catch {
        // a line still being written: read again
      }
    }
    if (!running(s)) throw new Error(`${name} exited (${s.child.exitCode ?? s.child.signalCode}) before it was ready: ${stderrOf(s)}`);
    await sleep(25);
  }
  throw new Error(`${name} was not ready within 20 s: ${stderrOf(s)}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Polls until `port` accepts a connection; at most 20 s. */
async function waitForPort(s: Started, port: number, name: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!running(s)) throw new Error(`${name} exited (${s.child.exitCode ?? s.child.signalCode}) before it was ready: ${stderrOf(s)}`);
    await sleep(50);
  }
  throw new Error(`${name} did not accept on port ${port} within 20 s: ${stderrOf(s)}`);
}

const listeningPort = (o: Record<string, unknown>): number | undefined =>
  o.msg === 'listening' && typeof o.port === 'number' ? o.port : undefined;

/** Runs a bench tool to completion and parses its last stdout line as JSON; killed after `timeoutMs`. */
async function runTool<T>(name: string, cpu: 0 | 1, nodeArgs: readonly string[], timeoutMs: number): Promise<T> {
  const file = join(tmp, `${name}.stdout`);
  const s = start(name, cpu, nodeArgs, file);
  const exited = new Promise<void>((resolve) => s.child.once('exit', () => resolve()));
  const timer = setTimeout(() => s.child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(timer);
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  const last = lines[lines.length - 1] ?? '';
  if (s.child.exitCode !== 0 || !last.startsWith('{')) {
    throw new Error(`${name} failed (${s.child.exitCode ?? s.child.signalCode}): ${stderrOf(s) || last}`);
  }
  return JSON.parse(last) as T;
}

/**
 * The machine may be shared: before a measured run, wait (at most 2 s) until the cores have
 * been nearly idle for 250 ms while our own processes are idle. Returns the busy share of both
 * cores (0..2) seen last, recorded with the run.
 */
async function waitForQuiet(): Promise<number> {
  const deadline = Date.now() + 2000;
  let busy = 0;
  do {
    const a = coreTimes();
    await sleep(250);
    const b = coreTimes();
    busy = a.reduce((sum, c, i) => {
      const d = b[i];
      return d === undefined || d.total === c.total ? sum : sum + (d.busy - c.busy) / (d.total - c.total);
    }, 0);
    if (busy < 0.1) break;
  } while (Date.now() < deadline);
  return busy;
}

/** SIGTERM, then SIGKILL after 15 s. */
async function stop(s: Started): Promise<void> {
  if (!running(s)) return;
  const exited = new Promise<void>((resolve) => s.child.once('exit', () => resolve()));
  s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------- results

interface RateResult {
  mode: 'rate';
  /** busy share of both cores (0..2) just before the run, with our processes idle */
  backgroundBusy?: number;
  concurrency: number;
  windowMs: number;
  connections: number;
  perSecond: number;
  errors: number;
  warmupConnections: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  cpu: CpuDelta;
}

interface BulkResult {
  mode: 'up' | 'down';
  backgroundBusy?: number;
  bytes: number;
  transferred: number;
  ok: boolean;
  error?: string;
  seconds: number;
  mbPerSecond: number;
  cpu: CpuDelta;
}

interface MicroMeasure {
  calls: number;
  usPerCall: number;
  cpuUsPerCall: number;
}

interface MicroResult {
  calls: number;
  inflight: number;
  sequential: MicroMeasure;
  pipelined: MicroMeasure;
  processSequential: MicroMeasure;
  processPipelined: MicroMeasure;
  plainFunctionUsPerCall: number;
  bareIvm: { applyWithTimeout: MicroMeasure; applyNoTimeout: MicroMeasure; applySync: MicroMeasure };
}

const mainTargets = ['direct', 'plain', 'switchyard'] as const;
const diagTargets = ['core-off', 'core-sync', 'core-async', 'switchyard-nolog'] as const;
type TargetName = (typeof mainTargets)[number] | (typeof diagTargets)[number];

const describeTarget: Record<TargetName, string> = {
  direct: 'direct (no proxy)',
  plain: 'plain Node.js proxy (sync log line)',
  switchyard: 'Switchyard, --log-level info',
  'switchyard-nolog': 'Switchyard, --log-level warn (no line)',
  'core-off': 'Switchyard core + JS router, no line',
  'core-sync': 'Switchyard core + JS router, sync pino',
  'core-async': 'Switchyard core + JS router, src/log.ts',
};

interface Target {
  readonly name: TargetName;
  /** The proxy process, absent for direct. */
  readonly pid: number | undefined;
  readonly port: (kind: 'rate' | 'up' | 'down') => number;
}

/** What one target did in one scenario (its fastest run), with the derived figures. */
interface Row {
  raw: RateResult | BulkResult;
  /** connections/s or MB/s of every run */
  runs: number[];
  /** (max - min) / max of those */
  spread: number | null;
  /** CPU time of the proxy process and its children (sandbox workers) in the window, ms (null for direct). */
  proxyCpuMs: number | null;
  /** proxy CPU / wall: its share of one core. */
  proxyUtil: number | null;
  /** share of the proxy's CPU spent on its main thread (the event loop) */
  mainThreadShare: number | null;
  /** busy fraction of each core */
  coreBusy: number[];
  cpuUsPerConn?: number | null;
  mainThreadUsPerConn?: number | null;
  /** CPU of the proxy's child processes (Switchyard's sandbox workers) */
  workersUsPerConn?: number | null;
  contextSwitchesPerConn?: number | null;
  cpuMsPerGiB?: number | null;
}

function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || b === 0 || !Number.isFinite(a) || !Number.isFinite(b) ? null : a / b;
}

/**
 * The run with the highest `key`. On a shared machine interference only ever slows a run down,
 * so the fastest of N interleaved runs is the estimate of what this machine does; every run's
 * figure is kept in the JSON, and the spread shows how much the others lost.
 */
function fastest<T>(runs: readonly T[], key: (r: T) => number): T {
  const sorted = [...runs].sort((a, b) => key(b) - key(a));
  const m = sorted[0];
  if (m === undefined) throw new Error('no runs');
  return m;
}

const primary = (r: RateResult | BulkResult): number => (r.mode === 'rate' ? r.perSecond : r.mbPerSecond);

function row(target: Target, runs: readonly (RateResult | BulkResult)[]): Row {
  const raw = fastest(runs, primary);
  const pid = target.pid === undefined ? undefined : String(target.pid);
  const tree = pid === undefined ? undefined : raw.cpu.trees[pid];
  const cpuMs = tree?.totalMs ?? null;
  const mainMs = tree?.mainThreadMs ?? null;
  const childrenMs = tree === undefined ? null : tree.childrenMs;
  const switches = tree?.contextSwitches ?? null;
  const figures = runs.map(primary);
  const r: Row = {
    raw,
    runs: figures,
    spread: figures.length < 2 ? null : ratio(Math.max(...figures) - Math.min(...figures), primary(raw)),
    proxyCpuMs: cpuMs,
    proxyUtil: ratio(cpuMs, raw.cpu.wallMs),
    mainThreadShare: ratio(mainMs, cpuMs),
    coreBusy: raw.cpu.coreBusy,
  };
  if (raw.mode === 'rate') {
    const perConn = (v: number | null, scale: number): number | null => (v === null || raw.connections === 0 ? null : (v * scale) / raw.connections);
    r.cpuUsPerConn = perConn(cpuMs, 1000);
    r.mainThreadUsPerConn = perConn(mainMs, 1000);
    r.workersUsPerConn = perConn(childrenMs, 1000);
    r.contextSwitchesPerConn = perConn(switches, 1);
  } else {
    r.cpuMsPerGiB = cpuMs === null || raw.transferred === 0 ? null : cpuMs / (raw.transferred / 1024 ** 3);
  }
  return r;
}

type Scenario = Partial<Record<TargetName, Row>>;

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const cliJs = join(root, 'dist', 'src', 'cli.js');
  if (!existsSync(cliJs)) throw new Error(`${cliJs} is missing: run npm run build first`);
  const log = (text: string): void => void process.stderr.write(`${text}\n`);
  const t0 = Date.now();
  log(`bench: ${quick ? 'quick' : full ? 'full' : 'default'} run; pinning ${pinned ? 'on (proxy: CPU 1; load generator, backends: CPU 0)' : 'off'}`);

  // Backends on CPU 0.
  const backendsFile = join(tmp, 'backends.stdout');
  const backends = start('backends', 0, [join(here, 'backends.js')], backendsFile);
  const ports = await waitForLine<Backends>(backends, backendsFile, 'backends', (o) => (Array.isArray(o.git) ? (o as unknown as Backends) : undefined));
  const users = usersTable(ports);
  const userArgs = Object.entries(users).map(([u, r]) => `${u}=${r}`);

  // The bench router: routers/git.js with its table pointed at the real backends.
  const gitJs = readFileSync(join(root, 'routers', 'git.js'), 'utf8');
  const usersLine = /const users = \{[^}]*\};/;
  if (!usersLine.test(gitJs)) throw new Error('routers/git.js no longer has a `const users = {…};` table');
  const routerFile = join(tmp, 'git.js');
  writeFileSync(routerFile, gitJs.replace(usersLine, `const users = ${JSON.stringify(users)};`));

  // Proxies on CPU 1, each logging to a file.
  interface Proxy {
    readonly s: Started;
    readonly file: string;
    readonly port: number;
  }
  const startProxy = async (name: string, nodeArgs: readonly string[]): Promise<Proxy> => {
    const file = join(tmp, `${name}.stdout`);
    const s = start(name, 1, nodeArgs, file);
    return { s, file, port: await waitForLine(s, file, name, listeningPort) };
  };
  const switchyardArgs = (level: string, extra: readonly string[] = [], port = 0): string[] =>
    ['--no-node-snapshot', ...extra, cliJs, '-c', routerFile, '-h', '127.0.0.1', '-p', String(port), '--log-level', level];
  const plainArgs = (extra: readonly string[] = []): string[] => [...extra, join(here, 'plain-proxy.js'), '--host', '127.0.0.1', '--port', '0', ...userArgs];
  const coreArgs = (mode: string): string[] => [join(here, 'core-proxy.js'), '--log', mode, ...userArgs];

  const proxies: Partial<Record<TargetName, Proxy>> = {
    switchyard: await startProxy('switchyard', switchyardArgs('info')),
    plain: await startProxy('plain', plainArgs()),
  };
  if (cfg.diagnose) {
    // At --log-level warn there is no "listening" line: give it a free port and wait for it to accept.
    const port = await freePort();
    const s = start('switchyard-nolog', 1, switchyardArgs('warn', [], port), join(tmp, 'switchyard-nolog.stdout'));
    await waitForPort(s, port, 'switchyard-nolog');
    proxies['switchyard-nolog'] = { s, file: join(tmp, 'switchyard-nolog.stdout'), port };
    proxies['core-off'] = await startProxy('core-off', coreArgs('off'));
    proxies['core-sync'] = await startProxy('core-sync', coreArgs('sync'));
    proxies['core-async'] = await startProxy('core-async', coreArgs('async'));
  }
  const target = (name: TargetName): Target => {
    if (name === 'direct') return { name, pid: undefined, port: (k) => (k === 'rate' ? ports.git[0] : k === 'up' ? ports.sink : ports.source) };
    const p = proxies[name];
    if (p === undefined) throw new Error(`${name} is not running`);
    return { name, pid: p.s.pid, port: () => p.port };
  };

  const loadJs = join(here, 'load.js');
  const rateRun = (t: Target, concurrency: number, warmupMs = cfg.warmupMs, durationMs = cfg.durationMs, maxConns?: number): Promise<RateResult> =>
    runTool<RateResult>(
      `load-rate-${concurrency}-${t.name}`,
      0,
      [loadJs, '--mode', 'rate', '--port', String(t.port('rate')), '--concurrency', String(concurrency), '--warmup-ms', String(warmupMs),
        '--duration-ms', String(durationMs), '--watch-pid', String(t.pid ?? ''), ...(maxConns === undefined ? [] : ['--max-conns', String(maxConns)])],
      warmupMs + durationMs + 30_000,
    );
  const bulkRun = (t: Target, mode: 'up' | 'down'): Promise<BulkResult> =>
    runTool<BulkResult>(
      `load-${mode}-${t.name}`,
      0,
      [loadJs, '--mode', mode, '--port', String(t.port(mode)), '--bytes', String(cfg.bulkBytes), '--timeout-ms', '120000', '--watch-pid', String(t.pid ?? '')],
      150_000,
    );

  // Smoke check: connections through every target get the git answer.
  const everyTarget: TargetName[] = [...mainTargets, ...(cfg.diagnose ? diagTargets : [])];
  for (const name of everyTarget) {
    const r = await rateRun(target(name), 1, 0, 200, 20);
    if (r.errors > 0 || r.connections === 0) throw new Error(`smoke check through ${name} failed: ${JSON.stringify(r)}`);
  }

  /** Every target once per round, the order rotated; a target's row is its fastest run. */
  const measure = async (key: string, names: readonly TargetName[], once: (t: Target) => Promise<RateResult | BulkResult>, rounds = cfg.rounds): Promise<Scenario> => {
    const runs = new Map<TargetName, (RateResult | BulkResult)[]>(names.map((n) => [n, []]));
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < names.length; i++) {
        const name = names[(i + round) % names.length]!;
        const backgroundBusy = await waitForQuiet();
        log(`bench: ${key} ${name} (round ${round + 1}/${rounds})${backgroundBusy >= 0.1 ? ` - the machine is busy with other work (${pct(backgroundBusy)} of a core)` : ''}`);
        const r = await once(target(name));
        r.backgroundBusy = backgroundBusy;
        if (r.mode !== 'rate' && !r.ok) throw new Error(`${key} through ${name} failed: ${r.error ?? ''}`);
        runs.get(name)!.push(r);
      }
    }
    const scenario: Scenario = {};
    for (const name of names) scenario[name] = row(target(name), runs.get(name)!);
    return scenario;
  };

  const sat = `rate_c${cfg.concurrency}`;
  const scenarios: Record<string, Scenario> = {};
  scenarios.rate_c1 = await measure('rate_c1', mainTargets, (t) => rateRun(t, 1));
  scenarios[sat] = await measure(sat, mainTargets, (t) => rateRun(t, cfg.concurrency));
  // Bulk runs are short (a second or less): more rounds, so that one falls in a quiet moment.
  const bulkRounds = quick ? cfg.rounds : Math.max(cfg.rounds, 5);
  scenarios.bulk_up = await measure(`bulk_up ${cfg.bulkBytes / 1024 ** 2} MiB`, mainTargets, (t) => bulkRun(t, 'up'), bulkRounds);
  scenarios.bulk_down = await measure(`bulk_down ${cfg.bulkBytes / 1024 ** 2} MiB`, mainTargets, (t) => bulkRun(t, 'down'), bulkRounds);
  let diagnosis: Scenario | undefined;
  if (cfg.diagnose) {
    diagnosis = await measure(`diagnose ${sat}`, ['plain', 'core-off', 'core-sync', 'core-async', 'switchyard-nolog', 'switchyard'], (t) => rateRun(t, cfg.concurrency));
  }

  // The micro-benchmark runs alone on the proxy core, while the proxies are idle.
  log(`bench: router call micro-benchmark (${cfg.routerCalls} calls)`);
  const micro = await runTool<MicroResult>('router-micro', 1, ['--no-node-snapshot', join(here, 'router-micro.js'), '--router', routerFile, '--calls', String(cfg.routerCalls)], 150_000);

  // Cross-check against the proxies' own logs: one line per connection, no warnings.
  for (const p of Object.values(proxies)) await stop(p.s);
  const logCheck = (file: string) => {
    const lines = readFileSync(file, 'utf8').split('\n');
    const closed = lines.filter((l) => l.includes('"msg":"connection closed"'));
    return {
      connectionLines: closed.length,
      remoteDecisions: closed.filter((l) => l.includes('"decision":"remote"')).length,
      warnOrWorse: lines.filter((l) => /"level":(4|5|6)0/.test(l)).length,
    };
  };
  const checks = { switchyard: logCheck(proxies.switchyard!.file), plain: logCheck(proxies.plain!.file) };

  type Hot = { scenario: string; file: string; totalMs: number; functions: HotFunction[] };
  const profiles: Partial<Record<'switchyard' | 'plain', Hot>> = {};
  if (cfg.profile) {
    for (const name of ['switchyard', 'plain'] as const) {
      log(`bench: profiling ${name} at concurrency ${cfg.concurrency}`);
      const dir = join(tmp, `prof-${name}`);
      mkdirSync(dir);
      const flags = ['--cpu-prof', '--cpu-prof-dir', dir];
      const p = await startProxy(`${name}-prof`, name === 'switchyard' ? switchyardArgs('info', flags) : plainArgs(flags));
      await rateRun({ name, pid: p.s.pid, port: () => p.port }, cfg.concurrency);
      await stop(p.s);
      const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
      if (file === undefined) {
        log(`bench: ${name} wrote no CPU profile`);
        continue;
      }
      const kept = join(dirname(outFile), `${name}-${sat}.cpuprofile`);
      mkdirSync(dirname(kept), { recursive: true });
      copyFileSync(join(dir, file), kept);
      profiles[name] = { scenario: sat, file: kept, ...summarise(kept, 25) };
    }
  }
  await stop(backends);

  const result = {
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cpus: cpus().length,
      memoryGiB: Math.round(totalmem() / 1024 ** 3),
      os: `${osType()} ${release()}`,
      node: process.version,
      date: new Date().toISOString(),
      pinned,
      layout: pinned ? { proxy: 'CPU 1', loadGeneratorAndBackends: 'CPU 0' } : 'unpinned',
    },
    config: cfg,
    scenarios,
    ratios: ratios(scenarios),
    micro,
    ...(diagnosis === undefined ? {} : { diagnosis }),
    checks,
    ...(cfg.profile ? { profiles } : {}),
    seconds: (Date.now() - t0) / 1000,
  };
  mkdirSync(dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(table(result.machine, scenarios, micro, diagnosis, checks) + '\n');
  for (const [name, p] of Object.entries(profiles)) {
    process.stdout.write(`\n${name}: CPU profile of the main thread, ${p.scenario}, self time, top ${p.functions.length} (${p.file}):\n${formatHot(p.functions)}\n`);
  }
  process.stdout.write(`\nwrote ${outFile} (run took ${result.seconds.toFixed(0)} s)\n`);
}

function ratios(scenarios: Record<string, Scenario>): Record<string, Record<string, number | null>> {
  const out: Record<string, Record<string, number | null>> = {};
  for (const [key, rows] of Object.entries(scenarios)) {
    const { plain: p, switchyard: s, direct: d } = rows;
    if (p === undefined || s === undefined) continue;
    if (p.raw.mode === 'rate' && s.raw.mode === 'rate') {
      out[key] = {
        connPerSec_switchyard_vs_plain: ratio(s.raw.perSecond, p.raw.perSecond),
        p50_switchyard_vs_plain: ratio(s.raw.latencyUs.p50, p.raw.latencyUs.p50),
        p99_switchyard_vs_plain: ratio(s.raw.latencyUs.p99, p.raw.latencyUs.p99),
        cpuPerConn_switchyard_vs_plain: ratio(s.cpuUsPerConn, p.cpuUsPerConn),
        connPerSec_plain_vs_direct: d?.raw.mode === 'rate' ? ratio(p.raw.perSecond, d.raw.perSecond) : null,
        connPerSec_switchyard_vs_direct: d?.raw.mode === 'rate' ? ratio(s.raw.perSecond, d.raw.perSecond) : null,
      };
    } else if (p.raw.mode !== 'rate' && s.raw.mode !== 'rate') {
      out[key] = {
        throughput_switchyard_vs_plain: ratio(s.raw.mbPerSecond, p.raw.mbPerSecond),
        cpuPerGiB_switchyard_vs_plain: ratio(s.cpuMsPerGiB, p.cpuMsPerGiB),
        throughput_plain_vs_direct: d !== undefined && d.raw.mode !== 'rate' ? ratio(p.raw.mbPerSecond, d.raw.mbPerSecond) : null,
      };
    }
  }
  return out;
}

// ---------------------------------------------------------------- table

/** CPU 1 time not charged to the proxy and its workers: kernel softirq work, and other processes on a shared machine. */
function otherOnProxyCore(r: Row): number | null {
  const busy = r.coreBusy[1];
  return busy === undefined || r.proxyUtil === null ? null : Math.max(0, busy - r.proxyUtil);
}

function fmt(v: number | null | undefined, digits = 0): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
const pct = (v: number | null | undefined): string => (v === null || v === undefined || !Number.isFinite(v) ? '-' : `${(v * 100).toFixed(0)}%`);
const times = (v: number | null): string => (v === null ? '-' : `${v.toFixed(2)}x`);

function table(
  machine: { cpu: string; cpus: number; os: string; node: string; date: string; pinned: boolean },
  scenarios: Record<string, Scenario>,
  micro: MicroResult,
  diagnosis: Scenario | undefined,
  checks: Record<string, { connectionLines: number; remoteDecisions: number; warnOrWorse: number }>,
): string {
  const out: string[] = [];
  const widths = [36, 11, 11, 12, 18];
  const line = (cells: readonly string[]): void => void out.push(cells.map((c, i) => (i === 0 ? c.padEnd(widths[0]!) : c.padStart(widths[i] ?? 12))).join(''));
  const rule = (): void => void out.push('-'.repeat(widths.reduce((a, b) => a + b, 0)));
  out.push(`Switchyard benchmark, ${machine.date}`);
  out.push(`${machine.cpu} x${machine.cpus}, ${machine.os}, Node ${machine.node}; ${machine.pinned ? 'proxy pinned to CPU 1, load generator + backends to CPU 0' : 'not pinned'}`);
  out.push(`figures: the fastest of ${cfg.rounds} interleaved runs per target (bulk: of max(${cfg.rounds}, 5)); proxy CPU = utime+stime`);
  out.push(`of the proxy process (all threads) and its child processes (Switchyard's sandbox workers), from /proc`);
  out.push('');
  line(['', 'direct', 'plain', 'switchyard', 'switchyard/plain']);
  rule();
  for (const rows of Object.values(scenarios)) {
    const { direct: d, plain: p, switchyard: s } = rows;
    if (p === undefined) continue;
    const three = <T>(f: (r: Row) => T | undefined): (T | undefined)[] => [d, p, s].map((r) => (r === undefined ? undefined : f(r)));
    const numbers = (label: string, f: (r: Row) => number | null | undefined, digits = 0, withRatio = true, proxyOnly = false): void => {
      const [a, b, c] = three(f);
      line([label, proxyOnly ? '-' : fmt(a, digits), fmt(b, digits), fmt(c, digits), withRatio ? times(ratio(c, b)) : '']);
    };
    const shares = (label: string, f: (r: Row) => number | null | undefined, proxyOnly = false): void => {
      const [a, b, c] = three(f);
      line([label, proxyOnly ? '-' : pct(a), pct(b), pct(c), '']);
    };
    const spread = (): void => {
      if (p.runs.length > 1) shares(`  spread of ${p.runs.length} runs (max-min)/max`, (r) => r.spread);
    };
    if (p.raw.mode === 'rate') {
      out.push(`connection rate, concurrency ${p.raw.concurrency} (${fmt(p.raw.windowMs / 1000, 1)} s windows)`);
      const rate = (f: (r: RateResult) => number) => (r: Row) => (r.raw.mode === 'rate' ? f(r.raw) : undefined);
      numbers('  connections/s', rate((r) => r.perSecond));
      spread();
      numbers('  latency p50 (µs)', rate((r) => r.latencyUs.p50));
      numbers('  latency p99 (µs)', rate((r) => r.latencyUs.p99));
      numbers('  proxy CPU per connection (µs)', (r) => r.cpuUsPerConn, 1, true, true);
      numbers('    of which main thread (µs)', (r) => r.mainThreadUsPerConn, 1, true, true);
      if (s?.workersUsPerConn) numbers('    of which sandbox worker process', (r) => r.workersUsPerConn, 1, false, true);
      numbers('  proxy context switches per conn.', (r) => r.contextSwitchesPerConn, 1, true, true);
      shares('  proxy + workers CPU (of one core)', (r) => r.proxyUtil, true);
      shares('  CPU 1 busy (proxy core)', (r) => r.coreBusy[1]);
      shares('    not the proxy (softirq, others)', (r) => otherOnProxyCore(r), true);
      shares('  CPU 0 busy (load + backends)', (r) => r.coreBusy[0]);
      numbers('  failed connections', rate((r) => r.errors), 0, false);
    } else {
      out.push(`bulk ${p.raw.mode === 'up' ? 'up (client -> sink)' : 'down (source -> client)'}, ${fmt(p.raw.bytes / 1024 ** 2)} MiB on one connection`);
      numbers('  throughput (MB/s)', (r) => (r.raw.mode === 'rate' ? undefined : r.raw.mbPerSecond));
      spread();
      numbers('  proxy CPU per GiB (ms)', (r) => r.cpuMsPerGiB, 0, true, true);
      shares('  proxy + workers CPU (of one core)', (r) => r.proxyUtil, true);
      shares('  CPU 1 busy (proxy core)', (r) => r.coreBusy[1]);
      shares('    not the proxy (softirq, others)', (r) => otherOnProxyCore(r), true);
      shares('  CPU 0 busy (load + backends)', (r) => r.coreBusy[0]);
    }
  }
  rule();
  out.push(`one router call (the bench git.js router), µs per call                 wall     CPU   vs plain JS`);
  const m = (label: string, v: MicroMeasure): void =>
    void out.push(`  ${label.padEnd(66)}${fmt(v.usPerCall, 1).padStart(6)}${fmt(v.cpuUsPerCall, 1).padStart(8)}  ${times(ratio(v.cpuUsPerCall, micro.plainFunctionUsPerCall)).padStart(9)}`);
  m('worker process (SandboxPool + ProcessRouter, as the CLI), sequential', micro.processSequential);
  m(`worker process, pipelined (${micro.inflight} in flight)`, micro.processPipelined);
  m('isolate in this process (IsolateRouter.route), sequential', micro.sequential);
  m(`isolate in this process, pipelined (${micro.inflight} in flight)`, micro.pipelined);
  out.push(`  ${'the same rule as a plain JS function'.padEnd(66)}${fmt(micro.plainFunctionUsPerCall, 3).padStart(6)}`);
  m('floor: bare ivm Reference.apply of an empty function, {timeout}', micro.bareIvm.applyWithTimeout);
  m('floor: bare ivm Reference.apply of an empty function, no timeout', micro.bareIvm.applyNoTimeout);
  m('floor: bare ivm Reference.applySync of an empty function', micro.bareIvm.applySync);
  out.push(`  (everything on one core, like the proxy: CPU counts this process's threads and the worker process)`);
  const satRows = Object.values(scenarios).find((r) => r.plain?.raw.mode === 'rate' && r.plain.raw.concurrency > 1);
  const extra = ratio(satRows?.switchyard?.cpuUsPerConn, 1) !== null && satRows?.plain?.cpuUsPerConn != null ? satRows.switchyard!.cpuUsPerConn! - satRows.plain.cpuUsPerConn : null;
  if (extra !== null) out.push(`  Switchyard's extra proxy CPU per routed connection at saturation: ${fmt(extra, 1)} µs (vs one router call above)`);
  if (diagnosis !== undefined) {
    rule();
    out.push(`where Switchyard's cost per connection goes (concurrency ${cfg.concurrency}, fastest of ${cfg.rounds}):`);
    out.push(`  ${''.padEnd(44)}${'conn/s'.padStart(8)}${'CPU µs'.padStart(9)}${'main µs'.padStart(9)}${'worker'.padStart(8)}${'ctx sw'.padStart(8)}${'vs plain'.padStart(10)}`);
    const base = diagnosis.plain?.cpuUsPerConn;
    for (const [name, r] of Object.entries(diagnosis) as [TargetName, Row][]) {
      out.push(
        `  ${describeTarget[name].padEnd(44)}${fmt(r.raw.mode === 'rate' ? r.raw.perSecond : null).padStart(8)}${fmt(r.cpuUsPerConn, 1).padStart(9)}` +
          `${fmt(r.mainThreadUsPerConn, 1).padStart(9)}${fmt(r.workersUsPerConn, 1).padStart(8)}${fmt(r.contextSwitchesPerConn, 1).padStart(8)}${(base == null || r.cpuUsPerConn == null ? '-' : `+${fmt(r.cpuUsPerConn - base, 1)}`).padStart(10)}`,
      );
    }
  }
  rule();
  for (const [name, c] of Object.entries(checks)) {
    out.push(`log check, ${name}: ${c.connectionLines} "connection closed" lines${name === 'switchyard' ? ` (${c.remoteDecisions} routed)` : ''}, ${c.warnOrWorse} warnings or errors`);
  }
  return out.join('\n');
}

try {
  await main();
} catch (err) {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
}
killAll();
