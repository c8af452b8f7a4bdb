/**
 * The buffer cap with real clients, on both data paths (native; Node with SWITCHYARD_RELAY=node),
 * switchyard run as its own process:
 *
 *   - uploads: curl POSTs (no `Expect: 100-continue`) through routers/http-host.js, 5 tries per
 *     size; a try succeeds when the backend got every byte (it answers the body's length and
 *     sha256, which curl prints);
 *   - owed bytes: N clients (32, then 1) trickle a byte every 20 ms and never read, against a
 *     router that answers each call `{ noop: true, reply: 'R'.repeat(65536) }`; the proxy's RSS
 *     (VmRSS of the switchyard process) and CPU (utime + stime from /proc/PID/stat) from the
 *     first client to the last one's decision deadline (10 s, the default).
 *
 *   node --no-node-snapshot dist/bench/uploads.js [--tries 5] [--cli dist/src/cli.js] [--skip-owed]
 *
 * `--cli` runs another build's switchyard (e.g. one checked out before a change) with this
 * harness. Prints a table and one JSON line. Needs curl.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { host, numberArg, parseArgs, processTicks, ticksPerSecond } from './common.js';

const args = parseArgs(process.argv.slice(2));
const tries = Math.floor(numberArg(args, 'tries', 5));
const cli = args.get('cli') ?? new URL('../src/cli.js', import.meta.url).pathname;
const KiB = 1024;
const MiB = 1024 * KiB;
const sizes = [16 * KiB, 60 * KiB, 100 * KiB, 512 * KiB, MiB, 8 * MiB];
const paths = [
  { name: 'native', env: {} },
  { name: 'node', env: { SWITCHYARD_RELAY: 'node' } },
] as const;
const dir = mkdtempSync(join(tmpdir(), 'switchyard-uploads-'));
const children = new Set<ChildProcess>();
const killAll = (): void => {
  for (const c of children) c.kill('SIGKILL');
};
process.on('exit', () => {
  killAll();
  rmSync(dir, { recursive: true, force: true });
});
setTimeout(() => {
  process.stderr.write('uploads bench: time limit reached\n');
  process.exit(2);
}, 600_000).unref();

interface Proxy {
  readonly pid: number;
  readonly port: number;
  /** Resolves once `count` log lines with message `msg` have been printed. */
  logged(msg: string, count: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `switchyard -c ROUTER` on a free port and waits for its "listening" line. */
async function startProxy(source: string, env: Record<string, string>): Promise<Proxy> {
  const file = join(dir, `router-${children.size}.js`);
  writeFileSync(file, source);
  const child = spawn(process.execPath, ['--no-node-snapshot', cli, '-c', file, '-h', host, '-p', '0', '--log-level', 'info'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  const counts = new Map<string, number>();
  const waiting: { msg: string; count: number; resolve: () => void }[] = [];
  let port: number | undefined;
  let partial = '';
  const listening = new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`switchyard exited with ${code} before listening`)));
    child.stdout!.setEncoding('utf8').on('data', (text: string) => {
      const lines = (partial + text).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        const record = JSON.parse(line) as { msg: string; port?: number };
        if (record.msg === 'listening' && port === undefined) resolve((port = record.port!));
        counts.set(record.msg, (counts.get(record.msg) ?? 0) + 1);
        for (const w of waiting.filter((w) => w.msg === record.msg && counts.get(w.msg)! >= w.count)) {
          waiting.splice(waiting.indexOf(w), 1);
          w.resolve();
        }
      }
    });
  });
  const exited = once(child, 'exit');
  return {
    pid: child.pid!,
    port: await listening,
    logged: (msg, count) =>
      (counts.get(msg) ?? 0) >= count ? Promise.resolve() : new Promise((resolve) => waiting.push({ msg, count, resolve })),
    stop: async () => {
      child.kill('SIGKILL');
      await exited;
      children.delete(child);
    },
  };
}

function rss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * KiB;
}

function curl(argv: readonly string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile('curl', argv, { timeout: 60_000, encoding: 'utf8' }, (err, stdout) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout });
    });
  });
}

