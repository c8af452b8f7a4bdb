/**
 * Raw-TCP load generator, one process per scenario. Prints one JSON line with its result.
 *
 *   rate: --port P --concurrency C --warmup-ms W --duration-ms D [--max-conns N]
 *         C loops; each opens a connection, sends the git request line, reads the answer until
 *         the server's FIN, closes, and starts over. Connections finished inside the measured
 *         window count; their latency (connect start to the end of the answer) is recorded.
 *         --native BIN: the same loops run by BIN (bench/native/rate.c, `rate client`), a child
 *         of this process (so on its CPU); this process samples CPU times when BIN marks the
 *         window's edges on its stdout, and reports the same JSON.
 *   up:   --port P --bytes N    one connection pushes N bytes to the sink (after its ACK)
 *   down: --port P --bytes N    one connection pulls N bytes from the source
 *         --native BIN: the transfer made by BIN (bench/native/rate.c, `rate up|down`), a child
 *         of this process; CPU is sampled here when BIN marks the window's edges (it waits for
 *         this process's go-ahead after the first mark), and the JSON is the same.
 *   idle: --port P --count N [--parallel K] [--settle-ms S] --watch-pid PID
 *         opens N connections (at most K connecting at once), each sends the request line of the
 *         user "idle" and waits for the idle backend's ACK (so it is routed end to end), then
 *         stays silent. RSS of the watched process tree (VmRSS of it and its descendants) is
 *         sampled before, at N/2 and at N (each after S ms of quiet); then all are closed.
 *
 * --watch-pid PID (comma-separated): CPU time of those processes and per-core busy time are
 * sampled at the exact edges of the measured window. Every phase is bounded in time
 * (--timeout-ms for one bulk transfer, 10 s for one connection) and in count.
 */
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import {
  delta,
  gitAnswer,
  gitRequest,
  host,
  treeRssKiB,
  numberArg,
  parseArgs,
  percentile,
  sinkReady,
  snapshot,
  type CpuDelta,
  type CpuSnapshot,
} from './common.js';

const args = parseArgs(process.argv.slice(2));
const mode = args.get('mode') ?? 'rate';
const port = numberArg(args, 'port', 0);
const watch = (args.get('watch-pid') ?? '')
  .split(',')
  .filter((s) => s !== '')
  .map(Number);
if (!(port > 0)) throw new Error('--port is required');

function emit(result: object): never {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

// ---------------------------------------------------------------- connection rate

interface RateResult {
  mode: 'rate';
  /** which load generator ran the loops: this process, or bench/native/rate.c */
  generator: 'node' | 'native';
  concurrency: number;
  windowMs: number;
  connections: number;
  perSecond: number;
  errors: number;
  warmupConnections: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  cpu: CpuDelta;
  /** native only: µs between the generator's window edges and this process's CPU samples */
  sampleLagUs?: { start: number; end: number };
}

const concurrency = Math.max(1, Math.floor(numberArg(args, 'concurrency', 1)));
const warmupMs = numberArg(args, 'warmup-ms', 1000);
const durationMs = numberArg(args, 'duration-ms', 5000);
const maxConns = Math.floor(numberArg(args, 'max-conns', 2_000_000));
const connTimeoutMs = 10_000;
/** The two requests, alternated: connection n of loop i sends requests[(n + i) & 1]. */
const requests = [gitRequest('mojombo', 'grit'), gitRequest('defunkt', 'resque')].map((s) => Buffer.from(s, 'latin1'));
const expectedHead = gitAnswer.subarray(0, 8);

function rate(): void {
  const latencies = new Float64Array(maxConns);
  let phase: 'warmup' | 'measure' | 'drain' = 'warmup';
  let started = 0;
  let counted = 0;
  let warmupConnections = 0;
  let errors = 0;
  let active = concurrency;
  let before: CpuSnapshot | undefined;
  let cpu: CpuDelta | undefined;
  let windowMs = 0;

  const finish = (): void => {
    const sorted = latencies.slice(0, counted).sort();
    let sum = 0;
    for (const v of sorted) sum += v;
    const result: RateResult = {
      mode: 'rate',
      generator: 'node',
      concurrency,
      windowMs,
      connections: counted,
      perSecond: windowMs > 0 ? (counted * 1000) / windowMs : 0,
      errors,
      warmupConnections,
      latencyUs: {
        p50: percentile(sorted, 50),
        p90: percentile(sorted, 90),
        p99: percentile(sorted, 99),
        max: sorted.length > 0 ? sorted[sorted.length - 1]! : Number.NaN,
        mean: sorted.length > 0 ? sum / sorted.length : Number.NaN,
      },
      cpu: cpu ?? delta(snapshot(watch), snapshot(watch)),
    };
    emit(result);
  };

  const loop = (id: number): void => {
    if (phase === 'drain' || started >= maxConns) {
      if (--active === 0) finish();
      return;
    }
    started++;
    const t0 = process.hrtime.bigint();
    const request = requests[(started + id) & 1]!;
    let got = 0;
    let headOk = false;
    let endedAt = 0n;
    const socket: Socket = connect({ host, port, noDelay: true });
    socket.setTimeout(connTimeoutMs, () => socket.destroy());
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      if (got === 0) headOk = chunk.length >= 8 && chunk.subarray(0, 8).equals(expectedHead);
      got += chunk.length;
    });
    socket.on('end', () => {
      endedAt = process.hrtime.bigint();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      const ok = endedAt !== 0n && headOk && got === gitAnswer.length;
      if (!ok) errors++;
      else if (phase === 'measure' && counted < maxConns) {
        latencies[counted++] = Number(endedAt - t0) / 1000;
      } else if (phase === 'warmup') warmupConnections++;
      loop(id);
    });
  };

  setTimeout(() => {
    before = snapshot(watch);
    phase = 'measure';
    setTimeout(() => {
      const after = snapshot(watch);
      phase = 'drain';
      cpu = delta(before!, after);
      windowMs = cpu.wallMs;
    }, durationMs);
  }, warmupMs);
  // Hard bound: whatever happens, report after warmup + duration + the per-connection timeout.
  setTimeout(() => {
    phase = 'drain';
    finish();
  }, warmupMs + durationMs + connTimeoutMs + 1000).unref();
  for (let i = 0; i < concurrency; i++) loop(i);
}

