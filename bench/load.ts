/**
 * Raw-TCP load generator, one process per scenario. Prints one JSON line with its result.
 *
 *   rate: --port P --concurrency C --warmup-ms W --duration-ms D [--max-conns N]
 *         C loops; each opens a connection, sends the git request line, reads the answer until
 *         the server's FIN, closes, and starts over. Connections finished inside the measured
 *         window count; their latency (connect start to the end of the answer) is recorded.
 *   up:   --port P --bytes N    one connection pushes N bytes to the sink (after its ACK)
 *   down: --port P --bytes N    one connection pulls N bytes from the source
 *
 * --watch-pid PID (comma-separated): CPU time of those processes and per-core busy time are
 * sampled at the exact edges of the measured window. Every phase is bounded in time
 * (--timeout-ms for one bulk transfer, 10 s for one connection) and in count.
 */
import { connect, type Socket } from 'node:net';
import {
  delta,
  gitAnswer,
  gitRequest,
  host,
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
  concurrency: number;
  windowMs: number;
  connections: number;
  perSecond: number;
  errors: number;
  warmupConnections: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  cpu: CpuDelta;
}

function rate(): void {
  const concurrency = Math.max(1, Math.floor(numberArg(args, 'concurrency', 1)));
  const warmupMs = numberArg(args, 'warmup-ms', 1000);
  const durationMs = numberArg(args, 'duration-ms', 5000);
  const maxConns = Math.floor(numberArg(args, 'max-conns', 2_000_000));
  const connTimeoutMs = 10_000;
  const requests = [gitRequest('mojombo', 'grit'), gitRequest('defunkt', 'resque')].map((s) => Buffer.from(s, 'latin1'));
  const expectedHead = gitAnswer.subarray(0, 8);

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

// ---------------------------------------------------------------- bulk

interface BulkResult {
  mode: 'up' | 'down';
  bytes: number;
  transferred: number;
  ok: boolean;
  error?: string;
  seconds: number;
  mbPerSecond: number;
  cpu: CpuDelta;
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

if (mode === 'rate') rate();
else if (mode === 'up' || mode === 'down') bulk(mode);
else throw new Error(`unknown --mode ${mode}`);
