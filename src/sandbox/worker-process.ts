/**
 * A sandbox worker process as the pool sees it: how it is started (through sandbox-exec, under
 * SCHED_BATCH, optionally profiled, with nothing of the service's but its channel: see
 * `spawnWorker`), the calls in flight on it, what it says on stderr, and the host that restarts
 * it whenever it dies, at the CPU priority of its role.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import { encodeIdentity, identityVariable, profilingVariable, type SandboxIdentity } from './confine.js';
import type { ConnInfo } from './router.js';
import { decodeResponse, encodeRequest, FrameReader, FrameWriter, Op, type Response, Status } from './wire.js';

/** A call sent to a worker and not answered yet. */
export interface Pending {
  readonly proc: WorkerProcess;
  readonly op: Op;
  readonly slot: number;
  readonly sentAt: number;
  /** How long the call may take before its worker counts as stuck. */
  readonly limitMs: number;
  readonly promise: Promise<Response>;
  /** When the worker said the call started running, until it is known to have finished. */
  startedAt?: number;
  /** It started on the worker's own thread (synchronously): it is over once another starts there. */
  startedSync?: boolean;
  /** Whose call it is, and the client it is for: whom a crash or hang during it is blamed on. */
  owner?: { readonly tenant: string; readonly address: string | undefined };
  /** Told when the worker says the call started. */
  onStarted?: () => void;
  /** The supervisor found this call stuck and killed its worker for it. */
  stuck?: boolean;
  resolve(r: Response): void;
  reject(e: Error): void;
}

const workerPath = fileURLToPath(new URL('./worker.js', import.meta.url));
const pageSize = 4096;

/**
 * Extra Node flags for worker processes, for profiling them: SWITCHYARD_WORKER_CPU_PROF=DIR
 * writes a .cpuprofile per worker into DIR when it exits (bench/run.ts --profile uses it).
 * Benchmarks only: a profiled worker keeps the service's user and may open files (confine.ts).
 */
export function workerFlags(): string[] {
  const dir = process.env.SWITCHYARD_WORKER_CPU_PROF;
  return dir === undefined || dir === '' ? [] : ['--cpu-prof', '--cpu-prof-dir', dir];
}

/** The launcher built from src/native/sandbox-exec.c, from dist/src/sandbox/. */
const launcherPath = fileURLToPath(new URL('../../../build/Release/sandbox-exec', import.meta.url));

/**
 * Workers run under SCHED_BATCH (set by the launcher, sandbox-exec): a woken worker then does
 * not preempt the proxy in the middle of its turn of the event loop, but runs once the proxy
 * waits for I/O, and so takes the whole batch that turn queued. On one saturated core that is a
 * few decisions per wake-up instead of about one, which cut the workers' CPU per routed
 * connection by more than half (bench/). Latency is unchanged when the proxy is idle: it waits
 * for I/O at once. SWITCHYARD_WORKER_SCHED=normal leaves the default policy.
 */
function batchScheduling(): boolean {
  return process.env.SWITCHYARD_WORKER_SCHED !== 'normal';
}

/** What a worker is started with, besides its name. */
export interface WorkerOptions {
  readonly concurrency: number;
  /** The user it switches to once started; absent, it keeps the service's. */
  readonly identity: SandboxIdentity | undefined;
  readonly onResponse: (proc: WorkerProcess, r: Response) => void;
  /** A line the worker wrote on stderr (Node's own diagnostics: a fatal error, a V8 abort). */
  readonly onDiagnostic: (proc: WorkerProcess, line: string) => void;
}

/**
 * Starts a worker with nothing of the service's but its channel: an environment of the
 * variables the worker reads and no other (no operator token, no PATH, no NODE_OPTIONS, however
 * the service was started), `/` as its working directory, /dev/null on stdin and stdout, a
 * pipe the pool reads on stderr, and the socket pair on fd 3. The worker then confines itself
 * (worker.ts, confine.ts) before it reads its first request.
 */
function spawnWorker(options: WorkerOptions, flags: string[]): { child: ChildProcess; scheduling: 'batch' | 'other' } {
  const batch = batchScheduling();
  const args = [...(batch ? ['--batch'] : []), process.execPath, '--no-node-snapshot', ...flags, workerPath];
  const env: Record<string, string> = { SWITCHYARD_WORKER_CONCURRENCY: String(options.concurrency) };
  if (options.identity !== undefined) env[identityVariable] = encodeIdentity(options.identity);
  if (flags.length > 0) env[profilingVariable] = '1';
  const child = spawn(launcherPath, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env, cwd: '/' });
  return { child, scheduling: batch ? 'batch' : 'other' };
}

/** Lines of a worker's stderr passed on per window, and the longest line kept. */
const diagnosticLines = 20;
const diagnosticWindowMs = 10_000;
const diagnosticLineChars = 1000;

/**
 * Splits a worker's stderr into lines and passes on at most `diagnosticLines` per 10 s, each
 * cut to 1000 characters, and then one line that says how many were dropped: a worker that
 * floods its stderr costs the service a bounded amount of log.
 */