/** What `rate client` prints last (see bench/native/rate.c). */
interface NativeRate {
  connections: number;
  windowMs: number;
  errors: number;
  warmupConnections: number;
  latencyUs: { p50: number | null; p90: number | null; p99: number | null; max: number | null; mean: number | null };
  /** CLOCK_MONOTONIC, as process.hrtime */
  windowStartUs: number;
  windowEndUs: number;
}

/**
 * Runs bench/native/rate.c with `argv`: it marks its window's edges on stdout, and CPU times are
 * sampled here when each mark arrives; `done` gets both samples and its result line. With
 * `sync`, it waits after the first mark for a line on its stdin, sent once the sample is taken,
 * so that the sample is not taken while the measured work runs. Killed after `killAfterMs`.
 */
function runNative(bin: string, argv: string[], sync: boolean, killAfterMs: number, done: (before: CpuSnapshot, after: CpuSnapshot, last: string) => void): void {
  // The snapshots are taken when the marks arrive, while the generator runs on: warm their code
  // (and /proc's dentries) up first, so that the first edge is sampled as promptly as the second.
  for (let i = 0; i < 3; i++) snapshot(watch);
  const child = spawn(bin, argv, { stdio: [sync ? 'pipe' : 'ignore', 'pipe', 'inherit'] });
  child.stdin?.on('error', () => undefined); // it may be gone (a failed connect marks both edges at once)
  let before: CpuSnapshot | undefined;
  let after: CpuSnapshot | undefined;
  let last = '';
  let pending = '';
  child.stdout!.setEncoding('latin1');
  child.stdout!.on('data', (text: string) => {
    pending += text;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line === 'mark start') {
        before = snapshot(watch);
        child.stdin?.write('go\n');
      } else if (line === 'mark end') after = snapshot(watch);
      else if (line.startsWith('{')) last = line;
    }
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  child.on('error', (err) => {
    process.stderr.write(`load: ${bin}: ${err.message}\n`);
    process.exit(1);
  });
  child.on('close', (code, signal) => {
    clearTimeout(killer);
    if (code !== 0 || before === undefined || after === undefined || last === '') {
      process.stderr.write(`load: ${bin} failed (${code ?? signal}), ${last === '' ? 'no result' : last}\n`);
      process.exit(1);
    }
    done(before, after, last);
  });
}

