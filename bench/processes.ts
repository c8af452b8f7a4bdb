/**
 * A node's proxy processes (`serve --processes N`), switchyard run as its own process:
 *
 *   - CPU per routed connection: the same load (short connections, each routed by a router in
 *     the sandbox and relayed to an echo backend) against --processes 0 (the proxy in the master,
 *     for reference), 1 and 2; the CPU of the whole tree (master, proxy processes, sandbox
 *     workers) over the connections, and its parts.
 *   - balance: each proxy process's share of the connections (max/min), from the metrics'
 *     switchyard_proxy_process_connections_total.
 *   - reload and upgrade under load: new connections at a steady rate while `switchyard reload`
 *     and then `switchyard upgrade` run; refused, reset and p99 latency in the second around
 *     each switch, against the same load with no switch.
 *
 *   node --no-node-snapshot dist/bench/processes.js [--connections 4000] [--concurrency 32] [--rate 200]
 *
 * Prints a table and one JSON line.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { host, numberArg, parseArgs, percentile, processTicks, processTree, ticksPerSecond } from './common.js';

const args = parseArgs(process.argv.slice(2));
const connections = Math.floor(numberArg(args, 'connections', 4000));
const concurrency = Math.floor(numberArg(args, 'concurrency', 32));
const rate = Math.floor(numberArg(args, 'rate', 200));
const cli = new URL('../src/cli.js', import.meta.url).pathname;
const token = 'sy_op_bench_processes';
const children = new Set<ChildProcess>();
const extraPids = new Set<number>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  for (const pid of extraPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});
setTimeout(() => {
  process.stderr.write('processes bench: time limit reached\n');
  process.exit(2);
}, 600_000).unref();

/** An echo backend in this process. */
async function echoBackend(): Promise<number> {
  const server = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

interface Node {
  readonly pid: number;
  readonly admin: string;
  readonly port: number;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer().listen(0, host);
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  s.close();
  return port;
}

async function startNode(processes: number, backend: number): Promise<Node> {
  const data = mkdtempSync(join(tmpdir(), 'switchyard-bench-processes-'));
  const lo = 30000 + Math.floor(Math.random() * 20000);
  const adminPort = await freePort();
  const child = spawn(
    process.execPath,
    ['--no-node-snapshot', cli, 'serve', '--data', data, '--admin', `${host}:${adminPort}`, '--ports', `${lo}-${lo + 4}`, '--bind', host, '--allow', '127.0.0.0/8', '--processes', String(processes), '--log-level', 'warn'],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, SWITCHYARD_ADMIN_TOKEN: token } },
  );
  children.add(child);
  const admin = `http://${host}:${adminPort}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await fetch(`${admin}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error('switchyard did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  const call = async (method: string, path: string, body?: string | object): Promise<unknown> => {
    const r = await fetch(`${admin}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': typeof body === 'string' ? 'text/plain' : 'application/json' },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  const { port } = (await call('POST', '/v1/tenants', { name: 'bench' })) as { port: number };
  await call('PUT', '/v1/tenants/bench/router', `proxy(function (data) { return data.length < 4 ? { noop: true } : { remote: '${host}:${backend}' }; });`);
  return {
    pid: child.pid!,
    admin,
    port,
    stop: async () => {
      // After an upgrade the old master has exited by itself already.
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit');
        child.kill('SIGTERM');
        await exited;
      }
      children.delete(child);
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** One short connection: "ping" out, its echo back, closed; resolves with its latency or the failure. */
function ping(port: number): Promise<{ ms: number } | { error: string }> {
  const started = performance.now();
  return new Promise((resolve) => {
    const s = connect({ port, host });
    let got = '';
    s.setEncoding('latin1');
    s.on('connect', () => s.write('ping'));
    s.on('data', (d: string) => {
      got += d;
      if (got === 'ping') s.end();
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
    s.on('close', () => resolve(got === 'ping' ? { ms: performance.now() - started } : { error: `got ${JSON.stringify(got)}` }));
  });
}

/** CPU ticks of the tree: the master, its proxy processes, and the rest (sandbox workers). */
function treeTicks(pid: number): { all: number; master: number; proxies: number; workers: number } {
  const t = { all: 0, master: 0, proxies: 0, workers: 0 };
  for (const p of processTree(pid)) {
    const ticks = processTicks(p) ?? 0;
    t.all += ticks;
    if (p === pid) t.master += ticks;
    else if (readCmdline(p).includes('proxy-process.js')) t.proxies += ticks;
    else t.workers += ticks;
  }
  return t;
}

function readCmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1');
  } catch {
    return '';
  }
}

/** `connections` pings, `concurrency` at a time; the tree's CPU per connection. */
async function cpuPerConnection(node: Node): Promise<{ usPerConn: number; master: number; proxies: number; workers: number; failures: number }> {
  for (let i = 0; i < 200; i++) await ping(node.port); // warm-up: isolates built, caches filled
  const before = treeTicks(node.pid);
  let next = 0;
  let failures = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < connections) {
        next++;
        if ('error' in (await ping(node.port))) failures++;
      }
    }),
  );
  const after = treeTicks(node.pid);
  const us = (k: keyof typeof after): number => Math.round(((after[k] - before[k]) * 1e6) / ticksPerSecond / connections * 10) / 10;
  return { usPerConn: us('all'), master: us('master'), proxies: us('proxies'), workers: us('workers'), failures };
}

async function balance(node: Node): Promise<{ shares: number[]; ratio: number }> {
  const text = await (await fetch(`${node.admin}/metrics`, { headers: { authorization: `Bearer ${token}` } })).text();
  const shares = [...text.matchAll(/^switchyard_proxy_process_connections_total\{process="\d+"\} (\d+)$/gm)].map((m) => Number(m[1]));
  return { shares, ratio: shares.length === 0 ? NaN : Math.max(...shares) / Math.max(1, Math.min(...shares)) };
}

interface Window {
  done: number;
  failures: string[];
  p99: number;
}

/** Steady new connections at `rate` a second for `ms`; `during` runs meanwhile (a reload, an upgrade, or nothing). */
async function steady(port: number, ms: number, during: () => Promise<unknown>): Promise<Window> {
  const latencies: number[] = [];
  const failures: string[] = [];
  const inflight = new Set<Promise<void>>();
  const timer = setInterval(() => {
    for (let k = 0; k < rate / 100; k++) {
      const p = ping(port).then((r) => {
        if ('error' in r) failures.push(r.error);
        else latencies.push(r.ms);
      });
      inflight.add(p);
      void p.then(() => inflight.delete(p));
    }
  }, 10);
  await new Promise((r) => setTimeout(r, ms / 3));
  await during();
  await new Promise((r) => setTimeout(r, ms / 3));
  clearInterval(timer);
  progress(`${inflight.size} connections to finish`);
  await Promise.all(inflight);
  const sorted = Float64Array.from(latencies).sort();
  return { done: latencies.length + failures.length, failures, p99: percentile(sorted, 0.99) };
}

function client(node: Node, command: string): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ['--no-node-snapshot', cli, command], { env: { ...process.env, SWITCHYARD_URL: node.admin, SWITCHYARD_TOKEN: token } }, (err, stdout, stderr) =>
      err === null ? resolve(stdout) : reject(new Error(`${command}: ${stderr}`)),
    ),
  );
}

const backend = await echoBackend();
const results: Record<string, unknown> = {};

const progress = (line: string): void => {
  process.stderr.write(`processes bench: ${line}\n`);
};

for (const n of [0, 1, 2]) {
  progress(`--processes ${n}: starting`);
  const node = await startNode(n, backend);
  progress(`--processes ${n}: ${connections} connections`);
  const cpu = await cpuPerConnection(node);
  progress(`--processes ${n}: balance`);
  const b = await balance(node);
  progress(`--processes ${n}: stopping`);
  results[`processes${n}`] = { ...cpu, balance: b };
  await node.stop();
}

{
  const node = await startNode(2, backend);
  progress(`reload and upgrade at ${rate}/s`);
  const base = await steady(node.port, 3000, async () => undefined);
  progress('reload');
  const reload = await steady(node.port, 3000, () => client(node, 'reload'));
  progress('upgrade');
  let successor = 0;
  const upgrade = await steady(node.port, 4000, async () => {
    successor = (JSON.parse(await client(node, 'upgrade')) as { successor: number }).successor;
    extraPids.add(successor);
  });
  results.switches = { base, reload, upgrade };
  process.kill(successor, 'SIGTERM');
  await node.stop().catch(() => undefined);
}

type Cpu = { usPerConn: number; master: number; proxies: number; workers: number };
const p0 = results.processes0 as Cpu;
const p1 = results.processes1 as Cpu & { balance: { ratio: number } };
const p2 = results.processes2 as Cpu & { balance: { ratio: number; shares: number[] } };
const parts = (c: Cpu): string => `master ${c.master}, proxies ${c.proxies}, sandbox ${c.workers}`;
const sw = results.switches as Record<'base' | 'reload' | 'upgrade', Window>;
const rows = [
  ['CPU per routed connection, --processes 0', `${p0.usPerConn.toFixed(1)} µs (one process: proxy in the master, sandbox ${p0.workers})`],
  ['CPU per routed connection, --processes 1', `${p1.usPerConn.toFixed(1)} µs (${parts(p1)})`],
  ['CPU per routed connection, --processes 2', `${p2.usPerConn.toFixed(1)} µs (${parts(p2)}; ${((p2.usPerConn / p1.usPerConn - 1) * 100).toFixed(1)}%, target ≤ +10%)`],
  ['balance, --processes 2 (max/min share)', `${p2.balance.ratio.toFixed(3)} (${p2.balance.shares.join(' / ')}; target ≤ 1.25)`],
  ...(['base', 'reload', 'upgrade'] as const).map((k) => [`${k === 'base' ? 'no switch' : k} at ${rate}/s`, `${sw[k].done} connections, ${sw[k].failures.length} refused or reset, p99 ${sw[k].p99.toFixed(2)} ms`]),
];
for (const [k, v] of rows) process.stdout.write(`${k!.padEnd(46)} ${v}\n`);
process.stdout.write(`${JSON.stringify({ bench: 'processes', connections, concurrency, rate, ...results })}\n`);
process.exit(0);
