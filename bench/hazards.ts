/**
 * isolated-vm's known hazards, measured on the running Node.js: what the README's security
 * section says about them must hold on the runtime the service runs on.
 *
 * - termination: how long past a 50 ms time limit code that ignores V8's termination request
 *   (isolated-vm issue #527: a huge `replaceAll`) keeps its thread;
 * - heap exhaustion: for each allocation pattern, whether a 32 MiB isolate throws a
 *   memory-limit error or V8 aborts the whole process;
 * - WebAssembly: whether a `WebAssembly.Memory` counts against the isolate's memory limit
 *   (the prelude removes `WebAssembly`; this is why);
 * - the cost of one call (`applySync`, with and without a timeout) and of a cold isolate.
 *
 *   node --no-node-snapshot dist/bench/hazards.js
 *
 * Each hazard runs in a child process of its own, so an abort is observed, not suffered.
 * Prints a table and one JSON line. Bounded: each child is killed after 30 s.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const self = fileURLToPath(import.meta.url);

/** The probes, run in the child: each prints one JSON line. */
const probes: Record<string, () => Promise<unknown> | unknown> = {
  async termination() {
    const { default: ivm } = await import('isolated-vm');
    const isolate = new ivm.Isolate({ memoryLimit: 128 });
    const context = isolate.createContextSync();
    const started = performance.now();
    let error = '';
    try {
      context.evalSync(`'ab'.repeat(1e7).replaceAll('a', 'cd').length`, { timeout: 50 });
    } catch (err) {
      error = String((err as Error).message);
    }
    return { limitMs: 50, tookMs: Math.round(performance.now() - started), error };
  },
  async 'heap: array of objects'() {
    return exhaust('const a = []; for (;;) a.push({ x: a.length });');
  },
  async 'heap: string doubling'() {
    return exhaust("let s = 'x'; for (;;) s = s + s + '';");
  },
  async 'heap: one huge array'() {
    return exhaust('const a = new Array(1e8).fill(1); a.length;');
  },
  async 'heap: array buffers (external)'() {
    return exhaust('const k = []; for (;;) k.push(new ArrayBuffer(16 * 1024 * 1024));');
  },
  async 'heap: Map growth'() {
    return exhaust('const m = new Map(); for (let i = 0; ; i++) m.set(i, i);');
  },
  async wasm() {
    const { default: ivm } = await import('isolated-vm');
    const isolate = new ivm.Isolate({ memoryLimit: 8 });
    const context = isolate.createContextSync();
    try {
      const pages = context.evalSync('const m = []; for (let i = 0; i < 8; i++) m.push(new WebAssembly.Memory({ initial: 1024 })); m.length * 1024', { timeout: 5000 }) as number;
      const heap = isolate.getHeapStatisticsSync();
      return { limitMb: 8, allocatedMb: (pages * 65536) / 1048576, countedMb: Math.round((heap.used_heap_size + heap.externally_allocated_size) / 1048576) };
    } catch (err) {
      return { limitMb: 8, error: String((err as Error).message) };
    }
  },
  async calls() {
    const { default: ivm } = await import('isolated-vm');
    const isolate = new ivm.Isolate({ memoryLimit: 32 });
    const context = isolate.createContextSync();
    const fn = context.evalSync('(function (d) { return d.length; })', { reference: true }) as unknown as { applySync(t: undefined, a: unknown[], o?: object): unknown };
    const n = 100_000;
    const time = (opts: object | undefined): number => {
      for (let i = 0; i < 1000; i++) fn.applySync(undefined, ['warm'], opts);
      const t = performance.now();
      for (let i = 0; i < n; i++) fn.applySync(undefined, ['GET / HTTP/1.1'], opts);
      return ((performance.now() - t) * 1000) / n;
    };
    const plainUs = time(undefined);
    const timeoutUs = time({ timeout: 50 });
    const cold: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t = performance.now();
      const iso = new ivm.Isolate({ memoryLimit: 32 });
      iso.createContextSync();
      cold.push(performance.now() - t);
      iso.dispose();
    }
    cold.sort((a, b) => a - b);
    return { applySyncUs: round(plainUs), applySyncTimeoutUs: round(timeoutUs), coldIsolateMs: round(cold[25]!) };
  },
};

async function exhaust(source: string): Promise<unknown> {
  const { default: ivm } = await import('isolated-vm');
  const isolate = new ivm.Isolate({ memoryLimit: 32 });
  const context = isolate.createContextSync();
  try {
    context.evalSync(source, { timeout: 20_000 });
    return { outcome: 'returned' };
  } catch (err) {
    return { outcome: 'threw', error: String((err as Error).message).slice(0, 80), disposed: isolate.isDisposed };
  }
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

const only = process.argv[2];
if (only !== undefined) {
  process.stdout.write(`${JSON.stringify(await probes[only]!())}\n`);
  process.exit(0);
}

const results: Record<string, unknown> = { node: process.versions.node, v8: process.versions.v8 };
for (const name of Object.keys(probes)) {
  const r = spawnSync(process.execPath, ['--no-node-snapshot', self, name], { encoding: 'utf8', timeout: 30_000, maxBuffer: 1 << 24 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  const outcome = r.status === 0 && line.startsWith('{') ? JSON.parse(line) : { outcome: 'process died', signal: r.signal, status: r.status, stderr: r.stderr.split('\n').find((l) => /fatal|Fatal|FATAL|OOM|abort/i.test(l)) ?? '' };
  results[name] = outcome;
  process.stdout.write(`${name.padEnd(32)} ${JSON.stringify(outcome)}\n`);
}
process.stdout.write(`${JSON.stringify(results)}\n`);