/** The rate loops in bench/native/rate.c; CPU sampled here at the window's edges, which it marks on stdout. */
function rateNative(bin: string): void {
  const argv = ['client', '--port', String(port), '--concurrency', String(concurrency), '--warmup-ms', String(Math.round(warmupMs)),
      '--duration-ms', String(Math.max(1, Math.round(durationMs))), '--max-conns', String(maxConns),
      '--request-a', requests[0]!.toString('hex'), '--request-b', requests[1]!.toString('hex'),
      '--expect-head', expectedHead.toString('hex'), '--expect-bytes', String(gitAnswer.length)];
  // Bounded like the Node loops: the generator bounds itself; this is in case it does not.
  runNative(bin, argv, false, warmupMs + durationMs + connTimeoutMs + 5000, (before, after, last) => {
    const r = JSON.parse(last) as NativeRate;
    const nan = (v: number | null): number => v ?? Number.NaN;
    const atUs = (s: CpuSnapshot): number => Number(s.atNs / 1000n);
    const result: RateResult = {
      mode: 'rate',
      generator: 'native',
      concurrency,
      windowMs: r.windowMs,
      connections: r.connections,
      perSecond: r.windowMs > 0 ? (r.connections * 1000) / r.windowMs : 0,
      errors: r.errors,
      warmupConnections: r.warmupConnections,
      latencyUs: { p50: nan(r.latencyUs.p50), p90: nan(r.latencyUs.p90), p99: nan(r.latencyUs.p99), max: nan(r.latencyUs.max), mean: nan(r.latencyUs.mean) },
      cpu: delta(before, after),
      sampleLagUs: { start: atUs(before) - r.windowStartUs, end: atUs(after) - r.windowEndUs },
    };
    emit(result);
  });
}

// ---------------------------------------------------------------- bulk

interface BulkResult {
  mode: 'up' | 'down';
  /** which client made the transfer: this process, or bench/native/rate.c */
  generator: 'node' | 'native';
  bytes: number;
  transferred: number;
  ok: boolean;
  error?: string;
  seconds: number;
  mbPerSecond: number;
  cpu: CpuDelta;
  /** native only: µs between the client's window edges and this process's CPU samples (start: before it, as the client waits for it) */
  sampleLagUs?: { start: number; end: number };
}

function bulk(direction: 'up' | 'down'): void {
  const bytes = Math.floor(numberArg(args, 'bytes', 256 * 1024 * 1024));
  const timeoutMs = numberArg(args, 'timeout-ms', 120_000);
  const user = direction === 'up' ? 'bulkup' : 'bulkdown';
  const socket = connect({ host, port, noDelay: true, allowHalfOpen: true });
  let before: CpuSnapshot | undefined;
  let transferred = 0;
  let reply = '';
  let done = false;

  const report = (error?: string): void => {
    if (done) return;
    done = true;
    const after = snapshot(watch);
    const cpu = delta(before ?? after, after);
    const ok = error === undefined && transferred === bytes;
    const result: BulkResult = {
      mode: direction,
      generator: 'node',
      bytes,
      transferred,
      ok,
      seconds: cpu.wallMs / 1000,
      mbPerSecond: cpu.wallMs > 0 ? transferred / 1e6 / (cpu.wallMs / 1000) : 0,
      cpu,
    };
    if (!ok) result.error = error ?? `transferred ${transferred} of ${bytes} bytes`;
    socket.destroy();
    emit(result);
  };
  setTimeout(() => report(`timed out after ${timeoutMs} ms`), timeoutMs).unref();
  socket.on('error', (err) => report(err.message));
  socket.on('close', () => report('connection closed early'));

  if (direction === 'down') {
    socket.on('connect', () => {
      before = snapshot(watch);
      socket.write(gitRequest(user, String(bytes)), 'latin1');
    });
    socket.on('data', (chunk: Buffer) => {
      transferred += chunk.length;
    });
    socket.on('end', () => report());
    return;
  }

  // up: request line, wait for the sink's ACK, stream, FIN, then read the sink's count.
  const block = Buffer.alloc(1 << 20, 'up-up-up-');
  let sent = 0;
  const pump = (): void => {
    while (sent < bytes) {
      const n = Math.min(block.length, bytes - sent);
      sent += n;
      if (!socket.write(n === block.length ? block : block.subarray(0, n))) {
        socket.once('drain', pump);
        return;
      }
    }
    socket.end();
  };
  let acked = false;
  socket.on('connect', () => socket.write(gitRequest(user, String(bytes)), 'latin1'));
  socket.on('data', (chunk: Buffer) => {
    if (!acked) {
      if (!chunk.equals(sinkReady)) return report(`unexpected answer from the sink: ${JSON.stringify(chunk.toString('latin1'))}`);
      acked = true;
      before = snapshot(watch);
      pump();
      return;
    }
    reply += chunk.toString('latin1');
  });
  socket.on('end', () => {
    transferred = Number.parseInt(reply, 10) || 0;
    report();
  });
}

/** What `rate up|down` prints last (see bench/native/rate.c): the transfer, and its window in CLOCK_MONOTONIC µs (process.hrtime's clock). */
type NativeBulk = Omit<BulkResult, 'generator' | 'cpu' | 'sampleLagUs'> & { windowStartUs: number; windowEndUs: number };

/**
 * The transfer made by bench/native/rate.c. It marks the window's edges on its stdout; at the
 * first this process samples CPU times and then lets it go on (a line on its stdin), so that the
 * sample is not taken while the transfer runs; at the second, the transfer is over.
 */