function readDiagnostics(proc: WorkerProcess, say: (line: string) => void): void {
  const stderr = proc.child.stderr;
  if (stderr === null) return;
  let partial = '';
  let windowStart = 0;
  let said = 0;
  let dropped = 0;
  const line = (text: string): void => {
    const now = Date.now();
    if (now - windowStart >= diagnosticWindowMs) {
      if (dropped > 0) say(`(${dropped} more lines dropped)`);
      windowStart = now;
      said = 0;
      dropped = 0;
    }
    if (said++ < diagnosticLines) say(text.slice(0, diagnosticLineChars));
    else dropped++;
  };
  stderr.setEncoding('utf8');
  stderr.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!.slice(0, diagnosticLineChars);
    for (const l of lines) if (l.trim() !== '') line(l);
  });
  stderr.on('end', () => {
    if (partial.trim() !== '') line(partial);
    if (dropped > 0) say(`(${dropped} more lines dropped)`);
  });
  stderr.on('error', () => undefined);
}

/** One worker process and the calls in flight on it. */
export class WorkerProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pending = new Map<number, Pending>();
  /** Slots whose script was sent to this process. */
  readonly loaded = new Set<number>();
  readonly exited: Promise<void>;
  /** The scheduling policy it was started under: "batch" (SCHED_BATCH, set by sandbox-exec) or the default. */
  readonly scheduling: 'batch' | 'other';
  alive = true;
  /** Replaced by a newer process; killed once its calls drain. */
  retiring = false;
  #nextId = 1;
  readonly #writer: FrameWriter;

  constructor(name: string, options: WorkerOptions) {
    this.name = name;
    ({ child: this.child, scheduling: this.scheduling } = spawnWorker(options, workerFlags()));
    readDiagnostics(this, (line) => options.onDiagnostic(this, line));
    const onResponse = options.onResponse;
    const channel = this.child.stdio[3] as Socket;
    const writer = (this.#writer = new FrameWriter(channel, { paced: true }));
    const reader = new FrameReader();
    channel.on('data', (chunk: Buffer) => {
      // News (a call started) is no answer: the next batch waits for one.
      let answered = false;
      try {
        reader.push(chunk, (body) => {
          const r = decodeResponse(body);
          if (r.status !== Status.started) answered = true;
          onResponse(this, r);
        });
        if (answered) writer.answered();
      } catch {
        this.kill(); // a worker that speaks garbage is not to be trusted further
      }
    });
    channel.on('error', () => undefined);
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  request(op: (typeof Op)[keyof typeof Op], slot: number, limitMs: number, conn?: ConnInfo, extra?: Parameters<typeof encodeRequest>[4]): Pending {
    const id = this.#nextId++;
    if (this.#nextId > 0xffffffff) this.#nextId = 1;
    let resolve!: (r: Response) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<Response>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const pending: Pending = { proc: this, op, slot, sentAt: Date.now(), limitMs, promise, resolve, reject };
    this.pending.set(id, pending);
    this.#writer.write(encodeRequest(id, op, slot, conn, extra));
    return pending;
  }

  /** A message with no answer (unload). */
  tell(op: (typeof Op)[keyof typeof Op], slot: number): void {
    if (this.alive) this.#writer.write(encodeRequest(0, op, slot));
  }

  kill(): void {
    if (!this.alive) return;
    this.alive = false;
    this.child.kill('SIGKILL');
  }

  rssMb(): number | undefined {
    try {
      const resident = Number(readFileSync(`/proc/${this.child.pid}/statm`, 'latin1').split(' ')[1]);
      return (resident * pageSize) / 1024 / 1024;
    } catch {
      return undefined;
    }
  }
}

/** Niceness of a quarantine worker: a tenant that crashes its workers gets the CPU others leave. */
export const quarantinePriority = 10;
/**
 * Niceness of the slow lane. Its tenants have shown they spin: at 19 (CFS weight 15 against
 * 1024) a spinning router barely delays the shared workers' calls on a busy core, and still
 * runs at full speed on an idle one.
 */
export const slowLanePriority = 19;

/** A worker that is restarted whenever it dies; tenants point at one. */
export class WorkerHost {
  readonly name: string;
  current: WorkerProcess;
  readonly #spawn: (name: string) => WorkerProcess;
  readonly #nice: number;

  constructor(name: string, spawnProcess: (name: string) => WorkerProcess, nice = 0) {
    this.name = name;
    this.#spawn = spawnProcess;
    this.#nice = nice;
    this.current = this.#start();
  }

  /** Starts a fresh process for new calls; the old one finishes what it has, then goes. */
  replace(): void {
    const old = this.current;
    this.current = this.#start();
    old.retiring = true;
    if (old.pending.size === 0) old.kill();
  }

  #start(): WorkerProcess {
    const proc = this.#spawn(this.name);
    if (this.#nice !== 0 && proc.child.pid !== undefined) {
      try {
        // Set before the worker starts its threads, which inherit it.
        setPriority(proc.child.pid, this.#nice);
      } catch {
        // lowering a priority may be refused; the process boundary is what matters
      }
    }
    return proc;
  }
}