/** Uploads of each size, `tries` times, through routers/http-host.js: successes per size. */
async function uploads(env: Record<string, string>): Promise<Record<string, number>> {
  const backend = createServer((req, res) => {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (b: Buffer) => {
      bytes += b.length;
      hash.update(b);
    });
    req.on('end', () => res.end(`${bytes} ${hash.digest('hex')}`));
  });
  backend.listen(0, host);
  await once(backend, 'listening');
  const backendPort = (backend.address() as { port: number }).port;
  const router = readFileSync(new URL('../../routers/http-host.js', import.meta.url), 'utf8').replace("'127.0.0.1:8081'", `'${host}:${backendPort}'`);
  const proxy = await startProxy(router, env);
  const result: Record<string, number> = {};
  try {
    for (const size of sizes) {
      const body = randomBytes(size);
      const file = join(dir, `body-${size}`);
      writeFileSync(file, body);
      const expected = `${size} ${createHash('sha256').update(body).digest('hex')}`;
      let ok = 0;
      for (let i = 0; i < tries; i++) {
        const r = await curl(['-sS', '-H', 'Expect:', '-H', 'Host: alpha.example', '--data-binary', `@${file}`, `http://${host}:${proxy.port}/upload`]);
        if (r.code === 0 && r.stdout === expected) ok++;
      }
      result[label(size)] = ok;
    }
  } finally {
    await proxy.stop();
    backend.close();
  }
  return result;
}

interface Owed {
  readonly clients: number;
  readonly rssAtRestMiB: number;
  readonly rssMaxMiB: number;
  readonly cpuSeconds: number;
  readonly seconds: number;
}

/** `clients` trickling clients that never read, until the last one's decision deadline. */
async function owed(env: Record<string, string>, clients: number): Promise<Owed> {
  const proxy = await startProxy(`proxy(() => ({ noop: true, reply: 'R'.repeat(65536) }));`, env);
  const sockets: Socket[] = [];
  try {
    const rest = rss(proxy.pid);
    let max = rest;
    const sampler = setInterval(() => {
      max = Math.max(max, rss(proxy.pid));
    }, 20);
    const ticks = processTicks(proxy.pid) ?? 0;
    const started = process.hrtime.bigint();
    for (let i = 0; i < clients; i++) {
      const socket = connect({ port: proxy.port, host });
      socket.pause(); // never reads
      socket.on('error', () => undefined);
      const trickle = setInterval(() => {
        if (socket.writable) socket.write('.');
      }, 20);
      socket.once('close', () => clearInterval(trickle));
      sockets.push(socket);
    }
    await proxy.logged('connection rejected', clients); // the decision deadline, 10 s by default
    clearInterval(sampler);
    max = Math.max(max, rss(proxy.pid));
    const cpu = ((processTicks(proxy.pid) ?? 0) - ticks) / ticksPerSecond;
    return { clients, rssAtRestMiB: rest / MiB, rssMaxMiB: max / MiB, cpuSeconds: cpu, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  } finally {
    for (const s of sockets) s.destroy();
    await proxy.stop();
  }
}

function label(size: number): string {
  return size >= MiB ? `${size / MiB} MiB` : `${size / KiB} KiB`;
}

const results: Record<string, { uploads: Record<string, number>; owed: Owed[] }> = {};
for (const path of paths) {
  const up = await uploads(path.env);
  const ow = args.has('skip-owed') ? [] : [await owed(path.env, 32), await owed(path.env, 1)];
  results[path.name] = { uploads: up, owed: ow };
}

console.log(`uploads through routers/http-host.js, curl without Expect (successes of ${tries}); ${cli}`);
console.log(`| data path | ${sizes.map(label).join(' | ')} |`);
console.log(`| --- | ${sizes.map(() => '---').join(' | ')} |`);
for (const [name, r] of Object.entries(results)) console.log(`| ${name} | ${sizes.map((s) => `${r.uploads[label(s)]}/${tries}`).join(' | ')} |`);
if (!args.has('skip-owed')) {
  console.log('\nclients trickling a byte every 20 ms, never reading 64 KiB replies, until the decision deadline');
  console.log('| data path | clients | proxy RSS at rest → max (MB) | proxy CPU (s) in (s) |');
  console.log('| --- | --- | --- | --- |');
  for (const [name, r] of Object.entries(results)) {
    for (const o of r.owed) {
      console.log(`| ${name} | ${o.clients} | ${(o.rssAtRestMiB * 1.048576).toFixed(0)} → ${(o.rssMaxMiB * 1.048576).toFixed(0)} | ${o.cpuSeconds.toFixed(2)} in ${o.seconds.toFixed(1)} |`);
    }
  }
}
console.log(JSON.stringify({ cli, tries, results }));