function bulkNative(bin: string, direction: 'up' | 'down'): void {
  const bytes = Math.floor(numberArg(args, 'bytes', 256 * 1024 * 1024));
  const timeoutMs = numberArg(args, 'timeout-ms', 120_000);
  const argv = [direction, '--port', String(port), '--bytes', String(bytes), '--timeout-ms', String(Math.max(1, Math.round(timeoutMs))), '--sync', '1',
    ...(direction === 'up' ? ['--ack', sinkReady.toString('hex')] : [])];
  runNative(bin, argv, true, timeoutMs + 5000, (before, after, last) => {
    const r = JSON.parse(last) as NativeBulk;
    const atUs = (s: CpuSnapshot): number => Number(s.atNs / 1000n);
    const result: BulkResult = {
      mode: direction,
      generator: 'native',
      bytes: r.bytes,
      transferred: r.transferred,
      ok: r.ok,
      // the client's own clock, from the window's start to its end
      seconds: r.seconds,
      mbPerSecond: r.mbPerSecond,
      cpu: delta(before, after),
      sampleLagUs: { start: atUs(before) - r.windowStartUs, end: atUs(after) - r.windowEndUs },
    };
    if (r.error !== undefined) result.error = r.error;
    emit(result);
  });
}

// ---------------------------------------------------------------- idle connections

function idle(): void {
  const count = Math.floor(numberArg(args, 'count', 10_000));
  const parallel = Math.max(1, Math.floor(numberArg(args, 'parallel', 200)));
  const settleMs = numberArg(args, 'settle-ms', 2000);
  const timeoutMs = numberArg(args, 'timeout-ms', 120_000);
  const pid = watch[0];
  if (pid === undefined) throw new Error('--watch-pid is required');
  const request = Buffer.from(gitRequest('idle', 'hold'), 'latin1');
  const sockets: Socket[] = [];
  const samples: { connections: number; rssKiB: number | undefined; atMs: number }[] = [];
  const t0 = performance.now();
  let ready = 0;
  let errors = 0;
  let started = 0;
  let done = false;

  const sample = (): void => void samples.push({ connections: ready, rssKiB: treeRssKiB(pid), atMs: performance.now() - t0 });
  const finish = (error?: string): void => {
    if (done) return;
    done = true;
    sample();
    for (const s of sockets) s.destroy();
    const first = samples[0]?.rssKiB;
    const full = samples.find((x) => x.connections === count && x.rssKiB !== undefined);
    const result = {
      mode: 'idle',
      count,
      ready,
      errors,
      ok: error === undefined && ready === count && errors === 0,
      ...(error === undefined ? {} : { error }),
      samples,
      rssGrowthKiB: first === undefined || full?.rssKiB === undefined ? null : full.rssKiB - first,
      kibPerConnection: first === undefined || full?.rssKiB === undefined || count === 0 ? null : (full.rssKiB - first) / count,
      openMs: samples.find((x) => x.connections === count)?.atMs ?? null,
    };
    emit(result);
  };
  setTimeout(() => finish(`timed out after ${timeoutMs} ms with ${ready} of ${count} connections ready`), timeoutMs).unref();

  // Phases: open the first half, settle, sample; the second half, settle, sample; close.
  const targets = [Math.floor(count / 2), count];
  let phase = 0;
  const settleThenSample = (): void => {
    setTimeout(() => {
      sample();
      phase++;
      if (phase < targets.length) {
        for (let i = 0; i < parallel; i++) openOne();
      } else finish();
    }, settleMs);
  };
  const openOne = (): void => {
    if (done || started >= targets[phase]!) return;
    started++;
    const socket = connect({ host, port, noDelay: true });
    sockets.push(socket);
    let acked = false;
    socket.setTimeout(10_000, () => socket.destroy(new Error('no ACK within 10 s')));
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      if (acked) return;
      acked = true;
      socket.setTimeout(0);
      if (!chunk.equals(sinkReady)) errors++;
      ready++;
      if (ready === targets[phase]) settleThenSample();
      else openOne();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (done) return;
      // Closed before its ACK, or while idle: either way not an idle routed connection.
      errors++;
      finish(`a connection closed (${acked ? 'while idle' : 'before its ACK'}); ${ready} ready`);
    });
  };
  setTimeout(() => {
    sample();
    for (let i = 0; i < parallel; i++) openOne();
  }, settleMs);
}

const native = args.get('native');
if (mode === 'rate' && native !== undefined) rateNative(native);
else if (mode === 'rate') rate();
else if (mode === 'idle') idle();
else if ((mode === 'up' || mode === 'down') && native !== undefined) bulkNative(native, mode);
else if (mode === 'up' || mode === 'down') bulk(mode);
else throw new Error(`unknown --mode ${mode}`);
